"""Typing, receipts and read markers over raw HTTP (urllib) against the hub started by the CLI:
each endpoint, each error case (a Matrix errcode, nothing stored), /sync's `ephemeral` section,
long-polls that wake on a typing change, on a typing timeout and on a receipt, and receipts
kept across a restart."""
from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.parse
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

ALICE = "@alice:localhost"
BOB = "@bob:localhost"
CAROL = "@carol:localhost"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    gateway.add_user("carol", PASSWORD)
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob", "carol")}


def api(gw: GatewayProcess, method: str, path: str, body: Any = None, token: str | None = None,
        expect: int = 200) -> Any:
    status, answer = gw.request(method, path, body, token=token)
    assert status == expect, (method, path, status, answer)
    return answer


@pytest.fixture()
def room(gateway: GatewayProcess, tokens: dict[str, str]) -> str:
    """A room alice made, bob joined; carol is not in it."""
    room_id = api(gateway, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                  token=tokens["alice"])["room_id"]
    api(gateway, "POST", f"/_matrix/client/v3/join/{Q(room_id)}", {}, token=tokens["bob"])
    return room_id


def sync(gw: GatewayProcess, token: str, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
    path = f"/_matrix/client/v3/sync?timeout={timeout_ms}" + (f"&since={Q(since)}" if since else "")
    return api(gw, "GET", path, token=token)


def ephemeral(answer: dict[str, Any], room_id: str, kind: str) -> list[dict[str, Any]]:
    room = answer["rooms"]["join"].get(room_id, {})
    return [ev["content"] for ev in room.get("ephemeral", {}).get("events", []) if ev["type"] == kind]


def send(gw: GatewayProcess, room_id: str, token: str, body: str) -> str:
    return api(gw, "POST", f"/_matrix/client/v3/rooms/{Q(room_id)}/send/m.room.message",
               {"msgtype": "m.text", "body": body}, token=token)["event_id"]


def typing_path(room_id: str, user_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{Q(room_id)}/typing/{Q(user_id)}"


def receipt_path(room_id: str, kind: str, event_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{Q(room_id)}/receipt/{Q(kind)}/{Q(event_id)}"


class LongPoll:
    """A /sync long-poll running in a thread while the test acts; `result()` waits for its answer."""

    def __init__(self, gw: GatewayProcess, token: str, since: str, timeout_ms: int = 20_000) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self.started = time.monotonic()
        self._future = self._pool.submit(sync, gw, token, since, timeout_ms)
        self.elapsed = 0.0

    def result(self) -> dict[str, Any]:
        try:
            answer = self._future.result(timeout=30)
        finally:
            self._pool.shutdown(wait=False)
        self.elapsed = time.monotonic() - self.started
        return answer


# -- typing ---------------------------------------------------------------------------------------

def test_typing_wakes_a_long_poll_and_shows_in_initial_sync(gateway: GatewayProcess, tokens: dict[str, str],
                                                            room: str) -> None:
    since = sync(gateway, tokens["bob"])["next_batch"]
    poll = LongPoll(gateway, tokens["bob"], since)
    api(gateway, "PUT", typing_path(room, ALICE), {"typing": True, "timeout": 20_000}, token=tokens["alice"])
    answer = poll.result()
    assert poll.elapsed < 10, "the long-poll was not woken by the typing notification"
    assert ephemeral(answer, room, "m.typing") == [{"user_ids": [ALICE]}]
    # An initial sync has the room's current typers.
    assert ephemeral(sync(gateway, tokens["bob"]), room, "m.typing") == [{"user_ids": [ALICE]}]
    # Typing again moves nothing; stopping does, with an empty list.
    since = answer["next_batch"]
    api(gateway, "PUT", typing_path(room, ALICE), {"typing": False}, token=tokens["alice"])
    answer = sync(gateway, tokens["bob"], since)
    assert ephemeral(answer, room, "m.typing") == [{"user_ids": []}]
    assert ephemeral(sync(gateway, tokens["bob"]), room, "m.typing") == []


def test_typing_times_out_on_the_server_and_wakes_the_long_poll(gateway: GatewayProcess,
                                                                tokens: dict[str, str], room: str) -> None:
    api(gateway, "PUT", typing_path(room, BOB), {"typing": True, "timeout": 300}, token=tokens["bob"])
    first = sync(gateway, tokens["alice"])
    assert ephemeral(first, room, "m.typing") == [{"user_ids": [BOB]}]
    poll = LongPoll(gateway, tokens["alice"], first["next_batch"])
    answer = poll.result()  # woken by the timeout itself: nobody sent anything
    assert poll.elapsed < 10
    assert ephemeral(answer, room, "m.typing") == [{"user_ids": []}]


def test_typing_errors_store_nothing(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    since = sync(gateway, tokens["bob"])["next_batch"]
    cases = [
        (typing_path(room, BOB), {"typing": True}, tokens["alice"], 403, "M_FORBIDDEN"),  # someone else
        (typing_path(room, CAROL), {"typing": True}, tokens["carol"], 403, "M_FORBIDDEN"),  # not in the room
        (typing_path(room, ALICE), {"typing": "yes"}, tokens["alice"], 400, "M_BAD_JSON"),
        (typing_path(room, ALICE), {"typing": True, "timeout": -5}, tokens["alice"], 400, "M_BAD_JSON"),
        (typing_path(room, ALICE), {"typing": True, "timeout": 1.5}, tokens["alice"], 400, "M_BAD_JSON"),
        (typing_path(room, ALICE), {}, tokens["alice"], 400, "M_MISSING_PARAM"),
        (typing_path(room, "not-a-user"), {"typing": True}, tokens["alice"], 400, "M_INVALID_PARAM"),
        (typing_path("!nowhere:localhost", ALICE), {"typing": True}, tokens["alice"], 404, "M_NOT_FOUND"),
    ]
    for path, body, token, status, errcode in cases:
        answer = api(gateway, "PUT", path, body, token=token, expect=status)
        assert answer["errcode"] == errcode, (path, body, answer)
    assert api(gateway, "PUT", typing_path(room, ALICE), {"typing": True}, expect=401)["errcode"] == "M_MISSING_TOKEN"
    answer = sync(gateway, tokens["bob"], since)
    assert ephemeral(answer, room, "m.typing") == []
    assert answer["next_batch"] == since


def test_a_typing_flood_is_limited(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    token = tokens["carol"]
    api(gateway, "POST", f"/_matrix/client/v3/join/{Q(room)}", {}, token=token)
    refused = []
    for i in range(40):
        status, answer = gateway.request("PUT", typing_path(room, CAROL), {"typing": i % 2 == 0}, token=token)
        if status != 200:
            refused.append((status, answer))
    assert refused, "40 typing changes in a burst were all accepted"
    assert all(status == 429 and answer["errcode"] == "M_LIMIT_EXCEEDED" and answer["retry_after_ms"] > 0
               for status, answer in refused)
    api(gateway, "POST", f"/_matrix/client/v3/rooms/{Q(room)}/leave", {}, token=token)


# -- receipts -------------------------------------------------------------------------------------

def test_read_receipt_wakes_a_long_poll(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    event_id = send(gateway, room, tokens["alice"], "read me")
    since = sync(gateway, tokens["alice"])["next_batch"]
    poll = LongPoll(gateway, tokens["alice"], since)
    api(gateway, "POST", receipt_path(room, "m.read", event_id), {}, token=tokens["bob"])
    answer = poll.result()
    assert poll.elapsed < 10, "the long-poll was not woken by the receipt"
    [content] = ephemeral(answer, room, "m.receipt")
    assert set(content) == {event_id}
    assert set(content[event_id]["m.read"]) == {BOB}
    assert isinstance(content[event_id]["m.read"][BOB]["ts"], int)
    # An initial sync has it too.
    [content] = ephemeral(sync(gateway, tokens["alice"]), room, "m.receipt")
    assert BOB in content[event_id]["m.read"]


def test_the_ephemeral_filter_leaves_out_what_it_names(gateway: GatewayProcess, tokens: dict[str, str],
                                                       room: str) -> None:
    """`room.ephemeral` of the sync filter (types / not_types / not_rooms) is honoured: receipts
    left out by not_types, typing kept; a room whose only news is filtered out does not appear."""
    event_id = send(gateway, room, tokens["alice"], "filter me")
    api(gateway, "POST", receipt_path(room, "m.read", event_id), {}, token=tokens["bob"])
    api(gateway, "PUT", typing_path(room, BOB), {"typing": True, "timeout": 30000}, token=tokens["bob"])

    def filtered(ephemeral_filter: dict[str, Any], since: str | None = None) -> dict[str, Any]:
        query = {"filter": json.dumps({"room": {"ephemeral": ephemeral_filter}}), "timeout": "0"}
        if since:
            query["since"] = since
        return api(gateway, "GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query),
                   token=tokens["alice"])

    answer = filtered({"not_types": ["m.receipt"]})
    assert ephemeral(answer, room, "m.receipt") == []
    assert ephemeral(answer, room, "m.typing"), "typing was left out too"
    answer = filtered({"types": ["m.receipt"]})
    assert ephemeral(answer, room, "m.receipt") and ephemeral(answer, room, "m.typing") == []
    assert ephemeral(filtered({"not_rooms": [room]}), room, "m.receipt") == []
    # An incremental sync whose only news is a receipt the filter leaves out: the room stays away.
    since = filtered({"not_types": ["m.receipt"]})["next_batch"]
    event2 = send(gateway, room, tokens["alice"], "again")
    since = filtered({"not_types": ["m.receipt"]}, since)["next_batch"]
    api(gateway, "POST", receipt_path(room, "m.read", event2), {}, token=tokens["bob"])
    answer = filtered({"not_types": ["m.receipt", "m.typing"]}, since)
    assert room not in answer.get("rooms", {}).get("join", {}), answer["rooms"]["join"].get(room)
    api(gateway, "PUT", typing_path(room, BOB), {"typing": False}, token=tokens["bob"])


def test_threaded_and_private_receipts(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    root = send(gateway, room, tokens["alice"], "thread root")
    since_alice = sync(gateway, tokens["alice"])["next_batch"]
    since_bob = sync(gateway, tokens["bob"])["next_batch"]
    api(gateway, "POST", receipt_path(room, "m.read", root), {"thread_id": "main"}, token=tokens["bob"])
    api(gateway, "POST", receipt_path(room, "m.read", root), {"thread_id": root}, token=tokens["bob"])
    api(gateway, "POST", receipt_path(room, "m.read.private", root), {}, token=tokens["bob"])
    [content] = ephemeral(sync(gateway, tokens["alice"], since_alice), room, "m.receipt")
    assert content[root]["m.read"][BOB]["thread_id"] in ("main", root)
    assert "m.read.private" not in content[root], "another user's private receipt was shown"
    [mine] = ephemeral(sync(gateway, tokens["bob"], since_bob), room, "m.receipt")
    assert BOB in mine[root]["m.read.private"]
    assert "m.read.private" not in ephemeral(sync(gateway, tokens["alice"]), room, "m.receipt")[0][root]


def test_receipts_only_move_forward(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    older = send(gateway, room, tokens["alice"], "older")
    newer = send(gateway, room, tokens["alice"], "newer")
    api(gateway, "POST", receipt_path(room, "m.read", newer), {}, token=tokens["bob"])
    since = sync(gateway, tokens["alice"])["next_batch"]
    api(gateway, "POST", receipt_path(room, "m.read", older), {}, token=tokens["bob"])  # accepted, ignored
    answer = sync(gateway, tokens["alice"], since)
    assert ephemeral(answer, room, "m.receipt") == []
    [content] = ephemeral(sync(gateway, tokens["alice"]), room, "m.receipt")
    assert BOB in content[newer]["m.read"] and (older not in content or BOB not in content[older]["m.read"])


def test_receipt_errors_store_nothing(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    event_id = send(gateway, room, tokens["alice"], "not to be read by mistake")
    other_room = api(gateway, "POST", "/_matrix/client/v3/createRoom", {}, token=tokens["alice"])["room_id"]
    elsewhere = send(gateway, other_room, tokens["alice"], "in another room")
    since = sync(gateway, tokens["alice"])["next_batch"]
    bob = tokens["bob"]
    cases = [
        (receipt_path(room, "m.seen", event_id), {}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.read", event_id), {"thread_id": 5}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.read", event_id), {"thread_id": ""}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.read", event_id), {"thread_id": "side"}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.fully_read", event_id), {"thread_id": "main"}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.read", "no-sigil"), {}, bob, 400, "M_INVALID_PARAM"),
        (receipt_path(room, "m.read", "$unknown"), {}, bob, 404, "M_NOT_FOUND"),
        (receipt_path(room, "m.read", elsewhere), {}, bob, 404, "M_NOT_FOUND"),  # not in this room
        (receipt_path(room, "m.read", event_id), {}, tokens["carol"], 403, "M_FORBIDDEN"),  # not a member
        (receipt_path(room, "m.read", event_id), [1], bob, 400, "M_BAD_JSON"),
    ]
    for path, body, token, status, errcode in cases:
        answer = api(gateway, "POST", path, body, token=token, expect=status)
        assert answer["errcode"] == errcode, (path, body, answer)
    # read_markers: one bad event and nothing of the request is kept.
    markers = f"/_matrix/client/v3/rooms/{Q(room)}/read_markers"
    assert api(gateway, "POST", markers, {"m.read": event_id, "m.fully_read": "$unknown"}, token=bob,
               expect=404)["errcode"] == "M_NOT_FOUND"
    assert api(gateway, "POST", markers, {"m.read.private": event_id, "m.read": 7}, token=bob,
               expect=400)["errcode"] == "M_INVALID_PARAM"
    answer = sync(gateway, tokens["alice"], since)
    assert ephemeral(answer, room, "m.receipt") == []
    assert answer["next_batch"] == since
    assert ephemeral(sync(gateway, bob, since), room, "m.receipt") == []


def test_read_markers_and_fully_read_receipt(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    event_id = send(gateway, room, tokens["alice"], "marker")
    since = sync(gateway, tokens["alice"])["next_batch"]
    api(gateway, "POST", f"/_matrix/client/v3/rooms/{Q(room)}/read_markers",
        {"m.fully_read": event_id, "m.read": event_id}, token=tokens["bob"])
    api(gateway, "POST", receipt_path(room, "m.fully_read", event_id), {}, token=tokens["bob"])
    [content] = ephemeral(sync(gateway, tokens["alice"], since), room, "m.receipt")
    assert set(content[event_id]) == {"m.read"}  # the read marker is not a receipt
    api(gateway, "POST", f"/_matrix/client/v3/rooms/{Q(room)}/read_markers", {}, token=tokens["bob"])


def test_a_receipt_for_an_event_the_user_may_not_see_is_refused(gateway: GatewayProcess,
                                                                tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room_id = api(gateway, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    }, token=alice)["room_id"]
    before_bob = send(gateway, room_id, alice, "before bob joined")
    api(gateway, "POST", f"/_matrix/client/v3/join/{Q(room_id)}", {}, token=bob)
    since = sync(gateway, alice)["next_batch"]
    for kind in ("m.read", "m.read.private", "m.fully_read"):
        answer = api(gateway, "POST", receipt_path(room_id, kind, before_bob), {}, token=bob, expect=404)
        assert answer["errcode"] == "M_NOT_FOUND"
    assert ephemeral(sync(gateway, alice, since), room_id, "m.receipt") == []
    seen = send(gateway, room_id, alice, "after bob joined")
    api(gateway, "POST", receipt_path(room_id, "m.read", seen), {}, token=bob)


def test_receipts_survive_a_restart(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    """Last in the module: it restarts the module's hub (typing, kept in memory, starts afresh)."""
    event_id = send(gateway, room, tokens["alice"], "kept")
    api(gateway, "POST", receipt_path(room, "m.read", event_id), {}, token=tokens["bob"])
    for typing in (True, False, True, False):  # the typing stream moves a few places
        api(gateway, "PUT", typing_path(room, ALICE), {"typing": typing}, token=tokens["alice"])
    before = sync(gateway, tokens["alice"])
    assert gateway.stop() == 0
    gateway.start()
    after = sync(gateway, tokens["alice"])
    [content] = ephemeral(after, room, "m.receipt")
    assert BOB in content[event_id]["m.read"]
    # The receipt stream's position was kept: the old token has nothing new, and a new receipt moves on.
    assert ephemeral(sync(gateway, tokens["alice"], before["next_batch"]), room, "m.receipt") == []
    newer = send(gateway, room, tokens["alice"], "after restart")
    api(gateway, "POST", receipt_path(room, "m.read", newer), {}, token=tokens["bob"])
    [content] = ephemeral(sync(gateway, tokens["alice"], before["next_batch"]), room, "m.receipt")
    assert BOB in content[newer]["m.read"]
    # Typing is not kept, but its stream moves on past the old token's position: a client holding
    # a token from before the restart sees typing after it.
    api(gateway, "PUT", typing_path(room, BOB), {"typing": True, "timeout": 20_000}, token=tokens["bob"])
    assert ephemeral(sync(gateway, tokens["alice"], before["next_batch"]), room, "m.typing") == [{"user_ids": [BOB]}]

