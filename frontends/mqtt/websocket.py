"""MQTT over WebSockets (MQTT 5.0 section 6, 3.1.1 section 6), on aiohttp.

What paho's `transport="websockets"`, MQTT.js in browsers and Home Assistant speak: an HTTP
upgrade on one path (default `/mqtt`) with the subprotocol `mqtt`, then binary frames carrying
MQTT bytes with any fragmentation (a frame may hold part of a packet or several packets).

Rather than a second broker code path, each WebSocket is presented to the very same
`ClientProtocol` the TCP listener uses, through `WebSocketTransport`, a small stand-in for an
asyncio transport: `write` queues bytes that one writer task sends as binary frames,
`pause_reading` stops taking frames (so the broker's backpressure works the same), and a peer
that does not drain pauses writing. So authentication, sessions, limits and every refusal
behave exactly as on TCP.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import WSCloseCode, WSMsgType, web

if TYPE_CHECKING:
    from .protocol import ClientProtocol

log = logging.getLogger("frontends.mqtt")

SUBPROTOCOLS = ("mqtt", "mqttv3.1")  # "mqttv3.1": what MQTT 3.1 era clients ask for
WRITE_HIGH = 256 * 1024  # bytes queued for a peer before the broker stops sending to it
WRITE_LOW = 64 * 1024
CLOSE_SECONDS = 5.0  # for the last bytes and the closing handshake of a connection that ends


class WebSocketTransport(asyncio.Transport):
    """The parts of an asyncio transport `ClientProtocol` uses, on top of a WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, peername: Any, protocol: "ClientProtocol") -> None:
        super().__init__()
        self._ws = ws
        self._peername = peername
        self._protocol = protocol
        self._buffer = bytearray()
        self._wake = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self._closing = False
        self._write_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peername if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        self._wake.set()
        if not self._write_paused and len(self._buffer) > WRITE_HIGH:
            self._write_paused = True
            self._protocol.pause_writing()

    def close(self) -> None:
        """Send what is queued, then the WebSocket close frame."""
        self._closing = True
        self._wake.set()
        self.reading.set()

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def is_reading(self) -> bool:
        return self.reading.is_set()

    async def write_loop(self) -> None:
        """Everything queued since the last send goes out as one binary frame."""
        ws = self._ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                chunk = bytes(self._buffer)
                self._buffer.clear()
                await ws.send_bytes(chunk)
                if self._write_paused and len(self._buffer) < WRITE_LOW:
                    self._write_paused = False
                    self._protocol.resume_writing()
            if self._closing:
                await ws.close()
                return


def make_app(protocol_factory: "Callable[[], ClientProtocol]", path: str, max_packet: int) -> web.Application:
    """One route: the WebSocket upgrade on *path*; anything else is aiohttp's 404. Each
    WebSocket gets a protocol from *protocol_factory* (the broker's, as its TCP listener does)."""
    app = web.Application(client_max_size=1024)
    app.router.add_get(path, lambda request: serve(protocol_factory, max_packet, request))
    return app


async def serve(protocol_factory: "Callable[[], ClientProtocol]", max_packet: int,
                request: web.Request) -> web.StreamResponse:
    # A frame somewhat over the packet limit still reaches the codec, which refuses the packet
    # from its fixed header with the usual DISCONNECT 0x95; far larger ones aiohttp refuses (1009).
    ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, max_msg_size=2 * max_packet + 16, autoping=True,
                               heartbeat=None, compress=False)
    ready = ws.can_prepare(request)
    if not ready.ok:
        return web.Response(status=400, text="this is an MQTT over WebSocket endpoint: "
                                             "connect with a WebSocket client\n")
    if ready.protocol is None:
        return web.Response(status=400, text="MQTT over WebSocket needs the WebSocket subprotocol 'mqtt'\n")
    await ws.prepare(request)
    peername = request.transport.get_extra_info("peername") if request.transport else None
    protocol = protocol_factory()
    transport = WebSocketTransport(ws, peername, protocol)
    protocol.connection_made(transport)
    writer = asyncio.create_task(transport.write_loop(), name="mqtt-ws-writer")
    try:
        while not transport.is_closing():
            await transport.reading.wait()
            if transport.is_closing():
                break
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                protocol.data_received(msg.data)
            elif msg.type is WSMsgType.TEXT:
                # MQTT-6.0.0-1: any other kind of data frame closes the connection.
                log.info("MQTT WebSocket client from %s sent a text frame: closed", protocol.peer)
                transport.close()
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"MQTT needs binary frames")
                break
            else:  # close, closing, closed, error (including a frame over max_msg_size)
                break
    finally:
        transport.close()  # the writer sends what is queued, then the close frame, and ends
        try:
            await asyncio.wait_for(writer, CLOSE_SECONDS)
        except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError, RuntimeError):
            pass
        protocol.connection_lost(None)
    return ws
