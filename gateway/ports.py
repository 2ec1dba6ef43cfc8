"""A listener that cannot bind (another program holds its port, or a port below 1024 without the
right to it) stops the start with ONE line naming the port and the setting that chose it, not a
traceback from the depths of asyncio or aiocoap.

Which port failed is found after the fact: once the hub has closed what it opened, each configured
port is tried again the way its listener binds it; the ones that still fail are named. (The errors
themselves do not say: aiocoap's UDP bind error carries no address.)
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from .config import GatewayConfig

BIND_ERRNOS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


@dataclass(frozen=True)
class Port:
    key: str  # the config key
    flag: str | None  # the `matrix-gateway run` option, if there is one
    number: int
    udp: bool

    def named(self) -> str:
        how = f"{self.key}, {self.flag}" if self.flag else self.key
        return f"{'UDP' if self.udp else 'TCP'} port {self.number} ({how})"


def configured_ports(config: GatewayConfig, coaps: bool) -> list[Port]:
    """Every port the hub listens on with this config, in start-up order (0: any port, skipped)."""
    ports = [Port("http_port", "--http-port", config.http_port, False),
             Port("federation_port", "--federation-port", config.federation_port, False),
             Port("coap_port", "--coap-port", config.coap_port, True)]
    if config.coaps_enabled and coaps:
        ports.append(Port("coaps_port", "--coaps-port", config.coaps_port, True))
    if config.mqtt_enabled:
        ports.append(Port("mqtt_port", "--mqtt-port", config.mqtt_port, False))
        if config.mqtt_tls_enabled:
            ports.append(Port("mqtt_tls_port", None, config.mqtt_tls_port, False))
        if config.mqtt_ws_enabled:
            ports.append(Port("mqtt_ws_port", None, config.mqtt_ws_port, False))
        if config.mqtt_wss_enabled:
            ports.append(Port("mqtt_wss_port", None, config.mqtt_wss_port, False))
    return [p for p in ports if p.number]


def bind_problem(bind: str, port: Port) -> OSError | None:
    """Why binding `port` on `bind` fails now, or None (TCP with SO_REUSEADDR, as asyncio binds)."""
    try:
        infos = socket.getaddrinfo(bind or None, port.number, type=socket.SOCK_DGRAM if port.udp else socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, str(exc))
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as sock:
            if not port.udp:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def explain_bind_failure(config: GatewayConfig, exc: OSError, coaps: bool = True) -> str:
    """The one line to print for a listener's bind error."""
    problems = [(port, err) for port in configured_ports(config, coaps)
                if (err := bind_problem(config.bind, port)) is not None]
    if not problems:
        return f"matrix-gateway: cannot listen on {config.bind}: {exc.strerror or exc}"
    parts = []
    for port, err in problems:
        if err.errno == errno.EADDRINUSE:
            parts.append(f"{port.named()} on {config.bind} is already in use by another program")
        elif err.errno == errno.EACCES:
            parts.append(f"{port.named()} on {config.bind} needs privileges (ports below 1024 are reserved)")
        else:
            parts.append(f"{port.named()}: cannot bind to {config.bind} ({err.strerror or err}; check `bind`)")
    advice = "stop the other program or choose another port" if any(
        err.errno == errno.EADDRINUSE for _, err in problems) else "choose another port"
    return f"matrix-gateway: {'; '.join(parts)}: {advice}"
