"""Outbound federation requests: discovery, TLS, X-Matrix signing, strict JSON, typed errors.

One aiohttp ClientSession per client (made lazily on the running loop) with a per-host connection
limit. URLs are built with yarl's encoded=True so the bytes signed as `uri` are the bytes sent:
callers pass paths whose parameters are already percent-encoded (use `federation_path`).
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping
from urllib.parse import quote

import aiohttp
import yarl

from ..canonical_json import CanonicalJSONError, encode_canonical_json, parse_json
from .discovery import Target, _ip_literal, address_allowed, parse_networks, parse_server_name
from .resolver import AddressRefused, PolicyResolver, ServerResolver
from .tls import client_context
from .xmatrix import build_authorization

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

__all__ = [
    "DestinationRefused",
    "DestinationUnreachable",
    "FederationClient",
    "FederationError",
    "FederationTransportError",
    "federation_path",
]

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
CONNECT_TIMEOUT = 10.0
PER_HOST_CONNECTIONS = 8
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
WELL_KNOWN_MAX_REDIRECTS = 3
WELL_KNOWN_TIMEOUT = 10.0


# Reads a 2xx answer itself (a media download: multipart, streamed to disk), returning its result.
Consume = Callable[[aiohttp.ClientResponse], Awaitable[Any]]


class FederationTransportError(Exception):
    """Any failure of an outbound federation request."""


class FederationError(FederationTransportError):
    """The remote server answered with a non-2xx status (or a 2xx that is not JSON)."""

    def __init__(self, status: int, errcode: str | None, body: Any) -> None:
        super().__init__(f"{status} {errcode or ''}".strip())
        self.status = status
        self.errcode = errcode
        self.body = body


class DestinationRefused(FederationTransportError):
    """Policy forbids this destination (loopback/private address, invalid name, ourselves)."""


class DestinationUnreachable(FederationTransportError):
    """No target of the destination answered: DNS, connection, TLS failure or timeout."""


def federation_path(template: str, **params: str) -> str:
    """'/_matrix/federation/v1/send/{txnId}' with each parameter percent-encoded (nothing safe)."""
    return template.format(**{k: quote(v, safe="") for k, v in params.items()})


def encode_query(query: Mapping[str, Any] | None) -> str:
    if not query:
        return ""
    parts = []
    for key, value in query.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            v = str(v).lower() if isinstance(v, bool) else str(v)
            parts.append(f"{quote(key, safe='')}={quote(v, safe='')}")
    return "&".join(parts)


# What a raw path may hold (RFC 3986 pchar and '/'): anything else must come percent-encoded.
_PATH_CHARS = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class FederationClient:
    """Signed requests to other homeservers as `hs.server_name` with `hs.signing_key`.

    `hs` only needs those two attributes, so tools and tests can sign as a hub without running one.
    """

    def __init__(self, hs: Homeserver, verify_tls: bool = True, allow_loopback: bool = False,
                 per_host_connections: int = PER_HOST_CONNECTIONS, allowed_networks: tuple[str, ...] = (),
                 mdns: bool = False) -> None:
        self.server_name: str = hs.server_name
        self.signing_key = hs.signing_key
        self.verify_tls = verify_tls
        self.allow_loopback = allow_loopback
        self.allowed_networks = parse_networks(allowed_networks)  # federation_allowed_networks: hubs on one LAN
        self.mdns = mdns  # NAME.local server names resolved with mDNS
        self.per_host_connections = per_host_connections
        self._session: aiohttp.ClientSession | None = None
        self.resolver = ServerResolver(self._fetch_well_known)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self.per_host_connections, ssl=client_context(self.verify_tls),
                resolver=PolicyResolver(self.allow_loopback, self.allowed_networks, self.mdns), ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "matrix-gateway"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_literal(self, host: str) -> None:
        # aiohttp does not pass IP literals through the resolver: check them here.
        if _ip_literal(host) is not None or _ip_literal(f"[{host}]") is not None:
            if not address_allowed(host.strip("[]"), self.allow_loopback, self.allowed_networks):
                raise DestinationRefused(f"federation to {host} is refused (not a public address)")

    async def _fetch_well_known(self, host: str) -> tuple[int, bytes, str | None]:
        session = self._get_session()
        url = yarl.URL.build(scheme="https", host=host, path="/.well-known/matrix/server")
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            self._check_literal(url.host or "")
            async with session.get(url, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=WELL_KNOWN_TIMEOUT)) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = url.join(yarl.URL(resp.headers["Location"]))
                    if url.scheme != "https":
                        return 0, b"", None
                    continue
                body = await resp.content.read(50 * 1024 + 1)
                return resp.status, body, resp.headers.get("Cache-Control")
        return 0, b"", None

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        authenticated: bool = True,
        consume: Consume | None = None,
    ) -> Any:
        """Send one request and return the parsed JSON answer (or, with `consume`, what it
        returns for a 2xx response it reads itself: a streamed media answer).

        `path` is the raw path (parameters already percent-encoded, see `federation_path`);
        `query` values are encoded here. Raises FederationError on a non-2xx answer,
        DestinationRefused when policy forbids the destination, DestinationUnreachable otherwise.
        """
        method = method.upper()
        if not path.startswith("/") or not _PATH_CHARS.fullmatch(path):
            raise ValueError(f"path must be a raw path with its parameters percent-encoded "
                             f"(see federation_path): {path!r}")
        try:
            parse_server_name(destination)
        except ValueError as exc:
            raise DestinationRefused(str(exc)) from None
        qs = encode_query(query)
        uri = path + ("?" + qs if qs else "")
        payload = encode_canonical_json(body) if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if authenticated:
            headers["Authorization"] = build_authorization(
                method, uri, self.server_name, destination, self.signing_key, body)
        timeout = max(0.1, min(timeout, MAX_TIMEOUT))
        try:
            return await asyncio.wait_for(
                self._send(destination, method, uri, headers, payload, timeout, consume), timeout + 1.0)
        except asyncio.TimeoutError:
            raise DestinationUnreachable(f"{method} {path} to {destination} timed out after {timeout:.0f}s") from None

    async def _send(self, destination: str, method: str, uri: str, headers: dict[str, str],
                    payload: bytes | None, timeout: float, consume: Consume | None = None) -> Any:
        targets = await self.resolver.resolve(destination)
        last_error: Exception | None = None
        for target in targets:
            self._check_literal(target.host)
            try:
                return await self._send_to(target, method, uri, headers, payload, timeout, consume)
            except AddressRefused as exc:
                raise DestinationRefused(f"federation to {destination} is refused: {exc}") from None
            except aiohttp.ClientConnectorError as exc:
                cause = exc.os_error if hasattr(exc, "os_error") else None
                if isinstance(cause, AddressRefused) or isinstance(exc.__cause__, AddressRefused):
                    raise DestinationRefused(f"federation to {destination} is refused: {cause}") from None
                last_error = exc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last_error = exc
            log.debug("federation %s %s via %s:%d failed: %s", method, destination, target.host,
                      target.port, last_error)
        raise DestinationUnreachable(f"{destination} unreachable: {last_error}")

    async def _send_to(self, target: Target, method: str, uri: str, headers: dict[str, str],
                       payload: bytes | None, timeout: float, consume: Consume | None = None) -> Any:
        session = self._get_session()
        url = yarl.URL(f"https://{_url_host(target.host)}:{target.port}{uri}", encoded=True)
        request_headers = dict(headers, Host=target.host_header)
        kwargs: dict[str, Any] = {}
        if target.tls_name != target.host:
            kwargs["server_hostname"] = target.tls_name
        async with session.request(
            method, url, data=payload, headers=request_headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(CONNECT_TIMEOUT, timeout)), **kwargs,
        ) as resp:
            if consume is not None and 200 <= resp.status < 300:
                return await consume(resp)
            if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
                raise FederationError(resp.status, None, f"response over {MAX_RESPONSE_BYTES} bytes")
            raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
            if len(raw) > MAX_RESPONSE_BYTES:
                raise FederationError(resp.status, None, f"response over {MAX_RESPONSE_BYTES} bytes")
            status = resp.status
        try:
            parsed = parse_json(raw) if raw.strip() else None
        except CanonicalJSONError:
            parsed = raw.decode("utf-8", "replace")[:1000]
            if 200 <= status < 300:
                raise FederationError(status, "M_NOT_JSON", parsed) from None
        if not 200 <= status < 300:
            errcode = parsed.get("errcode") if isinstance(parsed, dict) else None
            raise FederationError(status, errcode if isinstance(errcode, str) else None, parsed)
        return parsed
