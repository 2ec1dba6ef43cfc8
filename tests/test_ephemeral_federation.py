"""Inbound EDUs from a scripted remote server ("evil", signing its own requests): bad `m.typing`
and `m.receipt` EDUs (malformed, about another server's user, about a user not in the room,
for a room the hub does not hold) are dropped with a rate-limited log line and never fail the
transaction; the PDU beside them is accepted; good EDUs reach the hub user's /sync."""
from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from matrix_core.federation.client import federation_path
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

    async def send(edus: Any) -> dict[str, Any]:
        txn = federation_path("/_matrix/federation/v1/send/{t}", t=str(time.monotonic_ns()))
        return await evil.client.request(hub.server_name, "PUT", txn, body={
            "origin": evil.server_name, "origin_server_ts": 1, "pdus": [], "edus": edus})

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
    assert await send(bad) == {"pdus": {}}  # the transaction itself succeeds
    assert await send("not a list") == {"pdus": {}}
    status, answer = hub.request("GET", f"/_matrix/client/v3/sync?since={q(since)}", token=token)
    assert ephemeral(answer, room_id, "m.typing") == [] and ephemeral(answer, room_id, "m.receipt") == []
    assert answer["next_batch"] == since, "a bad EDU moved a stream"
    log = hub.read_log()
    assert "dropping an m.typing EDU" in log and "dropping an m.receipt EDU" in log
    assert log.count("dropping an m.typing EDU") == 1, "the drop log is not rate-limited"

    # Good ones land in the hub user's /sync.
    await send([typing(eve), receipt(eve)])
    status, answer = hub.request("GET", f"/_matrix/client/v3/sync?since={q(since)}", token=token)
    assert ephemeral(answer, room_id, "m.typing") == [{"user_ids": [eve]}]
    [content] = ephemeral(answer, room_id, "m.receipt")
    assert content[event_id]["m.read"][eve] == {"ts": 1}
