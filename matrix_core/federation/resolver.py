"""The I/O around server discovery: .well-known fetches, SRV queries, and an address policy
enforced on every name aiohttp resolves. The decisions themselves live in discovery.py."""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from .discovery import (
    Lookups, NeedSrv, NeedWellKnown, SrvRecord, Target, address_allowed, decide, is_mdns_name, parse_well_known,
    well_known_cache_seconds,
)
from .dns_srv import DnsError, build_srv_query, parse_srv_response

log = logging.getLogger(__name__)

SRV_TIMEOUT = 2.0
MDNS_TIMEOUT = 3.0
SRV_MIN_CACHE, SRV_MAX_CACHE = 60, 3600

# (status, body, Cache-Control header) of GET https://<host>/.well-known/matrix/server
WellKnownFetch = Callable[[str], Awaitable[tuple[int, bytes, str | None]]]


class AddressRefused(OSError):
    """Every address a federation hostname resolves to is refused by policy."""


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that drops addresses outbound federation must not reach. With `mdns`,
    NAME.local is asked of the LAN with multicast DNS (hubs on one LAN find each other by name)."""

    def __init__(self, allow_loopback: bool, allowed_networks: tuple[Any, ...] = (), mdns: bool = False) -> None:
        self.allow_loopback = allow_loopback
        self.allowed_networks = allowed_networks
        self.mdns = mdns
        self._inner = ThreadedResolver()
        self._zeroconf: Any = None

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if self.mdns and is_mdns_name(host):
            results = await self._resolve_mdns(host, port)
        else:
            results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_allowed(r["host"], self.allow_loopback, self.allowed_networks)]
        if not allowed:
            raise AddressRefused(f"{host} resolves only to addresses federation may not connect to "
                                 "(private networks need federation_allowed_networks)")
        return allowed

    async def _resolve_mdns(self, host: str, port: int) -> list[ResolveResult]:
        from zeroconf import AddressResolver, IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        if self._zeroconf is None:
            self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        name = host.rstrip(".") + "."
        info = AddressResolver(name)
        if not await info.async_request(self._zeroconf.zeroconf, int(MDNS_TIMEOUT * 1000)):
            raise OSError(f"{host}: no answer over mDNS")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for address in info.parsed_addresses()]

    async def close(self) -> None:
        await self._inner.close()
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
            self._zeroconf = None


def _nameservers() -> list[str]:
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]


class _OneAnswer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def query_srv(name: str, timeout: float = SRV_TIMEOUT) -> tuple[list[SrvRecord], int]:
    """Ask the system's first nameserver for SRV records; ([], 0) when there is no answer."""
    servers = _nameservers()
    if not servers:
        return [], 0
    qid = secrets.randbelow(65536)
    loop = asyncio.get_running_loop()
    transport = None
    try:
        transport, proto = await loop.create_datagram_endpoint(_OneAnswer, remote_addr=(servers[0], 53))
        transport.sendto(build_srv_query(name, qid))
        data = await asyncio.wait_for(proto.answer, timeout)
        return parse_srv_response(data, qid)
    except (OSError, asyncio.TimeoutError, DnsError) as exc:
        log.debug("SRV lookup of %s failed: %s", name, exc)
        return [], 0
    finally:
        if transport is not None:
            transport.close()


class ServerResolver:
    """Turns a server name into the targets to try, with .well-known and SRV answers cached."""

    def __init__(self, fetch_well_known: WellKnownFetch,
                 srv_lookup: Callable[[str], Awaitable[tuple[list[SrvRecord], int]]] = query_srv,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch_well_known = fetch_well_known
        self._srv_lookup = srv_lookup
        self._clock = clock
        self._well_known: dict[str, tuple[float, str | None]] = {}
        self._srv: dict[str, tuple[float, list[SrvRecord]]] = {}

    async def _well_known_for(self, host: str) -> str | None:
        now = self._clock()
        cached = self._well_known.get(host)
        if cached and cached[0] > now:
            return cached[1]
        cache_control = None
        try:
            status, body, cache_control = await self._fetch_well_known(host)
            delegated = parse_well_known(status, body)
        except Exception as exc:  # any failure means "no delegation"
            log.debug(".well-known of %s failed: %s", host, exc)
            delegated = None
        self._well_known[host] = (now + well_known_cache_seconds(delegated, cache_control), delegated)
        return delegated

    async def _srv_for(self, name: str) -> list[SrvRecord]:
        now = self._clock()
        cached = self._srv.get(name)
        if cached and cached[0] > now:
            return cached[1]
        records, ttl = await self._srv_lookup(name)
        self._srv[name] = (now + max(SRV_MIN_CACHE, min(ttl, SRV_MAX_CACHE)), records)
        return records

    async def resolve(self, server_name: str) -> list[Target]:
        lookups = Lookups()
        while True:
            step = decide(server_name, lookups)
            if isinstance(step, NeedWellKnown):
                lookups.well_known = await self._well_known_for(step.hostname)
            elif isinstance(step, NeedSrv):
                lookups.srv[step.name] = await self._srv_for(step.name)
            else:
                return step
