"""Server discovery ("Resolving server names" in the server-server spec) as pure decisions.

`decide(server_name, lookups)` returns either the targets to try or the one lookup it needs next
(a .well-known fetch or an SRV query); the caller does that I/O, records the answer in `lookups`
and calls again. So every branch of the spec is a data-in/data-out test, and `resolver.py` holds
the few lines that touch the network. Also here: which resolved addresses outbound federation may
connect to, and how long a .well-known answer is cached.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ..canonical_json import CanonicalJSONError, parse_json
from ..identifiers import is_valid_server_name

__all__ = [
    "DEFAULT_PORT",
    "Lookups",
    "NeedSrv",
    "NeedWellKnown",
    "SrvRecord",
    "Target",
    "address_allowed",
    "decide",
    "parse_server_name",
    "parse_well_known",
    "well_known_cache_seconds",
]

DEFAULT_PORT = 8448
WELL_KNOWN_MAX_BYTES = 50 * 1024
WELL_KNOWN_DEFAULT_CACHE = 24 * 3600
WELL_KNOWN_MAX_CACHE = 48 * 3600
WELL_KNOWN_MIN_CACHE = 5 * 60
WELL_KNOWN_ERROR_CACHE = 10 * 60


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and what to say: `host`:`port` over TLS, `Host: host_header`, the
    certificate checked for `tls_name` (SNI)."""

    host: str
    port: int
    host_header: str
    tls_name: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class NeedWellKnown:
    hostname: str


@dataclass(frozen=True, slots=True)
class NeedSrv:
    name: str  # e.g. "_matrix-fed._tcp.example.org"


_UNSET: Any = object()


@dataclass
class Lookups:
    """Answers gathered so far. well_known: delegated server name, or None for "no delegation"
    (any error); srv: records per SRV name (empty list: none or lookup failed)."""

    well_known: Any = _UNSET
    srv: dict[str, list[SrvRecord]] = field(default_factory=dict)


def _ip_literal(host: str) -> str | None:
    """The address if `host` is an IP literal ("1.2.3.4" or "[::1]"), else None."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if ":" in candidate and not host.startswith("["):
        return None  # a bare IPv6 address is not a valid server name
    return candidate


def parse_server_name(name: str) -> tuple[str, int | None]:
    """'example.org:8448' -> ('example.org', 8448); '[::1]' -> ('[::1]', None). ValueError if invalid."""
    if not is_valid_server_name(name):
        raise ValueError(f"invalid server name {name!r}")
    if name.startswith("["):
        end = name.index("]")
        host, rest = name[: end + 1], name[end + 1 :]
        port = int(rest[1:]) if rest else None
    elif ":" in name:
        host, _, port_s = name.rpartition(":")
        port = int(port_s)
    else:
        host, port = name, None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"invalid port in server name {name!r}")
    return host.lower() if not host.startswith("[") else host, port


def _srv_targets(records: list[SrvRecord], host_header: str, tls_name: str) -> list[Target]:
    usable = [r for r in records if r.target not in ("", ".")]
    usable.sort(key=lambda r: (r.priority, -r.weight))
    return [Target(r.target.rstrip(".").lower(), r.port, host_header, tls_name) for r in usable]


def decide(server_name: str, lookups: Lookups) -> list[Target] | NeedWellKnown | NeedSrv:
    """One step of the spec's resolution algorithm for `server_name` given the answers so far."""
    host, port = parse_server_name(server_name)
    ip = _ip_literal(host)
    # 1. An IP literal: connect to it, default port 8448.
    if ip is not None:
        return [Target(ip, port or DEFAULT_PORT, server_name, ip)]
    # 2. A hostname with an explicit port: resolve it directly.
    if port is not None:
        return [Target(host, port, server_name, host)]
    # 3. Ask https://<hostname>/.well-known/matrix/server.
    if lookups.well_known is _UNSET:
        return NeedWellKnown(host)
    delegated = lookups.well_known
    if delegated is not None:
        d_host, d_port = parse_server_name(delegated)
        d_ip = _ip_literal(d_host)
        # 3.1 delegated IP literal; 3.2 delegated hostname with port.
        if d_ip is not None:
            return [Target(d_ip, d_port or DEFAULT_PORT, delegated, d_ip)]
        if d_port is not None:
            return [Target(d_host, d_port, delegated, d_host)]
        # 3.3 / 3.4: SRV records of the delegated hostname, then its port 8448.
        for prefix in ("_matrix-fed._tcp.", "_matrix._tcp."):
            name = prefix + d_host
            if name not in lookups.srv:
                return NeedSrv(name)
            targets = _srv_targets(lookups.srv[name], d_host, d_host)
            if targets:
                return targets
        return [Target(d_host, DEFAULT_PORT, d_host, d_host)]
    # 4. / 5. No delegation: SRV records of the server name itself (current, then deprecated).
    for prefix in ("_matrix-fed._tcp.", "_matrix._tcp."):
        name = prefix + host
        if name not in lookups.srv:
            return NeedSrv(name)
        targets = _srv_targets(lookups.srv[name], server_name, host)
        if targets:
            return targets
    # 6. Fall back to port 8448.
    return [Target(host, DEFAULT_PORT, server_name, host)]


def parse_well_known(status: int, body: bytes) -> str | None:
    """The delegated server name from a .well-known/matrix/server answer, or None on any error."""
    if status != 200 or len(body) > WELL_KNOWN_MAX_BYTES:
        return None
    try:
        doc = parse_json(body)
    except CanonicalJSONError:
        return None
    delegated = doc.get("m.server") if isinstance(doc, dict) else None
    if not isinstance(delegated, str):
        return None
    try:
        parse_server_name(delegated)
    except ValueError:
        return None
    return delegated


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


def well_known_cache_seconds(delegated: str | None, cache_control: str | None) -> int:
    """How long to keep a .well-known answer: errors briefly, successes per max-age within bounds."""
    if delegated is None:
        return WELL_KNOWN_ERROR_CACHE
    if cache_control:
        if re.search(r"(?:^|[,\s])(no-store|no-cache)\b", cache_control, re.IGNORECASE):
            return WELL_KNOWN_MIN_CACHE
        m = _MAX_AGE.search(cache_control)
        if m:
            return max(WELL_KNOWN_MIN_CACHE, min(int(m.group(1)), WELL_KNOWN_MAX_CACHE))
    return WELL_KNOWN_DEFAULT_CACHE


def parse_networks(texts: "tuple[str, ...] | list[str]") -> "tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]":
    """`federation_allowed_networks` as networks (host bits allowed: 192.168.1.7/24 is the /24)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def is_mdns_name(host: str) -> bool:
    """A `NAME.local` host name, found with multicast DNS on the LAN rather than unicast DNS."""
    return host.rstrip(".").lower().endswith(".local")


def address_allowed(address: str, allow_loopback: bool = False,
                    allowed_networks: "tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]" = ()) -> bool:
    """May outbound federation connect to this resolved address?

    Only globally routable unicast addresses by default (no private, loopback, link-local,
    CGNAT, multicast, reserved or unspecified ones: a remote server must not make us probe the
    LAN the hub sits in). `allow_loopback` admits 127.0.0.0/8 and ::1 and nothing else;
    `allowed_networks` (the admin's `federation_allowed_networks`, hubs on one LAN) admits the
    addresses inside them, multicast excepted.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or (ip.sixtofour if ip.sixtofour is not None else None)
        if mapped is not None:
            ip = mapped
    if ip.is_multicast:
        return False
    if any(ip in net for net in allowed_networks if net.version == ip.version):
        return True
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global
