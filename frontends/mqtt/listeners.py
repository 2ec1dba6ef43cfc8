"""The broker's sockets: MQTT over TCP always; over TLS and WebSockets (plain or TLS) only when
configured (security by default). Each accepted connection gets a fresh protocol from the
factory the broker passes (protocol.py's ClientProtocol); the WebSocket listener hands it the
same way (websocket.py)."""
from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from . import tls, websocket
from .settings import BrokerSettings

if TYPE_CHECKING:
    from .protocol import ClientProtocol


class Listeners:
    def __init__(self, settings: BrokerSettings, server_name: str,
                 protocol_factory: "Callable[[], ClientProtocol]") -> None:
        self.settings = settings
        self.server_name = server_name
        self.protocol_factory = protocol_factory
        self._servers: list[asyncio.base_events.Server] = []
        self._ws_runner: web.AppRunner | None = None
        self._ws_sites: list[web.TCPSite] = []
        self.bound_ports: list[int] = []
        self.listeners: list[str] = []  # "name=url" items for the ready line

    async def start(self) -> None:
        settings = self.settings
        host = settings.host
        loop = asyncio.get_running_loop()
        factory = self.protocol_factory
        server = await loop.create_server(factory, host, settings.port, reuse_address=True)
        self._servers.append(server)
        self._bound("mqtt", "mqtt", server.sockets[0].getsockname()[1])
        context = None
        if settings.tls_enabled or settings.wss_enabled:
            cert, key = await tls.certificate_paths(Path(settings.data_dir) if settings.data_dir else None,
                                                    self.server_name, settings.tls_cert, settings.tls_key)
            context = tls.server_context(cert, key)
        if settings.tls_enabled:
            secure = await loop.create_server(factory, host, settings.tls_port, ssl=context, reuse_address=True)
            self._servers.append(secure)
            self._bound("mqtts", "mqtts", secure.sockets[0].getsockname()[1])
        if settings.ws_enabled or settings.wss_enabled:
            app = websocket.make_app(factory, settings.ws_path, settings.limits.max_packet_size)
            self._ws_runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
            await self._ws_runner.setup()
        if settings.ws_enabled:
            await self._ws_listen("mqtt-ws", "ws", settings.ws_port, None)
        if settings.wss_enabled:
            await self._ws_listen("mqtt-wss", "wss", settings.wss_port, context)

    async def _ws_listen(self, name: str, scheme: str, port: int, context: "ssl.SSLContext | None") -> None:
        assert self._ws_runner is not None
        site = web.TCPSite(self._ws_runner, self.settings.host, port, reuse_address=True, ssl_context=context)
        await site.start()
        self._ws_sites.append(site)
        sockets = getattr(site._server, "sockets", None) or []
        self._bound(name, scheme, sockets[0].getsockname()[1] if sockets else port, self.settings.ws_path)

    def _bound(self, name: str, scheme: str, port: int, path: str = "") -> None:
        self.bound_ports.append(port)
        self.listeners.append(f"{name}={scheme}://{self.settings.host}:{port}{path}")

    def describe(self) -> str:
        return " ".join(self.listeners)

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        for site in self._ws_sites:
            await site.stop()  # stop accepting; open WebSockets close with their clients

    async def close(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._ws_runner is not None:
            await self._ws_runner.cleanup()
