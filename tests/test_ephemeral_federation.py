"""Inbound EDUs from a scripted remote server ("evil", signing its own requests): bad `m.typing`
and `m.receipt` EDUs (malformed, about another server's user, about a user not in the room,
for a room the hub does not hold) are dropped with a rate-limited log line and never fail the
transaction (the PDU beside them is accepted); good EDUs reach the hub user's /sync. Our receipts owed to a server that was down
are sent after the hub restarts (private ones never)."""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from aiohttp import web

from matrix_core.federation.client import federation_path
from matrix_core.federation.keys import own_key_document
from matrix_core.federation.tls import make_self_signed, server_context
from tests.support.gateway import GatewayProcess
from tests.test_federation_bad_input import FLAGS, EvilServer

PW = "hub password"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    data = tmp_path / "data"
    gw = GatewayProcess(data, extra_args=FLAGS)
    gw.server_name = f"localhost:{gw.federation_port}"
    data.mkdir(parents=True)
    (data / "gateway.toml").write_text(f'server_name = "{gw.server_name}"\n')
    gw.start()
    gw.add_user("host", PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture()
async def evil(tmp_path: Path) -> AsyncIterator[EvilServer]:
    server = EvilServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


def ephemeral(sync: Any, room_id: str, kind: str) -> list[dict[str, Any]]:
    room = sync["rooms"]["join"].get(room_id, {})
    return [ev["content"] for ev in room.get("ephemeral", {}).get("events", []) if ev["type"] == kind]


async def test_bad_edus_are_dropped_and_good_ones_shown(hub: GatewayProcess, evil: EvilServer) -> None:
    token = hub.login("host", PW)
    host = f"@host:{hub.server_name}"
    status, created = hub.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=token)
    room_id = created["room_id"]
    status, sent = hub.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message",
                               {"msgtype": "m.text", "body": "hi"}, token=token)
    event_id = sent["event_id"]
    eve = f"@eve:{evil.server_name}"
    made = await evil.client.request(hub.server_name, "GET",
                                     federation_path("/_matrix/federation/v1/make_join/{r}/{u}", r=room_id, u=eve),
                                     query={"ver": ["10", "11", "12"]})
    join, join_id = evil.sign(dict(made["event"], origin_server_ts=int(time.time() * 1000)), made["room_version"])
    await evil.client.request(hub.server_name, "PUT",
                              federation_path("/_matrix/federation/v2/send_join/{r}/{e}", r=room_id, e=join_id),
                              body=join)

    async def send(edus: Any, pdus: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        txn = federation_path("/_matrix/federation/v1/send/{t}", t=str(time.monotonic_ns()))
        return await evil.client.request(hub.server_name, "PUT", txn, body={
            "origin": evil.server_name, "origin_server_ts": 1, "pdus": pdus or [], "edus": edus})

    # A message of eve's rides with the bad EDUs: it is accepted all the same.
    version = made["room_version"]
    state = {(ev["type"], ev["state_key"]): ev["event_id"]
             for ev in hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state", token=token)[1]}
    auth = [state[("m.room.power_levels", "")], join_id] + ([] if version == "12" else [state[("m.room.create", "")]])
    message, message_id = evil.sign({"type": "m.room.message", "room_id": room_id, "sender": eve,
                                     "content": {"msgtype": "m.text", "body": "beside bad EDUs"},
                                     "origin_server_ts": int(time.time() * 1000), "depth": 100,
                                     "prev_events": [join_id], "auth_events": auth}, version)

    def typing(user: str, room: str = room_id, flag: Any = True) -> dict[str, Any]:
        return {"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": flag}}

    def receipt(user: str, event_ids: Any = None, room: str = room_id) -> dict[str, Any]:
        return {"edu_type": "m.receipt", "content": {room: {"m.read": {user: {
            "event_ids": [event_id] if event_ids is None else event_ids, "data": {"ts": 1}}}}}}

    since = hub.request("GET", "/_matrix/client/v3/sync", token=token)[1]["next_batch"]
    bad = [
        typing(host),                                    # a user of the hub, not of evil
        typing(f"@mallory:{evil.server_name}"),          # evil's, but not in the room
        typing(eve, room="!elsewhere:" + hub.server_name),  # a room the hub does not hold
        typing(eve, flag="yes"),                         # malformed
        {"edu_type": "m.typing", "content": "nonsense"},
        receipt(host),
        receipt(f"@mallory:{evil.server_name}"),
        receipt(eve, event_ids="not a list"),
        receipt(eve, event_ids=[]),
        {"edu_type": "m.receipt", "content": {room_id: ["not", "an", "object"]}},
        "not an edu",
        {"edu_type": "org.example.unknown", "content": {}},
    ]
    assert await send(bad, [message]) == {"pdus": {message_id: {}}}  # the transaction itself succeeds
    assert hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(message_id)}", token=token)[0] == 200
    assert await send("not a list") == {"pdus": {}}
    status, answer = hub.request("GET", f"/_matrix/client/v3/sync?since={q(since)}", token=token)
    assert ephemeral(answer, room_id, "m.typing") == [] and ephemeral(answer, room_id, "m.receipt") == []
    assert answer["next_batch"].split("_")[1:] == since.split("_")[1:], "a bad EDU moved a stream"
    log = hub.read_log()
    assert "dropping an m.typing EDU" in log and "dropping an m.receipt EDU" in log
    assert log.count("dropping an m.typing EDU") == 1, "the drop log is not rate-limited"

    # Good ones land in the hub user's /sync.
    await send([typing(eve), receipt(eve)])
    status, answer = hub.request("GET", f"/_matrix/client/v3/sync?since={q(since)}", token=token)
    assert ephemeral(answer, room_id, "m.typing") == [{"user_ids": [eve]}]
    [content] = ephemeral(answer, room_id, "m.receipt")
    assert content[event_id]["m.read"][eve] == {"ts": 1}


class Receiver(EvilServer):
    """The remote server also takes /send transactions: it records their EDUs, and while
    `failing` answers 500 (a server that is down for the hub's sender)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.failing = True
        self.edus: list[dict[str, Any]] = []
        self.attempted = asyncio.Event()  # a transaction with an EDU came in (answered or not)
        self.got_edu = asyncio.Event()  # one was accepted

    async def start(self) -> None:
        async def keys(_: web.Request) -> web.Response:
            return web.json_response(own_key_document(self.server_name, self.key, int(time.time() * 1000)))

        async def on_send(request: web.Request) -> web.Response:
            body = await request.json()
            if body.get("edus"):
                self.attempted.set()
                if not self.failing:
                    self.edus.extend(body["edus"])
                    self.got_edu.set()
            return web.json_response({} if self.failing else {"pdus": {}}, status=500 if self.failing else 200)

        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", keys)
        app.router.add_get("/_matrix/key/v2/server/{key_id}", keys)
        app.router.add_put("/_matrix/federation/v1/send/{txn}", on_send)
        cert, key = self.workdir / "evil.crt", self.workdir / "evil.key"
        make_self_signed(cert, key, self.server_name)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=server_context(cert, key)).start()


async def test_receipts_owed_to_a_down_server_are_sent_after_a_restart(hub: GatewayProcess, tmp_path: Path) -> None:
    remote = Receiver(tmp_path)
    await remote.start()
    try:
        token = hub.login("host", PW)
        host = f"@host:{hub.server_name}"
        room_id = hub.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=token)[1][
            "room_id"]
        eve = f"@eve:{remote.server_name}"
        made = await remote.client.request(
            hub.server_name, "GET", federation_path("/_matrix/federation/v1/make_join/{r}/{u}", r=room_id, u=eve),
            query={"ver": ["10", "11", "12"]})
        join, join_id = remote.sign(dict(made["event"], origin_server_ts=int(time.time() * 1000)),
                                    made["room_version"])
        await remote.client.request(
            hub.server_name, "PUT", federation_path("/_matrix/federation/v2/send_join/{r}/{e}", r=room_id, e=join_id),
            body=join)
        event_id = hub.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message",
                               {"msgtype": "m.text", "body": "read me"}, token=token)[1]["event_id"]
        for kind in ("m.read.private", "m.read"):
            status, _ = hub.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/receipt/{kind}/{q(event_id)}",
                                    {}, token=token)
            assert status == 200
        await asyncio.wait_for(remote.attempted.wait(), 30)  # the hub tried, and the server was down
        assert await asyncio.to_thread(hub.stop) == 0
        remote.failing = False
        await asyncio.to_thread(hub.start)
        await asyncio.wait_for(remote.got_edu.wait(), 30)
        receipts = [edu["content"] for edu in remote.edus if edu.get("edu_type") == "m.receipt"]
        assert any(c.get(room_id, {}).get("m.read", {}).get(host, {}).get("event_ids") == [event_id]
                   for c in receipts), remote.edus
        assert all("m.read.private" not in c.get(room_id, {}) for c in receipts)
    finally:
        await remote.stop()
