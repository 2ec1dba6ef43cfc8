"""Parameters that used to be 500s (issue 20, M2) and rooms that used to break /sync (M1).

Every bad parameter is a 400 with the spec's errcode, stores nothing (the event stream does not
move, no room appears) and logs no traceback; concurrent createRoom calls by one user make
distinct rooms; one broken room is left out of /sync instead of failing it.
"""
from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_client_api_http import Q

HUGE = "9" * 30
C = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> str:
    return gateway.login("alice", PASSWORD)


@pytest.fixture(scope="module")
def room(gateway: GatewayProcess, alice: str) -> str:
    status, body = gateway.request("POST", f"{C}/createRoom", {"preset": "private_chat"}, token=alice)
    assert status == 200, body
    return body["room_id"]


def stream_position(gw: GatewayProcess, token: str) -> str:
    status, body = gw.request("GET", f"{C}/sync?timeout=0", token=token)
    assert status == 200, body
    return body["next_batch"]


def joined(gw: GatewayProcess, token: str) -> set[str]:
    status, body = gw.request("GET", f"{C}/joined_rooms", token=token)
    assert status == 200, body
    return set(body["joined_rooms"])


BAD_REQUESTS = [
    # (name, method, path with {room}, body, status, errcode)
    ("join '#'", "POST", "/join/%23", {}, 400, "M_INVALID_PARAM"),
    ("join '#:'", "POST", "/join/%23%3A", {}, 400, "M_INVALID_PARAM"),
    ("join '!'", "POST", "/join/%21", {}, 400, "M_INVALID_PARAM"),
    ("knock '#'", "POST", "/knock/%23", {}, 400, "M_INVALID_PARAM"),
    ("room path '#'", "GET", "/rooms/%23/messages", None, 400, "M_INVALID_PARAM"),
    ("directory '#'", "GET", "/directory/room/%23", None, 400, "M_INVALID_PARAM"),
    ("profile '@'", "GET", "/profile/%40", None, 400, "M_INVALID_PARAM"),
    ("sync filter id overflow", "GET", f"/sync?filter={HUGE}", None, 400, "M_INVALID_PARAM"),
    ("sync filter id full-width", "GET", "/sync?filter=%EF%BC%91", None, 400, "M_INVALID_PARAM"),
    ("sync filter id superscript", "GET", "/sync?filter=%C2%B2", None, 400, "M_INVALID_PARAM"),
    ("get filter overflow", "GET", f"/user/{Q('@alice:localhost')}/filter/{HUGE}", None, 400, "M_INVALID_PARAM"),
    ("sync since overflow", "GET", f"/sync?since=s{HUGE}", None, 400, "M_INVALID_PARAM"),
    ("sync since negative overflow", "GET", f"/sync?since=s-{HUGE}", None, 400, "M_INVALID_PARAM"),
    ("sync since junk", "GET", "/sync?since=s1_x0", None, 400, "M_INVALID_PARAM"),
    ("sync timeout junk", "GET", "/sync?timeout=%EF%BC%91", None, 400, "M_INVALID_PARAM"),
    ("messages from overflow", "GET", f"/rooms/{{room}}/messages?from=s{HUGE}", None, 400, "M_INVALID_PARAM"),
    ("messages from overflow forwards", "GET", f"/rooms/{{room}}/messages?dir=f&from=s{HUGE}", None, 400,
     "M_INVALID_PARAM"),
    ("messages from negative overflow", "GET", f"/rooms/{{room}}/messages?dir=f&from=s-{HUGE}", None, 400,
     "M_INVALID_PARAM"),
    ("messages to overflow", "GET", f"/rooms/{{room}}/messages?to=s{HUGE}", None, 400, "M_INVALID_PARAM"),
    ("messages limit junk", "GET", "/rooms/{room}/messages?limit=1e3", None, 400, "M_INVALID_PARAM"),
    ("createRoom preset object", "POST", "/createRoom", {"preset": {}}, 400, "M_BAD_JSON"),
    ("createRoom preset list", "POST", "/createRoom", {"preset": []}, 400, "M_BAD_JSON"),
    ("createRoom preset unknown", "POST", "/createRoom", {"preset": "party"}, 400, "M_BAD_JSON"),
    ("createRoom visibility object", "POST", "/createRoom", {"visibility": {}}, 400, "M_BAD_JSON"),
    ("createRoom visibility unknown", "POST", "/createRoom", {"visibility": "secret"}, 400, "M_BAD_JSON"),
    ("createRoom is_direct", "POST", "/createRoom", {"is_direct": "yes"}, 400, "M_BAD_JSON"),
    ("createRoom invite_3pid", "POST", "/createRoom", {"invite_3pid": {}}, 400, "M_BAD_JSON"),
    ("createRoom invite string", "POST", "/createRoom", {"invite": "@bob:localhost"}, 400, "M_BAD_JSON"),
    ("createRoom name", "POST", "/createRoom", {"name": 5}, 400, "M_BAD_JSON"),
    ("createRoom creation_content", "POST", "/createRoom", {"creation_content": []}, 400, "M_BAD_JSON"),
    ("createRoom alias with space", "POST", "/createRoom", {"room_alias_name": "a b"}, 400, "M_INVALID_PARAM"),
    ("createRoom alias too long", "POST", "/createRoom", {"room_alias_name": "a" * 300}, 400, "M_INVALID_PARAM"),
]


@pytest.mark.parametrize("name,method,path,body,status,errcode", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_parameters_are_400s_and_store_nothing(gateway: GatewayProcess, alice: str, room: str, name: str,
                                                   method: str, path: str, body: object, status: int,
                                                   errcode: str) -> None:
    before, rooms_before = stream_position(gateway, alice), joined(gateway, alice)
    got, answer = gateway.request(method, C + path.format(room=Q(room)), body, token=alice)
    assert (got, answer["errcode"]) == (status, errcode), answer
    assert isinstance(answer["error"], str) and answer["error"]
    assert stream_position(gateway, alice) == before
    assert joined(gateway, alice) == rooms_before


def test_bad_parameters_log_no_traceback(gateway: GatewayProcess, alice: str, room: str) -> None:
    """Runs after the parametrized cases above (same module hub): none of them reached a handler's
    catch-all, which logs a traceback and answers 500."""
    for _, method, path, body, _, _ in BAD_REQUESTS:
        gateway.request(method, C + path.format(room=Q(room)), body, token=alice)
    log = gateway.log_path().read_text()
    assert "Traceback" not in log and "unhandled error" not in log


def test_good_parameters_still_work(gateway: GatewayProcess, alice: str, room: str) -> None:
    """The strict parsing keeps what clients send: negative positions, large limits (clamped)."""
    status, body = gateway.request("GET", f"{C}/rooms/{Q(room)}/messages?dir=b&limit=99999&from=s-5",
                                   token=alice)
    assert status == 200 and body["chunk"] == [], body
    status, body = gateway.request("GET", f"{C}/rooms/{Q(room)}/messages?dir=f&limit=2", token=alice)
    assert status == 200 and len(body["chunk"]) == 2 and body["end"].startswith("s"), body
    status, more = gateway.request("GET", f"{C}/rooms/{Q(room)}/messages?dir=f&limit=2&from={body['end']}",
                                   token=alice)
    assert status == 200 and more["chunk"][0]["event_id"] != body["chunk"][0]["event_id"]
    status, created = gateway.request("POST", f"{C}/user/{Q('@alice:localhost')}/filter",
                                      {"room": {"timeline": {"limit": 1}}}, token=alice)
    assert status == 200
    status, synced = gateway.request("GET", f"{C}/sync?filter={created['filter_id']}&timeout=0", token=alice)
    assert status == 200 and len(synced["rooms"]["join"][room]["timeline"]["events"]) == 1
    status, body = gateway.request("POST", f"{C}/createRoom",
                                   {"preset": None, "visibility": "private", "is_direct": False,
                                    "room_alias_name": "kitchen.sensors"}, token=alice)
    assert status == 200 and body["room_alias"] == "#kitchen.sensors:localhost"


async def _create_rooms_at_once(base: str, token: str, count: int) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async def create() -> tuple[int, dict]:
            async with session.post(f"{base}{C}/createRoom", json={}) as resp:
                return resp.status, await resp.json()

        return await asyncio.gather(*(create() for _ in range(count)))


def test_concurrent_create_room_makes_distinct_rooms_and_sync_stays_up(tmp_path) -> None:
    """M1: v12 room ids are the create event's hash; rooms created by one user in one millisecond
    used to share an id (a UNIQUE failure, and that user's /sync answered 500 until a restart)."""
    with GatewayProcess(tmp_path / "data") as gw:
        gw.add_user("carol", PASSWORD)
        token = gw.login("carol", PASSWORD)
        for _ in range(3):  # each round: 8 createRoom calls sent together
            results = asyncio.run(_create_rooms_at_once(gw.http_url, token, 8))
            assert [status for status, _ in results] == [200] * 8, results
        room_ids = set(joined(gw, token))
        assert len(room_ids) == 24
        status, body = gw.request("GET", f"{C}/sync", token=token)
        assert status == 200, body
        assert set(body["rooms"]["join"]) == room_ids
        assert "Traceback" not in gw.log_path().read_text()


def test_a_room_that_fails_to_load_is_left_out_of_sync(tmp_path) -> None:
    """One broken room (its create event unreadable, or its rooms row gone) costs that room, not
    the user's whole /sync, and is logged once, not on every sync."""
    data = tmp_path / "data"
    with GatewayProcess(data) as gw:
        gw.add_user("dora", PASSWORD)
        token = gw.login("dora", PASSWORD)
        rooms = [gw.request("POST", f"{C}/createRoom", {}, token=token)[1]["room_id"] for _ in range(3)]
        assert gw.stop() == 0
    broken, gone, fine = rooms
    with sqlite3.connect(data / "homeserver.db") as db:
        db.execute("UPDATE events SET json = 'not json' WHERE room_id = ? AND type = 'm.room.create'", (broken,))
        db.execute("DELETE FROM rooms WHERE room_id = ?", (gone,))
    with GatewayProcess(data) as gw:
        token = gw.login("dora", PASSWORD)
        for _ in range(3):
            status, body = gw.request("GET", f"{C}/sync", token=token)
            assert status == 200, body
            assert set(body["rooms"]["join"]) == {fine}
        status, body = gw.request("GET", f"{C}/sync?since={body['next_batch']}&timeout=0", token=token)
        assert status == 200, body
        log = gw.log_path().read_text()
        assert log.count(f"sync leaves out room {broken}") == 1
        assert log.count(f"sync leaves out room {gone}") == 1
        assert "Traceback" not in log


# ---------------------------------------------------------------------------------------------
# the pure parts: matrix_core/params.py and matrix_core/log_limit.py
# ---------------------------------------------------------------------------------------------


def test_params_parse_strictly() -> None:
    from matrix_core import params
    from matrix_core.errors import MatrixError

    assert params.stream_token("s42") == 42 and params.stream_token("t-7") == -7
    assert params.stream_token(f"s{2**62}") == 2**62 and params.stream_token(None) is None
    assert params.stream_token("s9_1_0_3") == 9  # a /sync next_batch, by its event position
    for bad in (f"s{2**62 + 1}", f"s-{2**62 + 1}", "s", "x5", "s 5", "s1_", "s1_x", "s\uff11", "s\u00b2", "s5\n"):
        with pytest.raises(MatrixError) as info:
            params.stream_token(bad)
        assert info.value.errcode == "M_INVALID_PARAM"
    assert params.filter_id("0") == 0 and params.filter_id(str(2**63 - 1)) == 2**63 - 1
    for bad in (str(2**63), "-1", "", "\u00b2", "1.0"):
        with pytest.raises(MatrixError):
            params.filter_id(bad)
    assert params.int_param("limit", "99999", 1, 1000) == 1000 and params.int_param("limit", "-3", 1, 10) == 1
    assert params.room_id_or_alias("#a:hub") == "#a:hub" and params.room_id_or_alias("!x") == "!x"
    for bad in ("#", "#:", "#a", "!", "a", "#a:hub name", "!x\x00", "!" + "x" * 300):
        with pytest.raises(MatrixError):
            params.room_id_or_alias(bad)
    with pytest.raises(MatrixError):
        params.room_alias("!room")


def test_log_limiter_says_once_per_interval_and_counts_the_rest() -> None:
    from matrix_core.log_limit import LogLimiter

    now = [0.0]
    limiter = LogLimiter(60.0, clock=lambda: now[0])
    assert limiter.allow("emfile") == 0
    assert [limiter.allow("emfile") for _ in range(3)] == [None] * 3
    assert limiter.allow("other") == 0  # keys are independent
    now[0] = 61.0
    assert limiter.allow("emfile") == 3  # the next line reports what it kept quiet
    assert limiter.allow("emfile") is None
