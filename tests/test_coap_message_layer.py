"""frontends.coap.message_layer inside a real aiocoap udp6 server context, driven by a bare UDP
client: piggybacked answers, deduplication, empty ACK + separate response, NON, fall-through.

The resource is a stub whose answers wait on a future the test releases, so "slow" is a state
the test controls, not a timing. Every step waits for a datagram or for the server to have
received one (a hook on the interface), never for time to pass.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiocoap
import pytest
from aiocoap import resource

from frontends.coap import message_layer, wire
from frontends.coap.server import Answer
from tests.support.gateway import free_port

WAIT = 10.0
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Stub(resource.Resource):
    """answer(): the hot path (waits for `gate` when set); render_*: aiocoap's path."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.called = asyncio.Event()
        self.gate: asyncio.Future[None] | None = None
        self.aiocoap_posts = 0

    async def answer(self, code: int, path: Any, query: Any, token: Any, accept: Any, cf: Any,
                     payload: bytes, remote: Any = None, client: str = "coap") -> Answer:
        self.calls.append((code, list(path), list(query), token, accept, cf, payload))
        self.called.set()
        if self.gate is not None:
            await self.gate
        return Answer(68, b"answer %d" % len(self.calls), 60, max_age=3 if code == 3 else None)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b"from aiocoap")

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.aiocoap_posts += 1
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"aiocoap post")


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)

    async def next(self) -> aiocoap.Message:
        return aiocoap.Message.decode(await asyncio.wait_for(self.inbox.get(), WAIT))


class Server:
    def __init__(self, ctx: Any, stub: Stub, layer: message_layer.MessageLayer, port: int) -> None:
        self.ctx, self.stub, self.layer, self.port = ctx, stub, layer, port
        self.received = 0
        self._seen = asyncio.Condition()
        inner = layer.interface.datagram_msg_received

        def spy(*args: Any) -> None:  # every datagram the interface receives, counted once handled
            inner(*args)
            self.received += 1
            asyncio.get_running_loop().create_task(self._notify())

        layer.interface.datagram_msg_received = spy

    async def _notify(self) -> None:
        async with self._seen:
            self._seen.notify_all()

    async def handled(self, count: int) -> None:
        async with self._seen:
            await asyncio.wait_for(self._seen.wait_for(lambda: self.received >= count), WAIT)


@pytest.fixture
async def server():
    stub = Stub()
    port = free_port(socket.SOCK_DGRAM)
    ctx = await aiocoap.Context.create_server_context(stub, bind=("127.0.0.1", port), transports=["udp6"])
    layers = message_layer.install(ctx, stub, cache_size=8)
    assert len(layers) == 1
    yield Server(ctx, stub, layers[0], port)
    await layers[0].close()
    await ctx.shutdown()


@pytest.fixture
async def peer(server: Server):
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Peer, remote_addr=("127.0.0.1", server.port))
    protocol.send = transport.sendto  # type: ignore[attr-defined]
    yield protocol
    transport.close()


def post(mid: int, token: bytes = b"tk", mtype: int = wire.CON, code: int = 2, body: bytes = b"\xa1at\x01",
         extra: list[tuple[int, bytes]] = ()) -> bytes:
    options = [(11, b"_m"), (11, b"r"), (12, b"<"), (15, b"a=TOKEN"), *extra]
    return wire.encode(mtype, code, mid, token, sorted(options, key=lambda o: o[0]), body)


async def test_con_is_answered_piggybacked_and_a_retransmission_gets_the_same_datagram(server, peer) -> None:
    peer.send(post(0x1234, b"t1"))
    first = await peer.inbox.get()
    msg = aiocoap.Message.decode(first)
    assert (msg.mtype, msg.mid, msg.token, msg.code) == (aiocoap.ACK, 0x1234, b"t1", aiocoap.CHANGED)
    assert msg.payload == b"answer 1" and msg.opt.content_format == 60
    assert server.stub.calls == [(2, ["_m", "r"], ["a=TOKEN"], None, None, 60, b"\xa1at\x01")]
    peer.send(post(0x1234, b"t1"))  # the ACK was "lost": the device sends the request again
    assert await asyncio.wait_for(peer.inbox.get(), WAIT) == first
    assert len(server.stub.calls) == 1  # answered from memory, not a second write
    assert server.layer.handled == 1


async def test_options_reach_the_resource_and_answer_options_come_back(server, peer) -> None:
    peer.send(post(7, b"", code=3, extra=[(17, b"\x32"), (256, b"opt-token"), (3, b"hub")]))
    msg = await peer.next()
    assert msg.code == aiocoap.CHANGED and msg.opt.max_age == 3 and msg.token == b""
    assert server.stub.calls == [(3, ["_m", "r"], ["a=TOKEN"], b"opt-token", 50, 60, b"\xa1at\x01")]


async def test_duplicate_while_answering_gets_nothing_then_the_answer(server, peer) -> None:
    server.layer.ack_delay = 3600  # the answer stays "quick" however long the test takes
    server.stub.gate = asyncio.get_running_loop().create_future()
    peer.send(post(1, b"t"))
    await server.stub.called.wait()
    peer.send(post(1, b"t"))  # retransmitted while the first is still being answered
    await server.handled(2)
    assert peer.inbox.empty()
    server.stub.gate.set_result(None)
    msg = await peer.next()  # the first datagram after that is the piggybacked answer
    assert (msg.mtype, msg.mid, msg.code) == (aiocoap.ACK, 1, aiocoap.CHANGED)
    assert len(server.stub.calls) == 1


async def test_slow_answer_is_empty_ack_then_confirmable_separate_response(server, peer) -> None:
    server.stub.gate = asyncio.get_running_loop().create_future()
    peer.send(post(0xAB, b"slow"))
    ack = await peer.next()  # EMPTY_ACK_DELAY passed with no answer
    assert (ack.mtype, ack.code, ack.mid, ack.token) == (aiocoap.ACK, aiocoap.EMPTY, 0xAB, b"")
    peer.send(post(0xAB, b"slow"))  # the empty ACK was lost: the same empty ACK again
    again = await peer.next()
    assert (again.mtype, again.code, again.mid) == (aiocoap.ACK, aiocoap.EMPTY, 0xAB)

    server.stub.gate.set_result(None)
    separate = await peer.next()
    assert (separate.mtype, separate.code, separate.token) == (aiocoap.CON, aiocoap.CHANGED, b"slow")
    assert separate.payload == b"answer 1" and separate.opt.content_format == 60
    assert server.layer.manager._active_exchanges  # aiocoap retransmits it until ACKed
    peer.send(wire.empty(wire.ACK, separate.mid))
    received = server.received
    await server.handled(received + 1)
    assert not server.layer.manager._active_exchanges  # the ACK ended aiocoap's exchange

    peer.send(post(0xAB, b"slow"))  # a late copy of the request: acknowledged, not stored again
    late = await peer.next()
    assert (late.mtype, late.code, late.mid) == (aiocoap.ACK, aiocoap.EMPTY, 0xAB)
    assert len(server.stub.calls) == 1


async def test_non_is_answered_non_and_a_duplicate_non_is_ignored(server, peer) -> None:
    peer.send(post(0x55, b"n", mtype=wire.NON))
    msg = await peer.next()
    assert (msg.mtype, msg.code, msg.token, msg.payload) == (aiocoap.NON, aiocoap.CHANGED, b"n", b"answer 1")
    peer.send(post(0x55, b"n", mtype=wire.NON))
    peer.send(post(0x56, b"c"))
    msg = await peer.next()  # the next datagram answers the CON: the duplicate NON drew nothing
    assert (msg.mtype, msg.mid, msg.token) == (aiocoap.ACK, 0x56, b"c")
    assert len(server.stub.calls) == 2


async def test_everything_else_is_aiocoaps(server, peer) -> None:
    get = aiocoap.Message(mtype=aiocoap.CON, code=aiocoap.GET, mid=9, token=b"g", uri_path=("x",))
    peer.send(get.encode())
    msg = await peer.next()
    assert (msg.mtype, msg.mid, msg.payload) == (aiocoap.ACK, 9, b"from aiocoap")
    peer.send(wire.empty(wire.CON, 10))  # CoAP ping
    msg = await peer.next()
    assert (msg.mtype, msg.code, msg.mid) == (aiocoap.RST, aiocoap.EMPTY, 10)
    observe = aiocoap.Message(mtype=aiocoap.CON, code=aiocoap.POST, mid=11, token=b"o", observe=0)
    peer.send(observe.encode())
    msg = await peer.next()
    assert msg.payload == b"aiocoap post" and server.stub.aiocoap_posts == 1
    assert server.stub.calls == [] and server.layer.handled == 0


async def test_remembered_answers_are_bounded(server, peer) -> None:
    for mid in range(20):
        peer.send(post(mid, b"b"))
        assert (await peer.next()).mid == mid
    assert 0 < server.layer.remembered() <= 8  # the fixture's cache_size
    peer.send(post(19, b"b"))  # the newest is still remembered
    assert (await peer.next()).payload == b"answer 20"
    assert len(server.stub.calls) == 20
