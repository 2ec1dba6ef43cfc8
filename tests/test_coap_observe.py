"""Observe (RFC 7641) on sync and on a room's messages, with aiocoap's client, coap-client and a
bare UDP socket (to see the notification's message type): events sent over HTTP or CoAP reach
the observing device."""
from __future__ import annotations

import asyncio
import io
import select
import socket
import subprocess
import time
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.types import Type

from tests.support.gateway import GatewayProcess

WAIT = 10.0  # upper bound for an awaited notification; the tests never sleep


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> dict[str, Any]:
    token = gateway.device_token("alice", "observer")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "obs"}, token=token)
    assert status == 200, body
    return {"gw": gateway, "token": token, "room_id": body["room_id"],
            "base": f"coap://127.0.0.1:{gateway.coap_port}"}


def http_send(hub: dict[str, Any], body: str) -> str:
    status, answer = hub["gw"].request(
        "PUT", f"/_matrix/client/v3/rooms/{hub['room_id']}/send/m.room.message/{body}",
        {"msgtype": "m.text", "body": body}, token=hub["token"])
    assert status == 200, answer
    return answer["event_id"]


def timeline_ids(sync_body: dict[str, Any], room_id: str) -> list[str]:
    room = sync_body.get("rooms", {}).get("join", {}).get(room_id)
    return [ev["event_id"] for ev in room["timeline"]["events"]] if room else []


async def test_observe_sync_gets_events_from_http_and_coap(hub: dict[str, Any]) -> None:
    ctx = await aiocoap.Context.create_client_context()
    try:
        msg = aiocoap.Message(code=aiocoap.GET, uri=f"{hub['base']}/7?fi=%7B%7D", observe=0)
        msg.opt.add_option(aiocoap.optiontypes.OpaqueOption(256, hub["token"].encode()))
        request = ctx.request(msg)
        first = await request.response
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None
        since = cbor2.loads(first.payload)["next_batch"]
        notifications = request.observation.__aiter__()

        sent = http_send(hub, "over-http")
        note = await asyncio.wait_for(notifications.__anext__(), WAIT)
        body = cbor2.loads(note.payload)
        assert sent in timeline_ids(body, hub["room_id"])
        assert body["next_batch"] != since

        # an event that came in over CoAP (PUT) reaches the observer as well, with its float
        put = await ctx.request(aiocoap.Message(
            code=aiocoap.PUT, uri=f"{hub['base']}/_m/c/v3/r/%23obs:localhost/s/org.example.t/t1?a={hub['token']}",
            payload=cbor2.dumps({"t": 21.5}))).response
        coap_event = cbor2.loads(put.payload)["event_id"]
        seen: list[dict[str, Any]] = []
        while coap_event not in [ev["event_id"] for ev in seen]:
            note = await asyncio.wait_for(notifications.__anext__(), WAIT)
            room = cbor2.loads(note.payload)["rooms"]["join"][hub["room_id"]]
            seen += room["timeline"]["events"]
        assert [ev for ev in seen if ev["event_id"] == coap_event][0]["content"] == {"t": 21.5}
        request.observation.cancel()
    finally:
        await ctx.shutdown()


async def test_observe_room_messages(hub: dict[str, Any]) -> None:
    ctx = await aiocoap.Context.create_client_context()
    try:
        msg = aiocoap.Message(code=aiocoap.GET, observe=0,
                              uri=f"{hub['base']}/_m/c/v3/r/%23obs:localhost/m?a={hub['token']}&l=1")
        request = ctx.request(msg)
        first = await request.response
        assert first.code == aiocoap.CONTENT and len(cbor2.loads(first.payload)["chunk"]) == 1
        notifications = request.observation.__aiter__()
        sent = [http_send(hub, f"room-{i}") for i in range(3)]
        got: list[str] = []
        while len(got) < 3:
            note = await asyncio.wait_for(notifications.__anext__(), WAIT)
            got += [ev["event_id"] for ev in cbor2.loads(note.payload)["chunk"]]
        assert got == sent  # in order, each once
        request.observation.cancel()
    finally:
        await ctx.shutdown()


async def test_observe_is_refused_without_access(hub: dict[str, Any]) -> None:
    ctx = await aiocoap.Context.create_client_context()
    try:
        request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"{hub['base']}/7?a=wrongtoken", observe=0))
        first = await request.response
        assert first.code == aiocoap.UNAUTHORIZED and first.opt.observe is None
        assert cbor2.loads(first.payload)["errcode"] == "M_UNKNOWN_TOKEN"
    finally:
        await ctx.shutdown()


def test_coap_client_observe_sees_an_http_event(hub: dict[str, Any]) -> None:
    """libcoap's coap-client -s: notifications are written back to back to stdout."""
    proc = subprocess.Popen(["coap-client-notls", "-m", "get", "-s", "20", "-o", "-",
                             f"{hub['base']}/_m/c/v3/sy?a={hub['token']}&fi=%7B%7D"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        buffer = b""
        items: list[dict[str, Any]] = []
        sent: str | None = None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buffer += chunk
            items, buffer = _cbor_items(buffer, items)
            if items and sent is None:
                sent = http_send(hub, "seen-by-coap-client")  # after the first answer: a change
            if sent and any(sent in timeline_ids(item, hub["room_id"]) for item in items[1:]):
                break
        assert sent is not None and any(sent in timeline_ids(item, hub["room_id"]) for item in items[1:]), items
        assert len(cbor2.dumps(items[0])) > 1024  # the first answer came block-wise (RFC 7959 §2.6)
    finally:
        proc.kill()
        proc.wait()


def _cbor_items(buffer: bytes, items: list[Any]) -> tuple[list[Any], bytes]:
    """Decode whole CBOR items from the front of buffer; keep a partial tail."""
    stream = io.BytesIO(buffer)
    while stream.tell() < len(buffer):
        start = stream.tell()
        try:
            items.append(cbor2.CBORDecoder(stream).decode())
        except (cbor2.CBORDecodeEOF, EOFError):
            return items, buffer[start:]
    return items, b""


def test_notifications_are_confirmable(hub: dict[str, Any]) -> None:
    """A bare UDP client: the notification for a new event is a CON message, which we ACK.

    Another observer dies first without a word: the ICMP refusal its next notification draws
    must not cancel this observation (frontends/coap/stale_refusal.py)."""
    dead = subprocess.Popen(["coap-client-notls", "-m", "get", "-s", "20", "-o", "-",
                             f"{hub['base']}/7?a={hub['token']}&fi=%7B%7D"], stdout=subprocess.PIPE)
    assert dead.stdout is not None
    items: list[Any] = []
    buffer = b""
    while len(items) < 2:  # its first answer, then one notification: an established observer
        assert select.select([dead.stdout], [], [], WAIT)[0]
        buffer += dead.stdout.read1(65536)
        items, buffer = _cbor_items(buffer, items)
        if len(items) == 1 and not buffer:
            http_send(hub, "before-the-observer-dies")
    dead.kill()
    dead.wait()
    dead.stdout.close()
    request = _raw(Type.CON, 4242, aiocoap.GET, token=b"obs1", observe=0, uri_path=("_m", "c", "v3", "sy"),
                   uri_query=(f"a={hub['token']}", "fi={}"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", hub["gw"].coap_port))
        sock.send(request.encode())
        first = _receive_response(sock, b"obs1")
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None
        sent = http_send(hub, "confirmable")
        while True:
            note = _receive_response(sock, b"obs1")
            if sent in timeline_ids(cbor2.loads(note.payload), hub["room_id"]):
                break
        assert note.mtype == Type.CON and note.opt.observe > first.opt.observe
        # reset: the observer goes away; the hub forgets the observation
        sock.send(_raw(Type.RST, note.mid, aiocoap.EMPTY).encode())


def _receive_response(sock: socket.socket, token: bytes) -> aiocoap.Message:
    """Next response with our token; ACKs each CON, skips empty ACKs (separate responses)."""
    while True:
        msg = aiocoap.Message.decode(sock.recv(65536))
        print("RECV", msg, msg.opt.observe, msg.opt.block2, len(msg.payload))
        if msg.mtype == Type.CON:
            sock.send(_raw(Type.ACK, msg.mid, aiocoap.EMPTY).encode())
        if msg.token == token and msg.code != aiocoap.EMPTY:
            return msg


def _raw(mtype: Type, mid: int, code: Any, token: bytes = b"", **options: Any) -> aiocoap.Message:
    """A message with type, id and token chosen by the test (we are the message layer here)."""
    msg = aiocoap.Message(code=code, **options)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg
