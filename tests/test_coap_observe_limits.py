"""What CoAP Observe may cost (issue 20, R1), against the CLI-started hub with bare UDP clients
(we are the message layer: we choose tokens, ACK or stay silent, and see each datagram's type).

- one client opening many observations holds at most the per-client cap (16): a newer one ends
  its oldest, which gets a final 4.29 without Observe (NON);
- past the hub-wide cap a registration is answered as a plain GET, without Observe (RFC 7641 §4.1);
- a client that stops ACKing is sent one notification at a time and, once it ACKs again, gets one
  notification per observation covering every event, not one per event, with none lost.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.types import Type

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
WAIT = 10.0
PER_CLIENT = 16  # the default coap_max_observations_per_client


def raw(mtype: Type, mid: int, code: Any, token: bytes = b"", **options: Any) -> bytes:
    msg = aiocoap.Message(code=code, **options)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg.encode()


class Device:
    """A bare UDP CoAP client: one socket (one remote endpoint for the hub)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.ack = True
        self.mid = 0
        self.aside: list[aiocoap.Message] = []  # other tokens' messages that came in meanwhile

    def close(self) -> None:
        self.sock.close()

    def observe(self, path: tuple[str, ...], query: tuple[str, ...], token: bytes) -> aiocoap.Message:
        """Register; returns the first answer (a piggybacked or separate response)."""
        self.mid += 1
        self.sock.send(raw(Type.CON, self.mid, aiocoap.GET, token, observe=0, uri_path=path, uri_query=query))
        while True:
            msg = self.receive()
            if msg.token == token and msg.code != aiocoap.EMPTY:
                return msg
            if msg.code != aiocoap.EMPTY:
                self.aside.append(msg)

    def next(self, timeout: float = WAIT) -> aiocoap.Message:
        """The next non-empty message, those set aside first."""
        while not self.aside:
            msg = self.receive(timeout)
            if msg.code != aiocoap.EMPTY:
                return msg
        return self.aside.pop(0)

    def receive(self, timeout: float = WAIT) -> aiocoap.Message:
        self.sock.settimeout(timeout)
        msg = aiocoap.Message.decode(self.sock.recv(65536))
        if msg.mtype == Type.CON and self.ack:
            self.sock.send(raw(Type.ACK, msg.mid, aiocoap.EMPTY))
        return msg

    def whole(self, msg: aiocoap.Message, path: tuple[str, ...], query: tuple[str, ...]) -> bytes:
        """The notification's whole payload: the blocks after block 0 by GET (RFC 7959 §2.6)."""
        payload = msg.payload
        block2 = msg.opt.block2
        while block2 is not None and block2.more:
            self.mid += 1
            token = b"blk%d" % self.mid
            self.sock.send(raw(Type.CON, self.mid, aiocoap.GET, token, uri_path=path, uri_query=query,
                               block2=(block2.block_number + 1, False, block2.size_exponent)))
            while True:
                part = self.receive()
                if part.token == token and part.code != aiocoap.EMPTY:
                    break
                if part.code != aiocoap.EMPTY:
                    self.aside.append(part)
            assert part.code == aiocoap.CONTENT, part
            payload += part.payload
            block2 = part.opt.block2
        return payload

    def ack_now(self, msg: aiocoap.Message) -> None:
        self.sock.send(raw(Type.ACK, msg.mid, aiocoap.EMPTY))


def send_text(gw: GatewayProcess, token: str, room_id: str, txn: str) -> str:
    status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
                              {"msgtype": "m.text", "body": txn}, token=token)
    assert status == 200, body
    return body["event_id"]


def messages_path(alias: str) -> tuple[str, ...]:
    return ("_m", "c", "v3", "r", alias, "m")


@pytest.fixture(scope="module")
def room(gateway: GatewayProcess) -> dict[str, Any]:
    token = gateway.device_token("alice", "many-observations")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "caps"}, token=token)
    assert status == 200, body
    return {"token": token, "room_id": body["room_id"], "alias": "#caps:localhost"}


def test_one_client_holds_at_most_its_cap(gateway: GatewayProcess, room: dict[str, Any]) -> None:
    """40 observations with distinct tokens from one device token and one socket: the 24 oldest
    end with a final 4.29 (no Observe, NON); a room message notifies exactly the 16 newest."""
    device = Device(gateway.coap_port)
    try:
        tokens = [b"c%02d" % i for i in range(40)]
        finals: dict[bytes, aiocoap.Message] = {}
        for token in tokens:
            first = device.observe(messages_path(room["alias"]), (f"a={room['token']}", "l=1"), token)
            assert first.code == aiocoap.CONTENT and first.opt.observe is not None, first
        event_id = send_text(gateway, room["token"], room["room_id"], "after-the-cap")
        notified: set[bytes] = set()
        while len(notified) < PER_CLIENT or len(finals) < len(tokens) - PER_CLIENT:
            msg = device.next()
            if msg.code == aiocoap.TOO_MANY_REQUESTS:
                finals[msg.token] = msg
            elif msg.code == aiocoap.CONTENT and msg.opt.observe is not None:
                assert [ev["event_id"] for ev in cbor2.loads(msg.payload)["chunk"]] == [event_id]
                notified.add(msg.token)
        assert notified == set(tokens[-PER_CLIENT:])
        assert set(finals) == set(tokens[:-PER_CLIENT])
        for final in finals.values():
            assert final.opt.observe is None and final.mtype == Type.NON
            assert cbor2.loads(final.payload)["errcode"] == "M_LIMIT_EXCEEDED"
        with pytest.raises(socket.timeout):  # and nothing more: no evicted one is notified
            device.next(timeout=0.5)
    finally:
        device.close()


def test_a_silent_client_gets_one_notification_per_observation(gateway: GatewayProcess,
                                                               room: dict[str, Any]) -> None:
    """8 observations; the device stops ACKing; 10 messages. The hub sends one CON and resends it
    (nothing queued behind it is sent); when the device ACKs again, each observation gets the
    rest in one notification: every event once, in order, and at most 2 notifications each."""
    token = gateway.device_token("alice", "silent")
    device = Device(gateway.coap_port)
    try:
        tokens = [b"s%d" % i for i in range(8)]
        path, query = messages_path(room["alias"]), (f"a={token}", "l=1")
        for t in tokens:
            assert device.observe(path, query, t).code == aiocoap.CONTENT
        device.ack = False
        sent = [send_text(gateway, token, room["room_id"], f"silent-{i}") for i in range(10)]
        first = device.receive()
        assert first.mtype == Type.CON and first.code == aiocoap.CONTENT
        again = device.receive()  # the retransmission, ~2-3 s later: nothing else came meanwhile
        assert (again.mid, again.token) == (first.mid, first.token)
        device.ack_now(first)
        device.ack = True
        seen: dict[bytes, list[str]] = {t: [] for t in tokens}
        count: dict[bytes, int] = {t: 0 for t in tokens}
        seen[first.token] += [ev["event_id"] for ev in cbor2.loads(device.whole(first, path, query))["chunk"]]
        count[first.token] += 1
        while any(len(ids) < len(sent) for ids in seen.values()):
            msg = device.next()
            if msg.code != aiocoap.CONTENT or msg.mid == first.mid:
                continue
            seen[msg.token] += [ev["event_id"] for ev in cbor2.loads(device.whole(msg, path, query))["chunk"]]
            count[msg.token] += 1
        assert all(ids == sent for ids in seen.values()), seen
        assert max(count.values()) <= 2, count  # one per event would be 10
    finally:
        device.close()


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = Path(tmp_path_factory.mktemp("caps")) / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "gateway.toml").write_text("coap_max_observations_per_client = 4\ncoap_max_observations = 6\n")
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("alice", "pw", admin=True)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def test_past_the_hub_cap_a_registration_is_a_plain_get(small_hub: GatewayProcess) -> None:
    """Caps 4 per client, 6 in all: device A holds 4; device B gets 2 observations and then plain
    answers (no Observe); A's are not touched; a message notifies exactly the 6 held."""
    token_a = small_hub.device_token("alice", "a")
    token_b = small_hub.device_token("alice", "b")
    status, body = small_hub.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "full"},
                                     token=token_a)
    assert status == 200, body
    a, b = Device(small_hub.coap_port), Device(small_hub.coap_port)
    try:
        path = messages_path("#full:localhost")
        for i in range(4):
            assert a.observe(path, (f"a={token_a}", "l=1"), b"a%d" % i).opt.observe is not None
        answers = [b.observe(path, (f"a={token_b}", "l=1"), b"b%d" % i) for i in range(4)]
        assert [m.code for m in answers] == [aiocoap.CONTENT] * 4
        assert [m.opt.observe is not None for m in answers] == [True, True, False, False]
        assert "chunk" in cbor2.loads(answers[3].payload)  # the GET's own answer all the same
        event_id = send_text(small_hub, token_a, body["room_id"], "full")
        for device, expected in ((a, {b"a0", b"a1", b"a2", b"a3"}), (b, {b"b0", b"b1"})):
            got = set()
            while got != expected:
                msg = device.next()
                assert msg.code == aiocoap.CONTENT, msg
                assert [ev["event_id"] for ev in cbor2.loads(msg.payload)["chunk"]] == [event_id]
                got.add(msg.token)
        for device in (a, b):
            with pytest.raises(socket.timeout):
                device.next(timeout=0.5)
    finally:
        a.close()
        b.close()
    assert "Traceback" not in small_hub.log_path().read_text()
