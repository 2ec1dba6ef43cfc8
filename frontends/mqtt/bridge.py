"""Uplinks to other brokers (`[[mqtt_bridge]]` in gateway.toml): their settings and the topic
mapping. Pure: data in, data out (frontends/mqtt/uplink.py is the I/O).

Modelled on mosquitto's bridge (`topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`): a
topic rule matches `local_prefix + pattern` here and `remote_prefix + pattern` there, so
`{pattern = "sensors/#", direction = "out", local_prefix = "", remote_prefix = "garage/"}` sends
the local `sensors/t1` to the remote `garage/sensors/t1`. The first rule matching a topic wins
(mosquitto checks them in order too).

    [[mqtt_bridge]]
    name = "house"                       # names the bridge in logs, `status` and its stored position
    address = ["house.lan:1883", "backup.lan:1883"]   # tried in turn (round robin)
    local_account = "bridge"             # `in` messages are published as this account
    remote_username = "garage"           # optional, with remote_password
    remote_password = "secret"
    client_id = "garage-hub"             # default: "mg-" + name
    protocol = "mqttv311"                # or "mqttv50"
    tls_ca_file = "/etc/ssl/house-ca.pem"   # TLS to the remote, checked against this CA
    restart_timeout = 60                 # longest wait between reconnect attempts (from 1 s, doubling)
    [[mqtt_bridge.topic]]
    pattern = "sensors/#"
    direction = "out"                    # out, in or both
    qos = 1
    remote_prefix = "garage/"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .topics import is_valid_topic_filter, is_valid_topic_name, topic_matches

DIRECTIONS = ("out", "in", "both")
PROTOCOLS = {"mqttv311": 4, "mqttv50": 5}
_BRIDGE_KEYS = {"name", "address", "local_account", "remote_username", "remote_password", "client_id",
                "protocol", "tls_ca_file", "tls_insecure", "keepalive", "restart_timeout", "topic"}
_TOPIC_KEYS = {"pattern", "direction", "qos", "local_prefix", "remote_prefix"}
# A content key marking events an uplink stored for what the remote sent: never sent back to it.
VIA_KEY = "org.matrix_gateway.bridge"


class BridgeConfigError(ValueError):
    """A bad [[mqtt_bridge]] entry; the message names the key."""


@dataclass(frozen=True)
class TopicRule:
    pattern: str
    direction: str = "out"
    qos: int = 0
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def sends(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def receives(self) -> bool:
        return self.direction in ("in", "both")


@dataclass(frozen=True)
class BridgeSettings:
    name: str
    addresses: tuple[tuple[str, int], ...]
    topics: tuple[TopicRule, ...]
    local_account: str = ""
    remote_username: str | None = None
    remote_password: str | None = None
    client_id: str = ""
    protocol_level: int = 4
    tls_ca_file: str = ""
    tls_insecure: bool = False  # TLS without checking the host name against the certificate
    keepalive: int = 60
    restart_timeout: int = 60  # the longest wait between reconnect attempts (mosquitto's name)

    @property
    def sends(self) -> bool:
        return any(rule.sends for rule in self.topics)

    @property
    def receives(self) -> bool:
        return any(rule.receives for rule in self.topics)


# -- topic mapping ------------------------------------------------------------------------------

def outbound(rules: tuple[TopicRule, ...], local_topic: str) -> tuple[str, int] | None:
    """(remote topic, QoS) a local topic is forwarded as, or None if no out/both rule takes it."""
    for rule in rules:
        if not rule.sends or not local_topic.startswith(rule.local_prefix):
            continue
        rest = local_topic[len(rule.local_prefix):]
        if rest and topic_matches(rule.pattern, rest):
            return rule.remote_prefix + rest, rule.qos
    return None


def inbound(rules: tuple[TopicRule, ...], remote_topic: str) -> str | None:
    """The local topic a message from the remote is published on, or None if no in/both rule
    takes it (a broker sending what we did not subscribe to)."""
    for rule in rules:
        if not rule.receives or not remote_topic.startswith(rule.remote_prefix):
            continue
        rest = remote_topic[len(rule.remote_prefix):]
        if rest and topic_matches(rule.pattern, rest):
            local = rule.local_prefix + rest
            return local if is_valid_topic_name(local) else None
    return None


def remote_subscriptions(rules: tuple[TopicRule, ...]) -> list[tuple[str, int]]:
    """(remote filter, QoS) to subscribe to for the in/both rules, in rule order, without repeats."""
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.receives:
            seen.setdefault(rule.remote_prefix + rule.pattern, rule.qos)
    return list(seen.items())


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first retry): doubling, capped."""
    return min(cap, base * (2 ** min(attempt, 16)))


# -- settings -----------------------------------------------------------------------------------

def parse_address(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' (port 1883 when left out)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host or any(c.isspace() for c in host) or not host.isprintable():
        raise ValueError(f"{value!r} is not host:port")
    if not port_text:
        return host, 1883
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be 1-65535")
    return host, int(port_text)


def _str(entry: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value.isprintable():
        raise BridgeConfigError(f"{where}.{key} must be a printable string, not {value!r}")
    return value


def parse_topic(entry: Any, where: str) -> TopicRule:
    if isinstance(entry, str):  # mosquitto's one-line form: "PATTERN [DIRECTION [QOS [LOCAL [REMOTE]]]]"
        parts = entry.split()
        if not 1 <= len(parts) <= 5:
            raise BridgeConfigError(f"{where}: {entry!r} must be 'pattern [direction [qos [local_prefix [remote_prefix]]]]'")
        names = ["pattern", "direction", "qos", "local_prefix", "remote_prefix"]
        entry = {name: (int(p) if name == "qos" and p.isdigit() else ("" if p == '""' else p))
                 for name, p in zip(names, parts)}
    if not isinstance(entry, dict):
        raise BridgeConfigError(f"{where} must be a table (pattern, direction, qos, local_prefix, remote_prefix)")
    unknown = set(entry) - _TOPIC_KEYS
    if unknown:
        raise BridgeConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOPIC_KEYS))})")
    if "pattern" not in entry:
        raise BridgeConfigError(f"{where}.pattern is missing")
    pattern = _str(entry, "pattern", where)
    if not pattern or not is_valid_topic_filter(pattern, allow_shared=False):
        raise BridgeConfigError(f"{where}.pattern {pattern!r} is not a valid MQTT topic filter")
    direction = _str(entry, "direction", where, "out")
    if direction not in DIRECTIONS:
        raise BridgeConfigError(f"{where}.direction must be out, in or both, not {direction!r}")
    qos = entry.get("qos", 0)
    if not isinstance(qos, int) or isinstance(qos, bool) or qos not in (0, 1, 2):
        raise BridgeConfigError(f"{where}.qos must be 0, 1 or 2, not {qos!r}")
    prefixes = {}
    for key in ("local_prefix", "remote_prefix"):
        prefix = _str(entry, key, where)
        if any(c in prefix for c in "+#\x00"):
            raise BridgeConfigError(f"{where}.{key} {prefix!r} must not hold wildcards")
        prefixes[key] = prefix
    return TopicRule(pattern, direction, qos, prefixes["local_prefix"], prefixes["remote_prefix"])


def parse_bridge(entry: Any, index: int) -> BridgeSettings:
    """One `[[mqtt_bridge]]` table, checked. Raises BridgeConfigError naming the key."""
    where = f"mqtt_bridge[{index}]"
    if not isinstance(entry, dict):
        raise BridgeConfigError(f"{where} must be a table ([[mqtt_bridge]])")
    unknown = set(entry) - _BRIDGE_KEYS
    if unknown:
        raise BridgeConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_BRIDGE_KEYS))})")
    name = _str(entry, "name", where, f"bridge{index}")
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise BridgeConfigError(f"{where}.name {name!r} must be letters, digits, '-', '_' or '.'")
    where = f"mqtt_bridge[{index}] ({name})"
    raw = entry.get("address")
    if raw is None:
        raise BridgeConfigError(f"{where}.address is missing (host:port, or a list of them)")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BridgeConfigError(f"{where}.address must be \"host:port\" or a list of them, not {raw!r}")
    addresses = []
    for text in (part for t in texts for part in t.split(",")):
        try:
            addresses.append(parse_address(text))
        except ValueError as exc:
            raise BridgeConfigError(f"{where}.address: {exc}") from None
    topics_raw = entry.get("topic")
    if topics_raw is None:
        raise BridgeConfigError(f"{where}.topic is missing (at least one [[mqtt_bridge.topic]])")
    if not isinstance(topics_raw, list):
        topics_raw = [topics_raw]
    if not topics_raw:
        raise BridgeConfigError(f"{where}.topic is empty")
    topics = tuple(parse_topic(t, f"{where}.topic[{i}]") for i, t in enumerate(topics_raw))
    local_account = _str(entry, "local_account", where)
    if any(rule.receives for rule in topics) and not local_account:
        raise BridgeConfigError(f"{where}.local_account is missing: `in` messages are published as that account")
    username = _str(entry, "remote_username", where) if "remote_username" in entry else None
    password = _str(entry, "remote_password", where) if "remote_password" in entry else None
    if password is not None and username is None:
        raise BridgeConfigError(f"{where}.remote_password needs remote_username")
    client_id = _str(entry, "client_id", where, f"mg-{name}")
    if not client_id or len(client_id.encode()) > 65535:
        raise BridgeConfigError(f"{where}.client_id must not be empty")
    protocol = _str(entry, "protocol", where, "mqttv311")
    if protocol not in PROTOCOLS:
        raise BridgeConfigError(f"{where}.protocol must be mqttv311 or mqttv50, not {protocol!r}")
    ca = _str(entry, "tls_ca_file", where)
    insecure = entry.get("tls_insecure", False)
    if not isinstance(insecure, bool):
        raise BridgeConfigError(f"{where}.tls_insecure must be true or false")
    keepalive = entry.get("keepalive", 60)
    if not isinstance(keepalive, int) or isinstance(keepalive, bool) or not 5 <= keepalive <= 65535:
        raise BridgeConfigError(f"{where}.keepalive must be 5-65535 seconds, not {keepalive!r}")
    restart = entry.get("restart_timeout", 60)
    if not isinstance(restart, int) or isinstance(restart, bool) or not 1 <= restart <= 3600:
        raise BridgeConfigError(f"{where}.restart_timeout must be 1-3600 seconds, not {restart!r}")
    return BridgeSettings(name, tuple(addresses), topics, local_account, username, password, client_id,
                          PROTOCOLS[protocol], ca, insecure, keepalive, restart)


def parse_bridges(value: Any) -> tuple[BridgeSettings, ...]:
    """All `[[mqtt_bridge]]` tables; names must be unique (each keeps its own position)."""
    if not isinstance(value, list):
        raise BridgeConfigError("mqtt_bridge must be written as [[mqtt_bridge]] tables")
    bridges = tuple(parse_bridge(entry, i) for i, entry in enumerate(value))
    names = [b.name for b in bridges]
    for name in names:
        if names.count(name) > 1:
            raise BridgeConfigError(f"mqtt_bridge: name {name!r} is used twice (each bridge needs its own name)")
    return bridges
