"""The broker's settings: the `mqtt_*` keys of gateway.toml, checked and turned into
`BrokerSettings` (defined here, so the broker's modules share it without importing the broker).
Kept here so gateway/config.py only needs one call."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .connection import Limits
from .topics import is_valid_topic_filter

if TYPE_CHECKING:
    from matrix_core.homeserver import Homeserver


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls_enabled: bool = False
    tls_port: int = 8883
    tls_cert: str = ""  # PEM files; both empty: a self-signed pair in data_dir (frontends/mqtt/tls.py)
    tls_key: str = ""
    ws_enabled: bool = False
    ws_port: int = 8083
    ws_path: str = "/mqtt"
    wss_enabled: bool = False  # WebSockets over TLS, with the mqtts certificate
    wss_port: int = 8084
    deny_subscribe: tuple[str, ...] = ()
    data_dir: str = ""
    allow_anonymous: bool = False
    anonymous_user: str = "mqtt-guest"
    room_levels: int = 2
    limits: Limits = Limits()
    # Seconds a batch of QoS 0 publishes may wait for later writes to share its commit (SD-card
    # writes); 0: commit at once, like every acknowledged write.
    qos0_commit_delay: float = 0.0
    connect_timeout: float = 10.0  # seconds from accept to CONNECT; then the socket is closed
    max_connections_per_address: int = 100  # open connections per remote address; 0: no cap
    max_sessions_per_account: int = 100  # persistent sessions one account may keep; 0: no cap
    image_topics: tuple[str, ...] = ()  # filters whose JPEG/PNG payloads become m.image events


# key -> (smallest, largest) for the integer settings
_RANGES = {
    "mqtt_room_levels": (1, 16),
    "mqtt_max_packet_size": (128, 268_435_460),
    "mqtt_receive_maximum": (1, 65535),
    "mqtt_max_inflight": (1, 65535),
    "mqtt_max_queued_messages": (0, 10_000_000),
    "mqtt_topic_alias_maximum": (0, 65535),
    "mqtt_tls_port": (0, 65535),
    "mqtt_ws_port": (0, 65535),
    "mqtt_wss_port": (0, 65535),
    "mqtt_max_keepalive": (10, 65535),
    "mqtt_qos0_commit_ms": (0, 10_000),
    "mqtt_connect_timeout_s": (1, 3600),
    "mqtt_max_connections_per_address": (0, 1_000_000),
    "mqtt_max_sessions_per_account": (0, 1_000_000),
}

RENDERED = """# MQTT broker (docs/mqtt.md). Devices log in with a Matrix account: username = localpart or
# user id, password = the account password or a device access token.
mqtt_enabled = {mqtt_enabled}
# Let clients without a username in, acting as the account below (create it first with
# `matrix-gateway user add`). Off by default, like mosquitto 2.
mqtt_allow_anonymous = {mqtt_allow_anonymous}
mqtt_anonymous_user = "{mqtt_anonymous_user}"
# Default topic rule: the first N levels of a topic name its room (home/kitchen/temp -> home/kitchen).
mqtt_room_levels = {mqtt_room_levels}
# Largest packet accepted (bytes). Payloads too large for an event (64 KiB) are kept in the
# media repository and the event refers to them (docs/mqtt.md, "Images and large payloads").
mqtt_max_packet_size = {mqtt_max_packet_size}
# Incoming QoS 1/2 publishes being stored per client; beyond it the client is not read (backpressure).
mqtt_receive_maximum = {mqtt_receive_maximum}
# Outgoing QoS 1/2 messages unacknowledged per client, then queued up to mqtt_max_queued_messages;
# beyond that a slow consumer loses messages (they stay in the room's history).
mqtt_max_inflight = {mqtt_max_inflight}
mqtt_max_queued_messages = {mqtt_max_queued_messages}
mqtt_topic_alias_maximum = {mqtt_topic_alias_maximum}
# Longest keepalive granted (seconds): MQTT 5 clients asking more, or none, are told this value.
mqtt_max_keepalive = {mqtt_max_keepalive}
# MQTT over TLS (mqtts) on its own port, off by default. Certificate and key: PEM files; both
# empty = a self-signed pair made on first use in the data dir (mqtt.crt, mqtt.key mode 0600).
mqtt_tls_enabled = {mqtt_tls_enabled}
mqtt_tls_port = {mqtt_tls_port}
mqtt_tls_cert = "{mqtt_tls_cert}"
mqtt_tls_key = "{mqtt_tls_key}"
# MQTT over WebSockets (subprotocol "mqtt"; paho transport="websockets", browsers), off by default.
mqtt_ws_enabled = {mqtt_ws_enabled}
mqtt_ws_port = {mqtt_ws_port}
mqtt_ws_path = "{mqtt_ws_path}"
# MQTT over secure WebSockets (wss://, same path), off by default: the mqtt_tls_* certificate.
mqtt_wss_enabled = {mqtt_wss_enabled}
mqtt_wss_port = {mqtt_wss_port}
# Milliseconds a QoS 0 publish may wait for other writes to share its commit: fewer, larger
# commits spare an SD card (docs/mqtt.md has figures). MQTT subscribers online get QoS 0 messages
# at once all the same; Matrix clients and CoAP observers see them after the commit, and a power
# cut may lose that long of QoS 0 readings. 0: each read of publishes is committed at once.
# QoS 1/2 are never delayed.
mqtt_qos0_commit_ms = {mqtt_qos0_commit_ms}
# Topic filters nobody may subscribe to or receive over MQTT, e.g. ["secrets/#"]. A SUBSCRIBE
# inside one is refused (SUBACK 0x80 / 0x87); wider filters (#) never get those topics either.
mqtt_deny_subscribe = {mqtt_deny_subscribe}
# Seconds a new connection may take to send its CONNECT; then it is closed (idle or slow sockets
# must not hold the hub's file descriptors).
mqtt_connect_timeout_s = {mqtt_connect_timeout_s}
# Open connections from one remote address; more are closed at once (0: no cap). Raise it for
# a load test from one machine, or for many devices behind one NAT address.
mqtt_max_connections_per_address = {mqtt_max_connections_per_address}
# Persistent sessions (clean_session 0, or an MQTT 5 session expiry) one account may keep, online
# or not; a CONNECT for one more is refused (5.0: 0x97 Quota exceeded; 3.1.1: 0x03). 0: no cap.
mqtt_max_sessions_per_account = {mqtt_max_sessions_per_account}
# Topic filters whose JPEG/PNG payloads (told by their magic bytes) are pictures: stored in the
# media repository and sent as m.image, which Element shows; e.g. ["camera/+/snapshot"]. MQTT 5
# publishes with an image/* content type are pictures on any topic. Subscribers get the exact bytes.
mqtt_image_topics = {mqtt_image_topics}
"""


def config_problem(key: str, value: Any) -> str | None:
    """Why an mqtt_* value is wrong (the type is already checked), or None."""
    if key in _RANGES:
        low, high = _RANGES[key]
        if not low <= value <= high:
            return f"{key} must be between {low} and {high}, not {value}"
    if key in ("mqtt_tls_cert", "mqtt_tls_key") and value and not Path(value).is_file():
        return f"{key}: {value}: no such file"
    if key == "mqtt_ws_path" and not (value.startswith("/") and value.isprintable()
                                      and not any(c in value for c in ' "\\?#')):
        return f"mqtt_ws_path must be a URL path starting with '/', not {value!r}"
    if key in ("mqtt_deny_subscribe", "mqtt_image_topics"):
        for topic_filter in value:
            if not is_valid_topic_filter(topic_filter, allow_shared=False):
                return f"{key}: {topic_filter!r} is not a valid MQTT topic filter"
    return None


def render(config: Any) -> str:
    values = {}
    for key in ("mqtt_enabled", "mqtt_allow_anonymous", "mqtt_tls_enabled", "mqtt_ws_enabled", "mqtt_wss_enabled"):
        values[key] = str(getattr(config, key)).lower()
    for key in ("mqtt_anonymous_user", "mqtt_room_levels", "mqtt_max_packet_size", "mqtt_receive_maximum",
                "mqtt_max_inflight", "mqtt_max_queued_messages", "mqtt_topic_alias_maximum", "mqtt_max_keepalive",
                "mqtt_tls_port", "mqtt_tls_cert", "mqtt_tls_key", "mqtt_ws_port", "mqtt_ws_path", "mqtt_wss_port",
                "mqtt_qos0_commit_ms", "mqtt_connect_timeout_s", "mqtt_max_connections_per_address",
                "mqtt_max_sessions_per_account"):
        values[key] = getattr(config, key)
    values["mqtt_deny_subscribe"] = json.dumps(list(config.mqtt_deny_subscribe), ensure_ascii=False)  # a TOML array of strings
    values["mqtt_image_topics"] = json.dumps(list(config.mqtt_image_topics), ensure_ascii=False)
    return RENDERED.format(**values)


def broker_settings(config: Any, data_dir: Path | None = None) -> BrokerSettings:
    if (config.mqtt_tls_enabled or config.mqtt_wss_enabled) and bool(config.mqtt_tls_cert) != bool(config.mqtt_tls_key):
        raise ValueError("mqtt_tls_cert and mqtt_tls_key must be given together (or both left empty)")
    return BrokerSettings(
        host=config.bind,
        port=config.mqtt_port,
        tls_enabled=config.mqtt_tls_enabled,
        tls_port=config.mqtt_tls_port,
        tls_cert=config.mqtt_tls_cert,
        tls_key=config.mqtt_tls_key,
        ws_enabled=config.mqtt_ws_enabled,
        ws_port=config.mqtt_ws_port,
        ws_path=config.mqtt_ws_path,
        wss_enabled=config.mqtt_wss_enabled,
        wss_port=config.mqtt_wss_port,
        deny_subscribe=tuple(config.mqtt_deny_subscribe),
        data_dir=str(data_dir) if data_dir is not None else "",
        allow_anonymous=config.mqtt_allow_anonymous,
        anonymous_user=config.mqtt_anonymous_user,
        room_levels=config.mqtt_room_levels,
        qos0_commit_delay=config.mqtt_qos0_commit_ms / 1000,
        connect_timeout=float(config.mqtt_connect_timeout_s),
        max_connections_per_address=config.mqtt_max_connections_per_address,
        max_sessions_per_account=config.mqtt_max_sessions_per_account,
        image_topics=tuple(config.mqtt_image_topics),
        limits=Limits(
            max_packet_size=config.mqtt_max_packet_size,
            receive_maximum=config.mqtt_receive_maximum,
            max_inflight=config.mqtt_max_inflight,
            topic_alias_maximum=config.mqtt_topic_alias_maximum,
            max_queued=config.mqtt_max_queued_messages,
            max_keepalive=config.mqtt_max_keepalive,
        ),
    )


def build_frontend(config: Any, hs: "Homeserver", data_dir: Path | None = None) -> list[Any]:
    """The broker as a gateway Frontend (none when mqtt_enabled is false). *data_dir* holds the
    self-signed TLS pair when TLS is on without a configured certificate."""
    from .broker import MqttBroker

    if not config.mqtt_enabled:
        return []
    return [MqttBroker(hs, broker_settings(config, data_dir))]
