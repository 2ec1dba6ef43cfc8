"""The hub's configuration: a small TOML file in the data dir, created on first run.

Like mosquitto 2: loopback only, no anonymous access and no open registration unless the file says
otherwise. Unknown keys and bad values are errors that name the key, never silently ignored.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from frontends.mqtt.settings import config_problem as mqtt_config_problem, render as mqtt_render
from matrix_core.identifiers import is_valid_server_name
from matrix_core.signing import SigningKey, generate_signing_key, parse_signing_key, serialize_signing_key

CONFIG_FILE = "gateway.toml"
SIGNING_KEY_FILE = "signing.key"
DATABASE_FILE = "homeserver.db"


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass(frozen=True)
class GatewayConfig:
    server_name: str = "localhost"
    bind: str = "127.0.0.1"
    http_port: int = 8008
    # HTTP connections, client API and federation (matrix_core/client_api/http_listener.py):
    # seconds a connection may stay without sending a complete request's headers (new, idle, or a
    # slowloris), and how many connections one client address may hold open (0: no cap).
    http_idle_timeout: float = 15.0
    http_max_connections_per_address: int = 64
    coap_port: int = 5683
    coaps_port: int = 5684
    coaps_enabled: bool = True
    mqtt_port: int = 1883
    # MQTT broker (frontends/mqtt/settings.py explains each; rendered with comments below)
    mqtt_enabled: bool = True
    mqtt_allow_anonymous: bool = False
    mqtt_anonymous_user: str = "mqtt-guest"
    mqtt_room_levels: int = 2
    # 256 KiB: payloads too large for an event go to the media repository (issue 15)
    mqtt_max_packet_size: int = 262144
    mqtt_receive_maximum: int = 256
    mqtt_max_inflight: int = 20
    mqtt_max_queued_messages: int = 1000
    mqtt_topic_alias_maximum: int = 64
    mqtt_tls_enabled: bool = False
    mqtt_tls_port: int = 8883
    mqtt_tls_cert: str = ""
    mqtt_tls_key: str = ""
    mqtt_ws_enabled: bool = False
    mqtt_ws_port: int = 8083
    mqtt_ws_path: str = "/mqtt"
    mqtt_wss_enabled: bool = False
    mqtt_wss_port: int = 8084
    mqtt_deny_subscribe: tuple[str, ...] = ()
    mqtt_max_keepalive: int = 65535
    # QoS 0 publishes wait up to 1 s to share a commit (SD-card writes; live MQTT subscribers get
    # them at once): the interval Home Assistant's recorder commits at by default.
    mqtt_qos0_commit_ms: int = 1000
    # A TCP connection that sends no CONNECT within this many seconds is closed (mosquitto-like).
    mqtt_connect_timeout_s: int = 10
    # Open MQTT connections from one remote address (0: no cap).
    mqtt_max_connections_per_address: int = 100
    # Persistent MQTT sessions (clean_session 0 / a session expiry) one account may keep (0: no cap).
    mqtt_max_sessions_per_account: int = 100
    # Topic filters whose JPEG/PNG payloads become m.image events (docs/mqtt.md, issue 15).
    mqtt_image_topics: tuple[str, ...] = ()
    federation_port: int = 8448
    # federation TLS (matrix_core/federation/tls.py): empty = a self-signed pair made in the data dir
    federation_tls_cert: str = ""
    federation_tls_key: str = ""
    # outbound federation: verify certificates; refuse loopback targets (both relaxed only in tests)
    federation_tls_verify: bool = True
    federation_allow_loopback: bool = False
    enable_registration: bool = False
    log_level: str = "INFO"
    messages_per_second: float = 50.0
    messages_burst: int = 200
    sqlite_synchronous: str = "FULL"
    commit_window_ms: int = 0
    # retention (gateway/ops/retention.py): default max age of non-state events, purge interval
    retention_default_days: int = 0
    retention_interval_minutes: int = 60
    # LAN discovery with mDNS/DNS-SD (gateway/ops/discovery.py); empty hostname: the machine's
    mdns: bool = False
    mdns_hostname: str = ""
    # Rooms one account may create (0: no limit; admins exempt); whom a refusal tells users to ask.
    max_rooms_per_user: int = 1000
    admin_contact: str = ""
    # warn (log, `status`) when the data dir's disk has less free space than this; 0: never
    disk_warn_free_mb: int = 100
    # CoAP Observe caps (frontends/coap/observe.py): per client (access token, and remote endpoint)
    # and in the hub; over the first a client's oldest observation ends, over the second a new
    # one is answered without Observe (RFC 7641 §4.1)
    coap_max_observations_per_client: int = 16
    coap_max_observations: int = 2000
    # Presence (online/offline/status messages shared with room peers; service/presence.py). Off:
    # PUTs are accepted and ignored, GETs answer offline, /sync carries none (as Synapse does).
    presence_enabled: bool = True
    # Discovery (/.well-known/matrix/client): the base URL clients should use, e.g. behind a
    # reverse proxy "https://hub.example.org"; empty: the URL each request came in on.
    public_base_url: str = ""
    # VoIP (/voip/turnServer): TURN server URIs and coturn's `static-auth-secret`; empty: no TURN.
    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str = ""
    turn_user_lifetime_s: int = 86400
    # Push notifications (matrix_core/service/push_delivery.py): seconds a notification a push
    # gateway did not take is retried (with backoff) before it is dropped
    push_give_up_after_s: float = 86400.0
    # The content repository (matrix_core/service/media.py): largest upload, and quotas of stored
    # media per user and in all (MiB; 0: no quota, only the disk's size).
    max_upload_size_mb: int = 50
    media_quota_per_user_mb: int = 0
    media_quota_total_mb: int = 0
    # Application services (bridges, bots; matrix_core/service/appservice.py): registration files
    # (YAML, Synapse's format), relative paths from the data dir. Checked at start.
    app_service_config_files: tuple[str, ...] = ()
    # Uplinks to other brokers: the [[mqtt_bridge]] tables, checked (frontends/mqtt/bridge.py)
    mqtt_bridge: tuple[Any, ...] = ()
    # Outbound federation may reach these private networks (CIDRs, e.g. ["192.168.1.0/24"]): hubs on one LAN
    federation_allowed_networks: tuple[str, ...] = ()


_PORT_KEYS = {"http_port", "coap_port", "coaps_port", "mqtt_port", "federation_port"}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


def validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check keys and types; return the values to apply. Raises ConfigError naming the problem."""
    known = {f.name: f for f in fields(GatewayConfig)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        if key == "mqtt_bridge":
            out[key] = _bridges(value, source)
            continue
        default = known[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, tuple):  # a list of strings in TOML
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            kind = "list of strings" if isinstance(default, tuple) else type(default).__name__
            raise ConfigError(f"{source}: {key} must be a {kind}, not {value!r}")
        if key in _PORT_KEYS and not 0 <= value <= 65535:
            raise ConfigError(f"{source}: {key} must be a port number 0-65535, not {value}")
        if key == "server_name" and not is_valid_server_name(value):
            raise ConfigError(f"{source}: server_name {value!r} is not a valid server name")
        if key == "log_level" and value.upper() not in _LOG_LEVELS:
            raise ConfigError(f"{source}: log_level must be one of {', '.join(sorted(_LOG_LEVELS))}")
        if key == "commit_window_ms" and not 0 <= value <= 1000:
            raise ConfigError(f"{source}: commit_window_ms must be between 0 and 1000")
        if key == "sqlite_synchronous" and value.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(f"{source}: sqlite_synchronous must be FULL or NORMAL")
        if key in ("messages_per_second", "messages_burst") and value < 0:
            raise ConfigError(f"{source}: {key} must not be negative")
        if key == "http_idle_timeout" and not 0 < value <= 3600:
            raise ConfigError(f"{source}: http_idle_timeout must be between 0 and 3600 seconds (not 0)")
        if key == "http_max_connections_per_address" and value < 0:
            raise ConfigError(f"{source}: http_max_connections_per_address must not be negative")
        if key in ("retention_default_days", "retention_interval_minutes", "max_rooms_per_user",
                   "disk_warn_free_mb") and value < 0:
            raise ConfigError(f"{source}: {key} must not be negative")
        if key == "admin_contact" and (not value.isprintable() or '"' in value or "\\" in value):
            raise ConfigError(f"{source}: admin_contact must be printable, without quotes or backslashes")
        if key == "mdns_hostname" and value and not _is_mdns_label(value):
            raise ConfigError(f"{source}: mdns_hostname {value!r} must be one DNS label (letters, digits, -)")
        if key in ("coap_max_observations_per_client", "coap_max_observations") and value < 1:
            raise ConfigError(f"{source}: {key} must be at least 1")
        if key == "public_base_url" and value and not _is_base_url(value):
            raise ConfigError(f"{source}: public_base_url must be an http(s) URL such as https://hub.example.org, "
                              f"not {value!r}")
        if key == "turn_uris" and not all(v.split(":", 1)[0] in ("turn", "turns") and v.isprintable()
                                          and '"' not in v and "\\" not in v for v in value):
            raise ConfigError(f"{source}: turn_uris must be turn: or turns: URIs (e.g. turn:hub.lan:3478?transport=udp)")
        if key == "turn_shared_secret" and (not value.isprintable() or '"' in value or "\\" in value):
            raise ConfigError(f"{source}: turn_shared_secret must be printable, without quotes or backslashes")
        if key == "turn_user_lifetime_s" and not 60 <= value <= 7 * 86400:
            raise ConfigError(f"{source}: turn_user_lifetime_s must be between 60 and 604800 seconds")
        if key == "push_give_up_after_s" and not 0 < value <= 7 * 86400:
            raise ConfigError(f"{source}: push_give_up_after_s must be more than 0 and at most 604800 (7 days)")
        if key == "max_upload_size_mb" and not 1 <= value <= 4096:
            raise ConfigError(f"{source}: max_upload_size_mb must be between 1 and 4096")
        if key in ("media_quota_per_user_mb", "media_quota_total_mb") and value < 0:
            raise ConfigError(f"{source}: {key} must not be negative")
        if key == "app_service_config_files" and not all(v and v.isprintable() and '"' not in v and "\\" not in v
                                                          for v in value):
            raise ConfigError(f"{source}: app_service_config_files must be file paths (printable, no quotes)")
        if key == "federation_allowed_networks" and (problem := _networks_problem(value)):
            raise ConfigError(f"{source}: federation_allowed_networks: {problem}")
        if key.startswith("mqtt_") and (problem := mqtt_config_problem(key, value)):
            raise ConfigError(f"{source}: {problem}")
        out[key] = value
    return out


def render(config: GatewayConfig) -> str:
    """The config file written on first run: every setting, with its meaning."""
    return f"""# matrix-gateway configuration (TOML). Command-line flags override these values.
# The Matrix server name: part of every user id (@alice:{config.server_name}). Fix it before you invite friends.
server_name = "{config.server_name}"
# Address the listeners bind to. 127.0.0.1 = this machine only; 0.0.0.0 = your LAN.
bind = "{config.bind}"
http_port = {config.http_port}          # Matrix client-server API (Element, curl, matrix-nio)
# Seconds an HTTP connection (client API and federation) may go without sending complete request
# headers (new, idle between requests, or trickling them: slowloris) before it is closed.
http_idle_timeout = {config.http_idle_timeout}
# Connections one client address (an IPv6 /64) may hold open at once; 0: no cap. Behind a reverse
# proxy every client shares the proxy's address: raise it there.
http_max_connections_per_address = {config.http_max_connections_per_address}
coap_port = {config.coap_port}          # CoAP + CBOR for sensors (coap-client)
# coaps: DTLS with a pre-shared key per device (`matrix-gateway device add ... --psk`). true: on when its
# library is installed (pip install 'matrix-gateway[coaps]'); without it the hub runs plain CoAP only.
coaps_enabled = {str(config.coaps_enabled).lower()}
coaps_port = {config.coaps_port}
mqtt_port = {config.mqtt_port}          # MQTT broker backed by rooms
{mqtt_render(config).rstrip()}
federation_port = {config.federation_port}    # server-server API (TLS)
# Certificate and key (PEM files) for the federation listener; empty: a self-signed pair made on
# first run in the data dir (federation.crt, federation.key). Other servers that verify
# certificates (Synapse's default) need a real one for your server name.
federation_tls_cert = "{config.federation_tls_cert}"
federation_tls_key = "{config.federation_tls_key}"
# Check other servers' certificates. Turn off only for tests with self-signed peers.
federation_tls_verify = {str(config.federation_tls_verify).lower()}
# Allow outbound federation to loopback addresses (private and other non-public ones stay refused).
federation_allow_loopback = {str(config.federation_allow_loopback).lower()}
# Open registration over HTTP. Off: an admin adds accounts with `matrix-gateway user add`.
enable_registration = {str(config.enable_registration).lower()}
log_level = "{config.log_level}"
# Per-user limit on events sent (all protocols); over it: M_LIMIT_EXCEEDED / CoAP 4.29.
messages_per_second = {config.messages_per_second}
messages_burst = {config.messages_burst}
# FULL: every acknowledged write is fsynced. NORMAL: faster, may lose the last writes on power loss.
sqlite_synchronous = "{config.sqlite_synchronous}"
# Milliseconds the writer gathers writes before each commit (0: commit at once). A few ms let many
# devices share one fsync: fewer SD-card writes per reading, that much more latency.
commit_window_ms = {config.commit_window_ms}
# Retention: delete readings (non-state events) older than this many days in every room; 0 keeps
# them. A room's own m.room.retention state event (max_lifetime, ms) overrides it. Room state stays.
retention_default_days = {config.retention_default_days}
# How often the hub purges by itself (0: only `matrix-gateway purge`).
retention_interval_minutes = {config.retention_interval_minutes}
# Advertise the hub on the LAN with mDNS/DNS-SD (NAME.local; _http._tcp, _coap._udp, _mqtt._tcp).
mdns = {str(config.mdns).lower()}
mdns_hostname = "{config.mdns_hostname}"
# Rooms one account may create, counting those the MQTT broker made for its topics (0: no limit;
# hub admins are exempt). Over it: M_RESOURCE_LIMIT_EXCEEDED, naming admin_contact (e.g. "mailto:you@example.org").
max_rooms_per_user = {config.max_rooms_per_user}
admin_contact = "{config.admin_contact}"
# Warn (in the log at most hourly, and in `matrix-gateway status`) when the disk holding the data
# dir has less than this many MB free; 0: never. On a full disk writes are refused (HTTP 507).
disk_warn_free_mb = {config.disk_warn_free_mb}
# CoAP Observe: the most observations one client (an access token; a remote address and port)
# holds: a newer one ends its oldest. And the most in the hub: past that a GET with Observe is
# answered once, without Observe (the device polls).
coap_max_observations_per_client = {config.coap_max_observations_per_client}
coap_max_observations = {config.coap_max_observations}
# Presence: users see whether the people they share a room with are online, and their status
# message (kept in memory only). Off: the hub accepts presence updates and ignores them.
presence_enabled = {str(config.presence_enabled).lower()}
# The base URL clients should use, served at /.well-known/matrix/client (Element finds the hub from
# the server name with it). Set it behind a reverse proxy, e.g. "https://hub.example.org"; empty:
# the URL each request came in on.
public_base_url = "{config.public_base_url}"
# TURN for voice/video calls through NAT (/voip/turnServer): URIs such as
# ["turn:hub.lan:3478?transport=udp"] and coturn's static-auth-secret (use-auth-secret); the hub
# hands out credentials valid turn_user_lifetime_s seconds. Empty: calls without a relay.
turn_uris = [{", ".join(f'"{u}"' for u in config.turn_uris)}]
turn_shared_secret = "{config.turn_shared_secret}"
turn_user_lifetime_s = {config.turn_user_lifetime_s}
# Push notifications to phones (pushers set by Element & co.): a notification the app's push
# gateway does not take (down, 5xx) is retried with backoff (from 1 s, or 1/64 of this window if
# shorter, doubling up to 10 min) for this many seconds, then dropped: an alert that old is noise.
push_give_up_after_s = {config.push_give_up_after_s}
# Media (pictures, snapshots, files; stored in the data dir's media/ folder): the largest upload
# in MiB (M_TOO_LARGE above it), and quotas of stored media in MiB per user and for the whole hub
# (0: no quota; over one, uploads are refused with M_RESOURCE_LIMIT_EXCEEDED naming admin_contact).
max_upload_size_mb = {config.max_upload_size_mb}
media_quota_per_user_mb = {config.media_quota_per_user_mb}
media_quota_total_mb = {config.media_quota_total_mb}
# Application services (bridges and bots, e.g. mautrix-telegram): their registration files (YAML,
# as Synapse reads them); a relative path is from the data dir. `matrix-gateway appservice add`
# keeps files in the data dir's appservices/ folder, loaded as well. Restart the hub after a change.
app_service_config_files = [{", ".join(f'"{u}"' for u in config.app_service_config_files)}]
# Hubs on one LAN: outbound federation to private addresses is refused unless they are inside one
# of these networks (CIDRs), e.g. ["192.168.1.0/24", "fd00::/8"]. With mdns = true, server names
# ending in .local are found with mDNS.
federation_allowed_networks = [{", ".join(f'"{n}"' for n in config.federation_allowed_networks)}]
# Uplinks to another MQTT broker (docs/mqtt.md, "Uplink"), mosquitto-bridge style, e.g.:
# [[mqtt_bridge]]
# name = "house"
# address = ["house.lan:1883"]          # several: tried in turn
# local_account = "bridge"              # `in` messages are published as this account
# remote_username = "garage"
# remote_password = "secret"
# protocol = "mqttv311"                 # or "mqttv50"
# tls_ca_file = ""                      # a CA file: TLS to the remote
# topic = [{{ pattern = "sensors/#", direction = "out", qos = 1, local_prefix = "", remote_prefix = "garage/" }}]
"""


def _bridges(value: Any, source: str) -> tuple[Any, ...]:
    """The [[mqtt_bridge]] tables, checked (a bad one stops the hub naming its key)."""
    from frontends.mqtt.bridge import BridgeConfigError, parse_bridges

    try:
        bridges = parse_bridges(value)
    except BridgeConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for i, bridge in enumerate(bridges):
        if bridge.tls_ca_file and not Path(bridge.tls_ca_file).is_file():
            raise ConfigError(f"{source}: mqtt_bridge[{i}] ({bridge.name}).tls_ca_file: {bridge.tls_ca_file}: no such file")
    return bridges


def _networks_problem(value: tuple[str, ...]) -> str | None:
    import ipaddress

    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not a network such as 192.168.1.0/24"
    return None


def _is_base_url(value: str) -> bool:
    """An http(s) URL with a host, nothing a TOML string or a JSON answer would mangle."""
    from urllib.parse import urlsplit

    if not value.isprintable() or any(c in value for c in '"\\ ') or "?" in value or "#" in value:
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_mdns_label(value: str) -> bool:
    """One DNS label, so that `<label>.local` is a valid mDNS host name."""
    return 0 < len(value) <= 63 and value[0] != "-" and value[-1] != "-" and all(
        c.isascii() and (c.isalnum() or c == "-") for c in value)


def load_config(data_dir: Path, config_file: Path | None, overrides: dict[str, Any],
                create: bool) -> GatewayConfig:
    """Read (and on first run create) the config, then apply command-line overrides."""
    path = config_file or data_dir / CONFIG_FILE
    config = GatewayConfig()
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        config = replace(config, **validate(values, str(path)))
    elif config_file is not None:
        raise ConfigError(f"{path}: config file not found")
    config = replace(config, **validate({k: v for k, v in overrides.items() if v is not None}, "command line"))
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_text(render(config))
        except BaseException:  # a full disk: no truncated file (the next start writes it whole)
            path.unlink(missing_ok=True)
            raise
    return config


def load_or_create_signing_key(data_dir: Path) -> SigningKey:
    """The server's ed25519 key, generated on first run and kept private (mode 0600)."""
    path = data_dir / SIGNING_KEY_FILE
    if path.exists():
        try:
            return parse_signing_key(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: not a signing key: {exc}") from None
    key = generate_signing_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(serialize_signing_key(key) + "\n")
    except BaseException:  # a full disk: no half-written key that would stop every later start
        path.unlink(missing_ok=True)
        raise
    return key


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(data_dir, 0o700)
    except PermissionError:
        pass
