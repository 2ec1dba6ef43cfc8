"""A logged-out access token stops working everywhere at once (issue 20, L2): live MQTT
connections opened with it are closed (MQTT 5: DISCONNECT 0x98 Administrative action, as
mosquitto does when credentials go), nothing they send afterwards is stored, a resumed session
with it is refused, and CoAP observations made with it end with a final 4.01 notification."""
from __future__ import annotations

import asyncio
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import paho.mqtt.client as mqtt
import pytest
from aiocoap.numbers.types import Type

from matrix_core import errors
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.service.accounts import Requester, TokensRevoked
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_broker import _connect_v5, _publish_v5, room_events
from tests.test_mqtt_peers import MosquittoSub, Paho, RawClient, mosquitto_pub

WAIT = 10.0
V5 = mqtt.MQTTv5


def logout(gw: GatewayProcess, token: str, everywhere: bool = False) -> None:
    status, body = gw.request("POST", "/_matrix/client/v3/logout" + ("/all" if everywhere else ""), {}, token=token)
    assert status == 200, body
    status, body = gw.request("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 401, body


def test_logout_closes_mqtt_connections_of_that_token_only(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    token = gateway.device_token("alice", "rev-sensor")
    reader = gateway.login("alice", PASSWORD)
    mosquitto_pub(port, "alice", PASSWORD, "rev/dev/x", "room exists", 1)
    paho = Paho(port, "alice", token, "rev-paho", protocol=V5)
    bystander = Paho(port, "alice", PASSWORD, "rev-bystander", protocol=V5)  # the password still works
    sub = MosquittoSub(port, "alice", token, "rev/dev/#", 5, "-c", "-i", "rev-mosq")  # a persistent 3.1.1 session
    raw = RawClient(port)
    try:
        assert paho.connect()[1] == 0
        assert bystander.connect()[1] == 0
        bystander.subscribe("rev/dev/#", 1)
        raw.send(_connect_v5("rev-raw", "alice", token))
        assert raw.read_packet()[:1] == b"\x20"
        raw.send(_publish_v5("rev/dev/x", b"before logout", 1))
        assert raw.read_packet()[:1] == b"\x40"

        logout(gateway, token)

        assert paho.disconnects.get(timeout=WAIT) == 0x98  # Administrative action
        rest = raw.recv_until_closed()
        assert rest[:1] == b"\xe0" and rest[2] == 0x98, rest
        try:  # whatever the client sends now goes nowhere
            raw.send(_publish_v5("rev/dev/x", b"after logout", 2))
        except OSError:
            pass
        # mosquitto_sub reconnects to resume its persistent session: refused (bad credentials)
        sub.proc.wait(timeout=WAIT)
        assert sub.proc.returncode != 0
        assert sub.proc.stderr is not None and "refused" in sub.proc.stderr.read().lower()
        resumed = Paho(port, "alice", token, "rev-paho", protocol=V5, clean=False, session_expiry=60)
        assert resumed.connect()[1] == 0x86  # Bad user name or password
        resumed.disconnect()

        bystander.publish("rev/dev/x", b"marker", qos=1)  # the bystander is still served
        assert bystander.get().payload == b"before logout"
        assert bystander.get().payload == b"marker"
        texts = [e["content"]["mqtt"]["payload"]["text"]
                 for e in room_events(gateway, reader, "#mqtt/rev/dev:localhost") if e["type"] == "m.room.message"]
        assert "before logout" in texts and "marker" in texts and "after logout" not in texts
    finally:
        raw.close()
        paho.disconnect()
        bystander.disconnect()
        if sub.proc.poll() is None:
            sub.proc.kill()
        sub.proc.communicate()


def test_logout_all_closes_every_token_connection_but_no_will_fires(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    tokens = [gateway.device_token("bob", f"rev-all-{i}") for i in range(2)]
    mosquitto_pub(port, "bob", PASSWORD, "revall/dev/status", "online", 1)
    watcher = Paho(port, "bob", PASSWORD, "revall-watcher", protocol=V5)
    clients = [Paho(port, "bob", token, f"revall-{i}", protocol=V5) for i, token in enumerate(tokens)]
    try:
        watcher.connect()
        watcher.subscribe("revall/dev/#", 1)
        for client in clients:
            client.client.will_set("revall/dev/status", b"gone", 1)
            assert client.connect()[1] == 0
        logout(gateway, tokens[0], everywhere=True)
        assert [client.disconnects.get(timeout=WAIT) for client in clients] == [0x98, 0x98]
        mosquitto_pub(port, "bob", PASSWORD, "revall/dev/status", "marker", 1)
        assert watcher.get().payload == b"marker"  # a will (sent with a revoked token) would come first
    finally:
        watcher.disconnect()
        for client in clients:
            client.disconnect()


def _raw_coap(mtype: Type, mid: int, code: Any, token: bytes = b"", **options: Any) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, **options)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg


def _next_response(sock: socket.socket, token: bytes) -> aiocoap.Message:
    """The next response carrying our token; each CON is ACKed, empty ACKs are skipped."""
    while True:
        msg = aiocoap.Message.decode(sock.recv(65536))
        if msg.mtype == Type.CON:
            sock.send(_raw_coap(Type.ACK, msg.mid, aiocoap.EMPTY).encode())
        if msg.token == token and msg.code != aiocoap.EMPTY:
            return msg


async def test_logout_ends_coap_observations_at_once(gateway: GatewayProcess) -> None:
    token = gateway.device_token("alice", "rev-coap")
    other = gateway.device_token("alice", "rev-coap-other")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "revobs"}, token=other)
    assert status == 200, body
    room = urllib.parse.quote("#revobs:localhost", safe="")
    path = ("_m", "c", "v3", "r", "#revobs:localhost", "m")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", gateway.coap_port))
        sock.send(_raw_coap(Type.CON, 7001, aiocoap.GET, token=b"rev1", observe=0, uri_path=path,
                            uri_query=(f"a={token}", "l=1")).encode())
        first = _next_response(sock, b"rev1")
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None

        ctx = await aiocoap.Context.create_client_context()
        try:
            watch = ctx.request(aiocoap.Message(code=aiocoap.GET, observe=0,
                                                uri=f"coap://127.0.0.1:{gateway.coap_port}/_m/c/v3/r/{room}/m"
                                                    f"?a={other}&l=1"))
            assert (await watch.response).code == aiocoap.CONTENT
            notes = watch.observation.__aiter__()

            await asyncio.to_thread(logout, gateway, token)
            last = await asyncio.to_thread(_next_response, sock, b"rev1")  # before any new event
            assert last.code == aiocoap.UNAUTHORIZED, last
            assert cbor2.loads(last.payload)["errcode"] == "M_UNKNOWN_TOKEN"

            status, sent = gateway.request("POST", f"/_matrix/client/v3/rooms/{room}/send/m.room.message",
                                           {"msgtype": "m.text", "body": "after logout"}, token=other)
            assert status == 200, sent
            note = await asyncio.wait_for(notes.__anext__(), WAIT)  # a valid observer is told
            assert [ev["event_id"] for ev in cbor2.loads(note.payload)["chunk"]] == [sent["event_id"]]
            sock.settimeout(0.5)
            try:
                extra = aiocoap.Message.decode(sock.recv(65536))
            except socket.timeout:
                extra = None
            assert extra is None, extra  # the ended observation gets nothing more
            watch.observation.cancel()
        finally:
            await ctx.shutdown()



async def test_accounts_tell_listeners_exactly_the_revoked_tokens(tmp_path: Path) -> None:
    """The core's revocation hook, without a hub: each listener gets (user, device or None,
    tokens) after the COMMIT; a token lookup reading while a logout commits never returns (nor
    caches) the revoked token."""
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        tokens = [await hs.db.write(lambda c, d=d: account_rows.insert_device_token(c, "@a:hub", d))
                  for d in ("D1", "D1", "D2")]
        told: list[TokensRevoked] = []
        remove = hs.accounts.on_revoked(told.append)

        def broken(revoked: TokensRevoked) -> None:
            raise RuntimeError("a broken front end")

        hs.accounts.on_revoked(broken)  # a broken listener does not keep the others from being told

        first = await hs.accounts.authenticate(tokens[0])
        await hs.accounts.logout(first)
        assert told == [TokensRevoked("@a:hub", "D1", frozenset([tokens[0]]))]
        assert (await hs.accounts.authenticate(tokens[1])).device_id == "D1"  # the device's other token works

        # A lookup whose read saw the token before the logout's COMMIT but returns after it:
        real_fetchone = hs.db.fetchone
        revoked_now = asyncio.Event()

        async def slow_fetchone(sql: str, params: Any = ()) -> Any:
            row = await real_fetchone(sql, params)
            await revoked_now.wait()
            hs.db.fetchone = real_fetchone  # type: ignore[method-assign]
            return row

        hs.db.fetchone = slow_fetchone  # type: ignore[method-assign]
        lookup = asyncio.ensure_future(hs.accounts.authenticate(tokens[2]))
        await asyncio.sleep(0)  # the lookup's read has started
        await hs.accounts.logout_all(await hs.accounts.authenticate(tokens[1]))
        revoked_now.set()
        assert told[1] == TokensRevoked("@a:hub", None, frozenset(tokens[1:]))
        for token in tokens:
            with pytest.raises(errors.MatrixError):
                await hs.accounts.authenticate(token)
        with pytest.raises(errors.MatrixError):
            await lookup
        remove()
        await hs.accounts.logout_all(Requester("@a:hub", "D3", False, "x"))
        assert len(told) == 2  # unregistered
    finally:
        await hs.stop()
