"""Account data (global and per room) and room tags over HTTP against the CLI-started hub (issue 13):
round trips, /sync (initial, incremental, long-poll, filters), the spec's errors with nothing
stored, and persistence across a restart. Real clients: tests/test_account_data_clients.py."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V3 = "/_matrix/client/v3"
ALICE, BOB = "@alice:localhost", "@bob:localhost"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob")}


@pytest.fixture()
def room(gateway: GatewayProcess, tokens: dict[str, str]) -> str:
    status, body = gateway.request("POST", f"{V3}/createRoom", {"preset": "private_chat"}, token=tokens["alice"])
    assert status == 200, body
    return body["room_id"]


def sync(gw: GatewayProcess, token: str, since: str | None = None, sync_filter: Any = None,
         timeout: int = 0) -> dict[str, Any]:
    query = {"timeout": str(timeout)}
    if since:
        query["since"] = since
    if sync_filter is not None:
        query["filter"] = json.dumps(sync_filter)
    status, body = gw.request("GET", f"{V3}/sync?{urllib.parse.urlencode(query)}", token=token)
    assert status == 200, body
    return body


def global_data(body: dict[str, Any]) -> dict[str, Any]:
    return {ev["type"]: ev["content"] for ev in body["account_data"]["events"]}


def room_data(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    joined = body["rooms"]["join"].get(room_id, {})
    return {ev["type"]: ev["content"] for ev in joined.get("account_data", {}).get("events", [])}


def test_global_account_data_round_trip_keeps_numbers(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    path = f"{V3}/user/{Q(ALICE)}/account_data/org.example.config"
    content = {"theme": "dark", "ratio": 0.5, "nested": {"list": [1, 2.25, -3e-2, None, True]}, "text": "日本"}
    assert gateway.request("PUT", path, content, token=tokens["alice"]) == (200, {})
    assert gateway.request("GET", path, token=tokens["alice"]) == (200, content)
    # Replacing is whole: the old keys go.
    assert gateway.request("PUT", path, {"theme": "light"}, token=tokens["alice"])[0] == 200
    assert gateway.request("GET", path, token=tokens["alice"]) == (200, {"theme": "light"})
    # The r0 path is the same endpoint.
    assert gateway.request("GET", f"/_matrix/client/r0/user/{Q(ALICE)}/account_data/org.example.config",
                           token=tokens["alice"]) == (200, {"theme": "light"})


def test_errors_answer_the_spec_errcodes_and_store_nothing(gateway: GatewayProcess, tokens: dict[str, str],
                                                           room: str) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    mine = f"{V3}/user/{Q(ALICE)}/account_data/org.example.secret"
    mine_room = f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/org.example.secret"
    before = sync(gateway, alice)["next_batch"]
    cases: list[tuple[str, str, Any, bytes | None, str, int, str]] = [
        # (method, path, body, raw body, token, status, errcode)
        ("PUT", mine, {"x": 1}, None, bob, 403, "M_FORBIDDEN"),
        ("GET", mine, None, None, bob, 403, "M_FORBIDDEN"),
        ("PUT", mine_room, {"x": 1}, None, bob, 403, "M_FORBIDDEN"),
        ("GET", mine_room, None, None, bob, 403, "M_FORBIDDEN"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/u.x", {}, None, bob, 403, "M_FORBIDDEN"),
        ("GET", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags", None, None, bob, 403, "M_FORBIDDEN"),
        ("GET", mine, None, None, alice, 404, "M_NOT_FOUND"),
        ("GET", mine_room, None, None, alice, 404, "M_NOT_FOUND"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/account_data/m.push_rules", {"global": {}}, None, alice, 405, "M_BAD_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/account_data/m.fully_read", {"event_id": "$x"}, None, alice, 405,
         "M_BAD_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/m.fully_read", {"event_id": "$x"}, None,
         alice, 405, "M_BAD_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/m.push_rules", {}, None, alice, 405,
         "M_BAD_JSON"),
        ("PUT", mine, [1, 2], None, alice, 400, "M_BAD_JSON"),
        ("PUT", mine, "text", None, alice, 400, "M_BAD_JSON"),
        ("PUT", mine, None, b'{"x": NaN}', alice, 400, "M_BAD_JSON"),
        ("PUT", mine, None, b'{"x": 1e999}', alice, 400, "M_BAD_JSON"),
        ("PUT", mine, None, b'{"x": "\\ud800"}', alice, 400, "M_BAD_JSON"),
        ("PUT", mine, None, b'{"x": 1', alice, 400, "M_NOT_JSON"),
        ("PUT", mine, None, b"\xff\xfe", alice, 400, "M_NOT_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/account_data/{Q('bad' + chr(1))}", {}, None, alice, 400, "M_INVALID_PARAM"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/account_data/{'x' * 256}", {}, None, alice, 400, "M_INVALID_PARAM"),
        ("GET", f"{V3}/user/{Q(ALICE)}/account_data/", None, None, alice, 400, "M_INVALID_PARAM"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q('#alias:localhost')}/account_data/org.x", {}, None, alice, 400,
         "M_INVALID_PARAM"),
        ("GET", f"{V3}/user/{Q(ALICE)}/rooms/notaroom/account_data/org.x", None, None, alice, 400,
         "M_INVALID_PARAM"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/u.bad", {"order": "0.5"}, None, alice, 400,
         "M_BAD_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/u.bad", [], None, alice, 400, "M_BAD_JSON"),
        ("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/{'t' * 256}", {}, None, alice, 400, "M_INVALID_PARAM"),
        ("PUT", mine, {"x": 1}, None, "not-a-token", 401, "M_UNKNOWN_TOKEN"),
    ]
    for method, path, body, raw, token, status, code in cases:
        got = gateway.request(method, path, body, token=token, raw=raw)
        assert got[0] == status and got[1]["errcode"] == code, (method, path, body, raw, got)
    # Nothing was stored: alice's account data stream did not move, the types read as absent.
    after = sync(gateway, alice, since=before)
    assert after["next_batch"].split("_")[1] == before.split("_")[1]
    assert after["account_data"]["events"] == [] and room not in after["rooms"]["join"]
    for path in (mine, mine_room, f"{V3}/user/{Q(ALICE)}/account_data/m.push_rules",
                 f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/m.fully_read"):
        assert gateway.request("GET", path, token=alice)[0] == 404, path
    assert gateway.request("GET", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags", token=alice) == (200, {"tags": {}})


def test_initial_and_incremental_sync_carry_account_data(gateway: GatewayProcess, tokens: dict[str, str],
                                                         room: str) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/account_data/m.direct", {BOB: [room]}, token=alice)[0] == 200
    assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/org.example.room",
                           {"pinned": True}, token=alice)[0] == 200
    first = sync(gateway, alice)
    assert global_data(first)["m.direct"] == {BOB: [room]}
    assert room_data(first, room) == {"org.example.room": {"pinned": True}}
    # Bob sees none of alice's account data.
    bobs = sync(gateway, bob)
    assert "m.direct" not in global_data(bobs)
    # Incremental: only what changed since, and the room appears for its account data alone.
    assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/org.example.room",
                           {"pinned": False}, token=alice)[0] == 200
    later = sync(gateway, alice, since=first["next_batch"])
    assert global_data(later) == {}
    assert room_data(later, room) == {"org.example.room": {"pinned": False}}
    assert later["rooms"]["join"][room]["timeline"]["events"] == []
    assert int(later["next_batch"].split("_")[1]) > int(first["next_batch"].split("_")[1])
    # And nothing again after that.
    assert room not in sync(gateway, alice, since=later["next_batch"])["rooms"]["join"]


def test_tags_round_trip_and_appear_as_m_tag(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    alice = tokens["alice"]
    tags = f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags"
    start = sync(gateway, alice)["next_batch"]
    assert gateway.request("PUT", f"{tags}/m.favourite", {"order": 0.5}, token=alice) == (200, {})
    assert gateway.request("PUT", f"{tags}/{Q('u.My Work')}", raw=b"", token=alice) == (200, {})  # no body: {}
    assert gateway.request("PUT", f"{tags}/m.lowpriority", {"order": 1}, token=alice) == (200, {})
    assert gateway.request("GET", tags, token=alice) == (200, {"tags": {
        "m.favourite": {"order": 0.5}, "u.My Work": {}, "m.lowpriority": {"order": 1}}})
    assert gateway.request("DELETE", f"{tags}/m.lowpriority", token=alice) == (200, {})
    expected = {"tags": {"m.favourite": {"order": 0.5}, "u.My Work": {}}}
    assert gateway.request("GET", tags, token=alice) == (200, {"tags": expected["tags"]})
    # The same through the room account data API and in /sync, initial and incremental.
    assert gateway.request("GET", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/m.tag",
                           token=alice) == (200, expected)
    assert room_data(sync(gateway, alice), room)["m.tag"] == expected
    changed = sync(gateway, alice, since=start)
    assert room_data(changed, room)["m.tag"] == expected
    # Removing a tag that is not there: 200, and nothing changes (no sync news).
    assert gateway.request("DELETE", f"{tags}/u.never", token=alice) == (200, {})
    quiet = sync(gateway, alice, since=changed["next_batch"], timeout=200)
    assert room not in quiet["rooms"]["join"] and quiet["next_batch"] == changed["next_batch"]


async def test_a_long_poll_wakes_on_an_account_data_change(gateway: GatewayProcess, tokens: dict[str, str],
                                                           room: str) -> None:
    alice = tokens["alice"]
    headers = {"Authorization": f"Bearer {alice}"}
    async with aiohttp.ClientSession(gateway.http_url, headers=headers) as session:
        async with session.get(f"{V3}/sync", params={"timeout": "0"}) as resp:
            since = (await resp.json())["next_batch"]

        async def long_poll() -> dict[str, Any]:
            async with session.get(f"{V3}/sync", params={"timeout": "30000", "since": since}) as resp:
                return await resp.json()

        changes = [
            (f"{V3}/user/{Q(ALICE)}/account_data/org.example.poll", {"n": 1},
             lambda body: global_data(body).get("org.example.poll") == {"n": 1}),
            (f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/u.poll", {"order": 0.75},
             lambda body: room_data(body, room).get("m.tag") == {"tags": {"u.poll": {"order": 0.75}}}),
        ]
        for path, content, arrived in changes:
            started = time.monotonic()
            waiting = asyncio.create_task(long_poll())
            async with session.put(path, json=content) as resp:
                assert resp.status == 200
            woke = await asyncio.wait_for(waiting, 20)
            assert time.monotonic() - started < 20
            assert arrived(woke), woke
            since = woke["next_batch"]


def test_sync_filters_select_account_data(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    alice = tokens["alice"]
    for kind in ("a", "b", "c"):
        assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/account_data/org.filter.{kind}", {"k": kind},
                               token=alice)[0] == 200
    assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/tags/u.f", {}, token=alice)[0] == 200
    assert gateway.request("PUT", f"{V3}/user/{Q(ALICE)}/rooms/{Q(room)}/account_data/org.filter.r", {},
                           token=alice)[0] == 200
    got = global_data(sync(gateway, alice, sync_filter={"account_data": {"types": ["org.filter.*"],
                                                                          "not_types": ["org.filter.b"]}}))
    assert set(got) == {"org.filter.a", "org.filter.c"}
    got = global_data(sync(gateway, alice, sync_filter={"account_data": {"types": ["org.filter.*"], "limit": 1}}))
    assert got == {"org.filter.c": {"k": "c"}}  # the newest
    assert global_data(sync(gateway, alice, sync_filter={"account_data": {"not_types": ["*"]}})) == {}
    body = sync(gateway, alice, sync_filter={"room": {"account_data": {"not_types": ["m.tag"]}}})
    assert set(room_data(body, room)) == {"org.filter.r"}
    body = sync(gateway, alice, sync_filter={"room": {"not_rooms": [room]}})
    assert room_data(body, room) == {}


async def test_the_core_interface_sets_server_managed_types(tmp_path: Path) -> None:
    """What the read-markers endpoint calls: it may set m.fully_read (clients may not), and a
    waiting /sync wakes with it."""
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))
    await hs.start()
    try:
        await hs.accounts.create_user("@a:hub", None)
        requester = Requester("@a:hub", "DEV", False, "token")
        room = (await hs.rooms.create_room(requester, {}))["room_id"]
        first = await hs.sync.sync(requester, None, 0, False, {})
        waiting = asyncio.create_task(hs.sync.sync(requester, first["next_batch"], 30_000, False, {}))
        await hs.account_data.set_room_account_data("@a:hub", room, "m.fully_read", {"event_id": "$e"})
        woke = await asyncio.wait_for(waiting, 10)
        assert room_data(woke, room) == {"m.fully_read": {"event_id": "$e"}}
        assert await hs.account_data.get_room_account_data("@a:hub", room, "m.fully_read") == {"event_id": "$e"}
        assert await hs.account_data.get_room_account_data("@a:hub", room, "m.other") is None
        await hs.account_data.set_global_account_data("@a:hub", "m.push_rules", {"global": {}})
        assert await hs.account_data.get_global_account_data("@a:hub", "m.push_rules") == {"global": {}}

        # A service keeping its type elsewhere (push rules) answers the reads of it.
        async def push_rules(user_id: str) -> dict | None:
            return {"global": {"owner": user_id}}

        hs.account_data.register_reader("m.push_rules", push_rules)
        assert await hs.account_data.get_global_account_data("@a:hub", "m.push_rules") == \
            {"global": {"owner": "@a:hub"}}
    finally:
        await hs.stop()


def test_account_data_and_its_position_survive_a_restart(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("carol", PASSWORD)
        token = gw.login("carol", PASSWORD)
        carol = "@carol:localhost"
        assert gw.request("PUT", f"{V3}/user/{Q(carol)}/account_data/org.keep", {"v": 0.25}, token=token)[0] == 200
        _, created = gw.request("POST", f"{V3}/createRoom", {}, token=token)
        room_id = created["room_id"]
        assert gw.request("PUT", f"{V3}/user/{Q(carol)}/rooms/{Q(room_id)}/tags/m.favourite", {"order": 0.1},
                          token=token)[0] == 200
        before = sync(gw, token)["next_batch"]
    finally:
        assert gw.stop() == 0
    gw.start()
    try:
        assert gw.request("GET", f"{V3}/user/{Q(carol)}/account_data/org.keep", token=token) == (200, {"v": 0.25})
        initial = sync(gw, token)
        assert global_data(initial)["org.keep"] == {"v": 0.25}
        assert room_data(initial, room_id)["m.tag"] == {"tags": {"m.favourite": {"order": 0.1}}}
        # The position was kept: the old token sees nothing new, a new change is news to it.
        assert initial["next_batch"].split("_")[1] == before.split("_")[1]
        assert global_data(sync(gw, token, since=before)) == {}
        assert gw.request("PUT", f"{V3}/user/{Q(carol)}/account_data/org.keep", {"v": 2}, token=token)[0] == 200
        assert global_data(sync(gw, token, since=before)) == {"org.keep": {"v": 2}}
    finally:
        assert gw.stop() == 0
