"""LAN discovery: advertise the hub with mDNS/DNS-SD so phones and devices find NAME.local.

Services: `_http._tcp` (the Matrix client-server API, TXT path=/_matrix/client and the server
name), `_coap._udp` and `_mqtt._tcp` for the front ends that are actually running. python-zeroconf
is imported only when `mdns = true`, so an idle hub without discovery does not carry it, and
registration (which probes the network for about a second) runs in the background after the
hub is ready, so start-up stays fast.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

from ..config import GatewayConfig

log = logging.getLogger(__name__)

# front end name -> (DNS-SD service type, the config key of its port)
FRONTEND_SERVICES = {
    "coap": ("_coap._udp.local.", "coap_port"),
    "mqtt": ("_mqtt._tcp.local.", "mqtt_port"),
}
HTTP_SERVICE = "_http._tcp.local."


@dataclass(frozen=True)
class Advert:
    service_type: str
    instance: str  # the full instance name, e.g. "hub._http._tcp.local."
    port: int
    txt: dict[str, str]


def host_label(config: GatewayConfig) -> str:
    return config.mdns_hostname or socket.gethostname().split(".")[0]


def adverts(config: GatewayConfig, http_port: int, frontends: list[str]) -> list[Advert]:
    """What to announce: the HTTP API always, CoAP and MQTT when their front ends run."""
    label = host_label(config)
    txt = {"server_name": config.server_name}
    out = [Advert(HTTP_SERVICE, f"{label}.{HTTP_SERVICE}", http_port, {**txt, "path": "/_matrix/client"})]
    for name in frontends:
        for key, (service_type, port_key) in FRONTEND_SERVICES.items():
            if key in name.lower():
                out.append(Advert(service_type, f"{label}.{service_type}", getattr(config, port_key), txt))
    return out


def addresses_for(bind: str) -> list[str]:
    """The IPv4 addresses to announce: the bound one, or every non-loopback one for 0.0.0.0."""
    if bind not in ("0.0.0.0", "", "::"):
        return [bind]
    from zeroconf import get_all_addresses

    found = [a for a in get_all_addresses() if not a.startswith("127.")]
    return found or ["127.0.0.1"]


class Advertiser:
    """Registers the adverts on start, withdraws them (goodbye packets) on stop."""

    def __init__(self, config: GatewayConfig, http_port: int, frontends: list[str]) -> None:
        self.config = config
        self.adverts = adverts(config, http_port, frontends)
        self._zc: Any = None
        self._infos: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def start_in_background(self) -> None:
        self._task = asyncio.create_task(self._register(), name="mdns")

    async def _register(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        addresses = addresses_for(self.config.bind)
        interfaces: Any = addresses if self.config.bind not in ("0.0.0.0", "", "::") else "all"
        if interfaces == "all":
            from zeroconf import InterfaceChoice

            interfaces = InterfaceChoice.All
        server = f"{host_label(self.config)}.local."
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            self._infos = [AsyncServiceInfo(advert.service_type, advert.instance, port=advert.port,
                                            properties=advert.txt, server=server,
                                            addresses=[socket.inet_aton(a) for a in addresses])
                           for advert in self.adverts]
            # each registration probes the network for about a second: all at once, not one by one
            await asyncio.gather(*(self._announce(info) for info in self._infos))
        except Exception as exc:  # discovery is a convenience: the hub serves without it
            log.warning("mDNS advertising failed: %s", exc)

    async def _announce(self, info: Any) -> None:
        await self._zc.async_register_service(info, allow_name_change=True)
        log.info("mDNS: advertising %s (%s:%d)", info.name, info.server, info.port)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._zc is not None:
            try:
                await self._zc.async_unregister_all_services()
            finally:
                await self._zc.async_close()
