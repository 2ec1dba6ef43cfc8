"""The HTTP listener's defences at the connection level (issue 20, R2/R3).

- Idle connections close: aiohttp's `keepalive_timeout` runs from the moment a connection is
  accepted until it has sent whole request headers (and again between requests), and bytes
  trickling in do not extend it: a connection that sends nothing, or a slowloris that never
  finishes its headers, is closed after `idle_timeout` seconds. aiohttp's own default is an hour.
- At most `max_per_address` connections per client address (an IPv6 /64 counts as one): the
  next one gets a 429 M_LIMIT_EXCEEDED and is closed at once, so one host cannot hold the hub's
  descriptors; the others keep being served, and the address gets its room back as its
  connections close.
- A client's malformed request (bad bytes in a header, TLS on the plain port) is a 400 from
  aiohttp and one short log line a minute, not a traceback each time.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import errors
from ..log_limit import LogLimiter
from ..ratelimit import address_key
from .request import error_answer

log = logging.getLogger(__name__)

# Written before any HTTP parsing (the connection is refused at accept): the bytes are built once,
# from the same error mapping as every other answer.
_REFUSED = error_answer(errors.MatrixError(429, "M_LIMIT_EXCEEDED", "Too many connections from this address",
                                           retry_after_ms=1000))
_REFUSAL_BODY = json.dumps(_REFUSED.body).encode()
REFUSAL = (b"HTTP/1.1 %d Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
           b"Content-Length: %d\r\n\r\n" % (_REFUSED.status, len(_REFUSAL_BODY)) + _REFUSAL_BODY)


class ConnectionCap:
    """Open connections per client address, against a maximum. Pure bookkeeping."""

    def __init__(self, max_per_address: int) -> None:
        self.max_per_address = max_per_address
        self.open: dict[str, int] = {}

    def admit(self, key: str) -> bool:
        """Count one more connection from `key`, unless it already has the maximum."""
        count = self.open.get(key, 0)
        if self.max_per_address > 0 and count >= self.max_per_address:
            return False
        self.open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.open.get(key, 0) - 1
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)


class _CappedProtocol(asyncio.Protocol):
    """aiohttp's request handler behind a door: admitted connections are handed to it whole."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap, refusals: LogLimiter) -> None:
        self.inner = inner
        self.cap = cap
        self.refusals = refusals
        self.key: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        key = address_key(str(peer[0])) if peer else "?"
        if not self.cap.admit(key):
            self.refusals.log(log, logging.WARNING, key, "HTTP: %s already has %d connections open, refusing more",
                              key, self.cap.max_per_address)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL)
            transport.close()
            return
        self.key = key
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.key is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.key is not None else None

    def pause_writing(self) -> None:
        if self.key is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.key is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None:
            self.cap.release(self.key)
            self.key = None
            self.inner.connection_lost(exc)


class _ClientErrorLog(logging.LoggerAdapter):
    """aiohttp's server logger, except that a client's malformed request is one short line."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.limiter = LogLimiter(60.0)

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = (exc_info.message or "").strip().splitlines()[:1] or [type(exc_info).__name__]
            self.limiter.log(self.logger, logging.WARNING, "bad request", "HTTP: bad request from %s answered 400: %s",
                             args[0] if args else "?", reason[0][:80])
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpListener:
    """An aiohttp application on one capped TCP server: the client-server API's listener, and
    (with TLS) the federation one."""

    def __init__(self, app: web.Application, host: str, port: int, idle_timeout: float,
                 max_per_address: int, ssl_context: Any = None) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.cap = ConnectionCap(max_per_address)
        self._refusals = LogLimiter(60.0)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handle_signals=False,
                                    keepalive_timeout=idle_timeout,
                                    logger=_ClientErrorLog(logging.getLogger("aiohttp.server")))
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (the configured one, or the one picked for port 0)."""
        await self.runner.setup()
        handler_factory = self.runner.server
        assert handler_factory is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CappedProtocol(handler_factory(), self.cap, self._refusals), self.host, self.port,
            ssl=self.ssl_context, reuse_address=True, backlog=128,
            # with TLS the handshake comes first, and aiohttp sees the connection only after it
            ssl_handshake_timeout=self.idle_timeout if self.ssl_context is not None else None)
        sockets: tuple[Any, ...] = tuple(self._server.sockets or ())
        return int(sockets[0].getsockname()[1]) if sockets else self.port

    async def stop(self) -> None:
        """Stop accepting, then let aiohttp finish in-flight requests and close the rest."""
        if self._server is not None:
            self._server.close()
        await self.runner.cleanup()
