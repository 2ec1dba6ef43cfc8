"""Presence, forgetting rooms, a room's aliases and the user directory over HTTP against the
CLI-started hub (issue 13). Real clients: tests/test_account_data_clients.py."""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V3 = "/_matrix/client/v3"
ALICE, BOB, ERIN = "@alice:localhost", "@bob:localhost", "@erin:localhost"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    gateway.add_user("erin", PASSWORD)  # shares no room with anyone unless a test says so
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob", "erin")}


def create_room(gw: GatewayProcess, token: str, **body: Any) -> str:
    status, created = gw.request("POST", f"{V3}/createRoom", body, token=token)
    assert status == 200, created
    return created["room_id"]


def sync(gw: GatewayProcess, token: str, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    query = {"timeout": str(timeout), **({"since": since} if since else {})}
    status, body = gw.request("GET", f"{V3}/sync?{urllib.parse.urlencode(query)}", token=token)
    assert status == 200, body
    return body


def presence_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ev["sender"]: ev["content"] for ev in body["presence"]["events"] if ev["type"] == "m.presence"}


def status(gw: GatewayProcess, token: str, user: str) -> tuple[int, Any]:
    return gw.request("GET", f"{V3}/presence/{Q(user)}/status", token=token)


def test_presence_is_set_read_and_shared_with_room_peers_only(gateway: GatewayProcess,
                                                              tokens: dict[str, str]) -> None:
    alice, bob, erin = tokens["alice"], tokens["bob"], tokens["erin"]
    room = create_room(gateway, alice, preset="public_chat")
    assert gateway.request("POST", f"{V3}/join/{Q(room)}", {}, token=bob)[0] == 200
    bob_start = sync(gateway, bob)["next_batch"]
    erin_start = sync(gateway, erin)["next_batch"]
    put = f"{V3}/presence/{Q(ALICE)}/status"
    assert gateway.request("PUT", put, {"presence": "online", "status_msg": "watering"}, token=alice) == (200, {})
    own = status(gateway, alice, ALICE)
    assert own[0] == 200 and own[1]["presence"] == "online" and own[1]["status_msg"] == "watering"
    assert 0 <= own[1]["last_active_ago"] < 60_000
    # A room peer reads it, and gets it in /sync; a stranger does neither.
    seen = status(gateway, bob, ALICE)
    assert seen[0] == 200 and seen[1]["presence"] == "online"
    assert presence_of(sync(gateway, bob, since=bob_start))[ALICE]["status_msg"] == "watering"
    assert status(gateway, erin, ALICE)[1]["errcode"] == "M_FORBIDDEN"
    assert ALICE not in presence_of(sync(gateway, erin, since=erin_start))
    assert ALICE not in presence_of(sync(gateway, erin))
    # A PUT without status_msg clears it; unavailable is news too.
    assert gateway.request("PUT", put, {"presence": "unavailable"}, token=alice)[0] == 200
    assert "status_msg" not in status(gateway, bob, ALICE)[1]
    initial = presence_of(sync(gateway, bob))
    assert initial[ALICE]["presence"] == "unavailable"
    # Someone who never set a presence reads as offline.
    assert status(gateway, alice, BOB) == (200, {"presence": "offline"})


def test_presence_errors_change_nothing(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    put = f"{V3}/presence/{Q(ALICE)}/status"
    assert gateway.request("PUT", put, {"presence": "online", "status_msg": "kept"}, token=alice)[0] == 200
    before = sync(gateway, alice)["next_batch"]
    for body, raw, token, code, errcode in [
        ({"presence": "offline"}, None, bob, 403, "M_FORBIDDEN"),  # someone else's
        ({"presence": "away"}, None, alice, 400, "M_BAD_JSON"),
        ({"presence": "online", "status_msg": 42}, None, alice, 400, "M_BAD_JSON"),
        ({"presence": "online", "status_msg": "x" * 1001}, None, alice, 400, "M_BAD_JSON"),
        ({"status_msg": "no presence"}, None, alice, 400, "M_MISSING_PARAM"),
        (None, b"[1]", alice, 400, "M_BAD_JSON"),
        (None, b"{", alice, 400, "M_NOT_JSON"),
    ]:
        got = gateway.request("PUT", put, body, token=token, raw=raw)
        assert got[0] == code and got[1]["errcode"] == errcode, (body, raw, got)
    assert status(gateway, alice, ALICE)[1]["status_msg"] == "kept"
    assert gateway.request("GET", f"{V3}/presence/not-a-user/status", token=alice)[1]["errcode"] == "M_INVALID_PARAM"
    assert sync(gateway, alice, since=before, timeout=100)["next_batch"] == before


async def test_a_long_poll_wakes_on_a_peers_presence(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = create_room(gateway, alice, preset="public_chat")
    assert gateway.request("POST", f"{V3}/join/{Q(room)}", {}, token=bob)[0] == 200
    since = sync(gateway, bob)["next_batch"]
    async with aiohttp.ClientSession(gateway.http_url) as session:
        async def long_poll() -> dict[str, Any]:
            async with session.get(f"{V3}/sync", params={"timeout": "30000", "since": since},
                                   headers={"Authorization": f"Bearer {bob}"}) as resp:
                return await resp.json()

        started = time.monotonic()
        waiting = asyncio.create_task(long_poll())
        async with session.put(f"{V3}/presence/{Q(ALICE)}/status", json={"presence": "online", "status_msg": "ping"},
                               headers={"Authorization": f"Bearer {alice}"}) as resp:
            assert resp.status == 200
        woke = await asyncio.wait_for(waiting, 20)
    assert time.monotonic() - started < 20
    assert presence_of(woke)[ALICE]["status_msg"] == "ping"


def test_presence_switched_off_accepts_and_ignores(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("presence_enabled = false\n")
    gw = GatewayProcess(data)
    gw.start()
    try:
        gw.add_user("alice", PASSWORD)
        token = gw.login("alice", PASSWORD)
        before = sync(gw, token)
        assert gw.request("PUT", f"{V3}/presence/{Q(ALICE)}/status", {"presence": "online", "status_msg": "hi"},
                          token=token) == (200, {})
        assert status(gw, token, ALICE) == (200, {"presence": "offline"})
        after = sync(gw, token, since=before["next_batch"], timeout=100)
        assert after["presence"]["events"] == [] and after["next_batch"] == before["next_batch"]
        assert sync(gw, token)["presence"]["events"] == []
        # Still checked: a bad body is a 400 even when presence is off.
        assert gw.request("PUT", f"{V3}/presence/{Q(ALICE)}/status", {"presence": "away"},
                          token=token)[1]["errcode"] == "M_BAD_JSON"
    finally:
        assert gw.stop() == 0


def test_a_presence_flood_is_held_to_the_message_rate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0.1\nmessages_burst = 3\n")
    gw = GatewayProcess(data)
    gw.start()
    try:
        gw.add_user("alice", PASSWORD)
        token = gw.login("alice", PASSWORD)
        put = f"{V3}/presence/{Q(ALICE)}/status"
        for n in range(3):
            assert gw.request("PUT", put, {"presence": "online", "status_msg": f"n{n}"}, token=token)[0] == 200
        code, body = gw.request("PUT", put, {"presence": "online", "status_msg": "flood"}, token=token)
        assert code == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
        assert status(gw, token, ALICE)[1]["status_msg"] == "n2"  # the refused one changed nothing
        # Bad bodies are refused before the rate is checked: they cost nothing.
        assert gw.request("PUT", put, {"presence": "away"}, token=token)[1]["errcode"] == "M_BAD_JSON"
    finally:
        assert gw.stop() == 0


def test_forget_a_left_room(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = create_room(gateway, alice, preset="private_chat", room_alias_name="forgettable")
    r = f"{V3}/rooms/{Q(room)}"
    assert gateway.request("POST", f"{r}/invite", {"user_id": BOB}, token=alice)[0] == 200
    # Invited or joined: the spec's 400 M_UNKNOWN, nothing forgotten.
    for _ in ("invite", "join"):
        got = gateway.request("POST", f"{r}/forget", {}, token=bob)
        assert got[0] == 400 and got[1]["errcode"] == "M_UNKNOWN", got
        if _ == "invite":
            assert gateway.request("POST", f"{r}/join", {}, token=bob)[0] == 200
    assert gateway.request("PUT", f"{r}/send/m.room.message/f1", {"msgtype": "m.text", "body": "before"},
                           token=alice)[0] == 200
    since = sync(gateway, bob)["next_batch"]
    assert gateway.request("POST", f"{r}/leave", {}, token=bob)[0] == 200
    # Left, not yet forgotten: the leave shows in /sync, history up to the leave is readable.
    assert room in sync(gateway, bob, since=since)["rooms"]["leave"]
    assert gateway.request("GET", f"{r}/messages?dir=b", token=bob)[0] == 200
    assert gateway.request("GET", f"{r}/aliases", token=bob)[0] == 200
    assert gateway.request("POST", f"{r}/forget", {}, token=bob) == (200, {})
    assert gateway.request("POST", f"{r}/forget", {}, token=bob) == (200, {})  # again: nothing to do
    # Forgotten: no leave entry, no history, no aliases.
    assert room not in sync(gateway, bob, since=since)["rooms"]["leave"]
    assert gateway.request("GET", f"{r}/messages?dir=b", token=bob)[1]["errcode"] == "M_FORBIDDEN"
    assert gateway.request("GET", f"{r}/aliases", token=bob)[1]["errcode"] == "M_FORBIDDEN"
    # Alice (still joined) is unaffected; a new invite brings the room back for bob.
    assert gateway.request("GET", f"{r}/messages?dir=b", token=alice)[0] == 200
    mark = sync(gateway, bob)["next_batch"]
    assert gateway.request("POST", f"{r}/invite", {"user_id": BOB}, token=alice)[0] == 200
    assert room in sync(gateway, bob, since=mark)["rooms"]["invite"]
    assert gateway.request("POST", f"{r}/join", {}, token=bob)[0] == 200
    assert gateway.request("GET", f"{r}/messages?dir=b", token=bob)[0] == 200
    # Bad room ids: a clear 400.
    assert gateway.request("POST", f"{V3}/rooms/{Q('not a room')}/forget", {}, token=bob)[1]["errcode"] == \
        "M_INVALID_PARAM"


def test_forgetting_survives_a_restart(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("alice", PASSWORD)
        gw.add_user("bob", PASSWORD)
        alice, bob = gw.login("alice", PASSWORD), gw.login("bob", PASSWORD)
        kept, forgotten = create_room(gw, alice, preset="public_chat"), create_room(gw, alice, preset="public_chat")
        for room in (kept, forgotten):
            assert gw.request("POST", f"{V3}/join/{Q(room)}", {}, token=bob)[0] == 200
        since = sync(gw, bob)["next_batch"]
        for room in (kept, forgotten):
            assert gw.request("POST", f"{V3}/rooms/{Q(room)}/leave", {}, token=bob)[0] == 200
        assert gw.request("POST", f"{V3}/rooms/{Q(forgotten)}/forget", {}, token=bob)[0] == 200
    finally:
        assert gw.stop() == 0
    gw.start()
    try:
        leave = sync(gw, bob, since=since)["rooms"]["leave"]
        assert kept in leave and forgotten not in leave
        assert gw.request("GET", f"{V3}/rooms/{Q(kept)}/messages?dir=b", token=bob)[0] == 200
        assert gw.request("GET", f"{V3}/rooms/{Q(forgotten)}/messages?dir=b", token=bob)[1]["errcode"] == \
            "M_FORBIDDEN"  # public_chat history is "shared", not world readable
    finally:
        assert gw.stop() == 0


def test_room_aliases_for_members_and_world_readable_rooms(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, erin = tokens["alice"], tokens["erin"]
    room = create_room(gateway, alice, preset="private_chat", room_alias_name="greenhouse")
    assert gateway.request("PUT", f"{V3}/directory/room/{Q('#glasshouse:localhost')}", {"room_id": room},
                           token=alice)[0] == 200
    r = f"{V3}/rooms/{Q(room)}/aliases"
    assert gateway.request("GET", r, token=alice) == (200, {"aliases": ["#glasshouse:localhost",
                                                                        "#greenhouse:localhost"]})
    assert gateway.request("GET", r, token=erin)[1]["errcode"] == "M_FORBIDDEN"
    assert gateway.request("PUT", f"{V3}/rooms/{Q(room)}/state/m.room.history_visibility",
                           {"history_visibility": "world_readable"}, token=alice)[0] == 200
    assert gateway.request("GET", r, token=erin)[1] == {"aliases": ["#glasshouse:localhost", "#greenhouse:localhost"]}
    bare = create_room(gateway, alice)
    assert gateway.request("GET", f"{V3}/rooms/{Q(bare)}/aliases", token=alice) == (200, {"aliases": []})
    assert gateway.request("GET", f"{V3}/rooms/{Q('!nosuch:localhost')}/aliases", token=alice)[0] == 404
    assert gateway.request("GET", f"{V3}/rooms/{Q('bad id')}/aliases", token=alice)[1]["errcode"] == "M_INVALID_PARAM"


def test_user_directory_finds_room_peers_and_public_room_members(gateway: GatewayProcess,
                                                                 tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    gateway.add_user("frida", PASSWORD)
    gateway.add_user("fridolin", PASSWORD)
    gateway.add_user("frieda_hidden", PASSWORD)
    frida, fridolin = gateway.login("frida", PASSWORD), gateway.login("fridolin", PASSWORD)
    gateway.login("frieda_hidden", PASSWORD)
    assert gateway.request("PUT", f"{V3}/profile/{Q('@frida:localhost')}/displayname",
                           {"displayname": "Frida Kahlo"}, token=frida)[0] == 200
    private = create_room(gateway, frida, preset="private_chat")
    assert gateway.request("POST", f"{V3}/rooms/{Q(private)}/invite", {"user_id": ALICE}, token=frida)[0] == 200
    assert gateway.request("POST", f"{V3}/rooms/{Q(private)}/join", {}, token=alice)[0] == 200
    create_room(gateway, fridolin, preset="public_chat")  # fridolin is in a public room
    # frieda_hidden is in no room at all.

    def search(token: str, body: Any) -> tuple[int, Any]:
        return gateway.request("POST", f"{V3}/user_directory/search", body, token=token)

    code, found = search(alice, {"search_term": "fri"})
    assert code == 200 and found["limited"] is False
    assert [u["user_id"] for u in found["results"]] == ["@frida:localhost", "@fridolin:localhost"]
    assert found["results"][0]["display_name"] == "Frida Kahlo"
    # Bob shares no room with frida: only the public room's member.
    assert [u["user_id"] for u in search(bob, {"search_term": "fri"})[1]["results"]] == ["@fridolin:localhost"]
    # By display name, case-insensitively, several words.
    assert [u["user_id"] for u in search(alice, {"search_term": "KAHLO frida"})[1]["results"]] == ["@frida:localhost"]
    limited = search(alice, {"search_term": "fri", "limit": 1})[1]
    assert len(limited["results"]) == 1 and limited["limited"] is True
    assert search(alice, {"search_term": "   "})[1] == {"results": [], "limited": False}
    for body, errcode in [({}, "M_MISSING_PARAM"), ({"search_term": 5}, "M_BAD_JSON"),
                          ({"search_term": "x", "limit": "10"}, "M_BAD_JSON"),
                          ({"search_term": "x", "limit": -1}, "M_BAD_JSON"),
                          ({"search_term": "x" * 257}, "M_BAD_JSON")]:
        got = search(alice, body)
        assert got[0] == 400 and got[1]["errcode"] == errcode, (body, got)
    assert gateway.request("POST", f"{V3}/user_directory/search", {"search_term": "fri"})[1]["errcode"] == \
        "M_MISSING_TOKEN"
