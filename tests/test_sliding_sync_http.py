"""Simplified Sliding Sync (MSC4186) over raw HTTP (urllib): each request field, the answers'
room fields, long-polling, `pos` handling and bad input (issue 19)."""
from __future__ import annotations

import itertools
import threading
import time
import urllib.parse
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
_names = itertools.count()


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class User:
    def __init__(self, gw: GatewayProcess, localpart: str) -> None:
        self.gw = gw
        self.user_id = gw.add_user(localpart, PASSWORD)
        self.token = gw.login(localpart, PASSWORD)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.gw.request(method, path, body, token=self.token)
        assert status == 200, (path, status, answer)
        return answer

    def room(self, name: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {"preset": "private_chat", **extra}
        if name:
            body["name"] = name
        return self.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"]

    def say(self, room_id: str, text: str) -> str:
        return self.call("POST", f"/_matrix/client/v3/rooms/{Q(room_id)}/send/m.room.message",
                         {"msgtype": "m.text", "body": text})["event_id"]

    def ss(self, body: dict[str, Any], pos: str | None = None, timeout: int | None = None) -> tuple[int, Any]:
        query = {k: v for k, v in (("pos", pos), ("timeout", timeout)) if v is not None}
        path = SS + ("?" + urllib.parse.urlencode(query) if query else "")
        return self.gw.request("POST", path, body, token=self.token)

    def ok(self, body: dict[str, Any], pos: str | None = None, timeout: int | None = None) -> Any:
        status, answer = self.ss(body, pos, timeout)
        assert status == 200, answer
        return answer


@pytest.fixture()
def user(gateway: GatewayProcess) -> User:
    return User(gateway, f"ss{next(_names)}")


@pytest.fixture()
def other(gateway: GatewayProcess) -> User:
    return User(gateway, f"sso{next(_names)}")


def a_list(ranges: list[list[int]], **extra: Any) -> dict[str, Any]:
    return {"lists": {"all": {"ranges": ranges, "timeline_limit": 1, "required_state": [], **extra}}}


def test_list_is_sorted_by_recency_with_count_and_ranges(user: User) -> None:
    rooms = [user.room(f"r{i}") for i in range(4)]
    user.say(rooms[1], "newest")
    answer = user.ok(a_list([[0, 1]]))
    assert answer["lists"]["all"]["count"] == 4
    assert set(answer["rooms"]) == {rooms[1], rooms[3]}  # the two most recent
    assert answer["rooms"][rooms[1]]["bump_stamp"] > answer["rooms"][rooms[3]]["bump_stamp"]
    body = answer["rooms"][rooms[1]]
    assert body["initial"] is True and body["name"] == "r1"
    assert [ev["content"]["body"] for ev in body["timeline"]] == ["newest"]
    assert body["limited"] is True and body["prev_batch"]
    assert body["joined_count"] == 1 and body["invited_count"] == 0
    assert body["notification_count"] == 0 and body["highlight_count"] == 0
    # a second range, and a range past the end: each room once
    answer = user.ok(a_list([[2, 3], [3, 50]]))
    assert set(answer["rooms"]) == {rooms[0], rooms[2]}


def test_incremental_sync_sends_only_new_events_and_wakes_on_a_message(user: User) -> None:
    room = user.room("chat")
    first = user.ok(a_list([[0, 10]], timeline_limit=5))
    assert room in first["rooms"]
    # nothing new: an empty answer after the timeout, no rooms
    again = user.ok(a_list([[0, 10]], timeline_limit=5), pos=first["pos"], timeout=0)
    assert again["rooms"] == {}
    got: dict[str, Any] = {}

    def poll() -> None:
        got["answer"] = user.ok(a_list([[0, 10]], timeline_limit=5), pos=again["pos"], timeout=10_000)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)  # let the poll start waiting (its wake-up is what is measured)
    sent_at = time.monotonic()
    user.say(room, "wake up")
    thread.join(15)
    assert got["at"] - sent_at < 1.0
    body = got["answer"]["rooms"][room]
    assert "initial" not in body
    assert [ev["content"]["body"] for ev in body["timeline"]] == ["wake up"]
    assert body["num_live"] == 1 and body["limited"] is False


def test_a_message_in_a_room_of_someone_else_does_not_wake_or_show(user: User, other: User) -> None:
    mine = user.room("mine")
    theirs = other.room("theirs")
    first = user.ok(a_list([[0, 10]]))
    assert set(first["rooms"]) == {mine}
    other.say(theirs, "secret")
    answer = user.ok(a_list([[0, 10]]), pos=first["pos"], timeout=300)
    assert answer["rooms"] == {}
    status, err = user.ss({"room_subscriptions": {theirs: {"timeline_limit": 5}}})
    assert status == 200 and theirs not in err["rooms"], err


def test_invite_appears_with_invite_state(user: User, other: User) -> None:
    first = user.ok(a_list([[0, 10]]))
    room = other.room("party")
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": user.user_id})
    answer = user.ok(a_list([[0, 10]]), pos=first["pos"], timeout=5000)
    body = answer["rooms"][room]
    assert any(ev["type"] == "m.room.name" and ev["content"]["name"] == "party" for ev in body["invite_state"])
    assert any(ev["type"] == "m.room.member" and ev["state_key"] == user.user_id for ev in body["invite_state"])
    # filters: is_invite
    only_invites = user.ok(a_list([[0, 10]], filters={"is_invite": True}))
    assert set(only_invites["rooms"]) == {room}
    no_invites = user.ok(a_list([[0, 10]], filters={"is_invite": False}))
    assert room not in no_invites["rooms"]


def test_required_state_selection(user: User, other: User) -> None:
    room = user.room("state", topic="a topic")
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": other.user_id})
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/join", {})
    other.say(room, "hi")

    def keys(required: list[list[str]], limit: int = 1) -> set[tuple[str, str]]:
        answer = user.ok({"room_subscriptions": {room: {"timeline_limit": limit, "required_state": required}}})
        return {(ev["type"], ev["state_key"]) for ev in answer["rooms"][room]["required_state"]}

    assert keys([["m.room.topic", ""]]) == {("m.room.topic", "")}
    assert keys([["m.room.member", "$ME"]]) == {("m.room.member", user.user_id)}
    assert keys([["m.room.member", "$LAZY"]]) == {("m.room.member", other.user_id), ("m.room.member", user.user_id)}
    assert keys([["m.room.member", "*"]]) == {("m.room.member", user.user_id), ("m.room.member", other.user_id)}
    everything = keys([["*", "*"]])
    assert {("m.room.create", ""), ("m.room.topic", ""), ("m.room.name", "")} <= everything
    assert keys([]) == set()


def test_heroes_avatar_and_dm_filter(user: User, other: User) -> None:
    dm = user.room(None, is_direct=True, invite=[other.user_id])
    user.call("PUT", f"/_matrix/client/v3/user/{Q(user.user_id)}/account_data/m.direct", {other.user_id: [dm]})
    named = user.room("named")
    user.call("PUT", f"/_matrix/client/v3/rooms/{Q(named)}/state/m.room.avatar", {"url": "mxc://localhost/abc"})
    answer = user.ok(a_list([[0, 10]], filters={"is_dm": True}))
    assert set(answer["rooms"]) == {dm}
    body = answer["rooms"][dm]
    assert "name" not in body and [h["user_id"] for h in body["heroes"]] == [other.user_id]
    assert body["invited_count"] == 1
    answer = user.ok(a_list([[0, 10]], filters={"is_dm": False}))
    assert set(answer["rooms"]) == {named} and answer["rooms"][named]["avatar"] == "mxc://localhost/abc"


def test_encrypted_and_room_type_filters(user: User) -> None:
    plain = user.room("plain")
    secret = user.room("secret", initial_state=[{"type": "m.room.encryption", "state_key": "",
                                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    space = user.room("space", creation_content={"type": "m.space"})
    assert set(user.ok(a_list([[0, 9]], filters={"is_encrypted": True}))["rooms"]) == {secret}
    assert set(user.ok(a_list([[0, 9]], filters={"room_types": ["m.space"]}))["rooms"]) == {space}
    assert set(user.ok(a_list([[0, 9]], filters={"not_room_types": ["m.space"]}))["rooms"]) == {plain, secret}
    assert set(user.ok(a_list([[0, 9]], filters={"room_types": [None]}))["rooms"]) == {plain, secret}


def test_unknown_or_stale_pos_is_m_unknown_pos(user: User) -> None:
    first = user.ok(a_list([[0, 1]]))
    for pos in ("nonsense", "abcd-1", first["pos"].split("-")[0] + "-999"):
        status, err = user.ss(a_list([[0, 1]]), pos=pos)
        assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS"), pos
    # another connection id has no such pos
    status, err = user.ss({**a_list([[0, 1]]), "conn_id": "other"}, pos=first["pos"])
    assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")
    # the previous pos still works (a retried request)
    second = user.ok(a_list([[0, 1]]), pos=first["pos"])
    assert user.ok(a_list([[0, 1]]), pos=first["pos"])["pos"] != second["pos"]


@pytest.mark.parametrize("body, errcode", [
    ({"lists": {"a": {"ranges": [[-1, 5]]}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[5, 1]]}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[0, 10**12]]}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[0, 1]] * 1000}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[0, "9"]]}}}, "M_INVALID_PARAM"),
    ({"lists": {str(i): {} for i in range(10_000)}}, "M_INVALID_PARAM"),  # under the body size cap
    ({"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": -1}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[0, 1]], "required_state": [["m.room.name"]]}}}, "M_INVALID_PARAM"),
    ({"lists": {"a": {"ranges": [[0, 1]], "filters": {"is_dm": "yes"}}}}, "M_INVALID_PARAM"),
    ({"lists": []}, "M_BAD_JSON"),
    ({"lists": {"a": {"ranges": {}}}}, "M_BAD_JSON"),
    ({"room_subscriptions": {"not-a-room": {}}}, "M_INVALID_PARAM"),
    ({"extensions": {"to_device": []}}, "M_BAD_JSON"),
    ({"conn_id": 5}, "M_INVALID_PARAM"),
])
def test_bad_bodies_are_refused_fast(user: User, body: dict[str, Any], errcode: str) -> None:
    started = time.monotonic()
    status, err = user.ss(body)
    assert (status, err["errcode"]) == (400, errcode), err
    assert time.monotonic() - started < 2.0


def test_unknown_extensions_and_fields_are_ignored(user: User) -> None:
    answer = user.ok({**a_list([[0, 1]]), "extensions": {"org.example.future": {"enabled": True}},
                      "unknown_field": 1})
    assert "org.example.future" not in answer["extensions"]


def test_no_token_is_refused(gateway: GatewayProcess) -> None:
    status, err = gateway.request("POST", SS, {})
    assert (status, err["errcode"]) == (401, "M_MISSING_TOKEN")


def test_room_subscription_is_sticky_until_unsubscribed(user: User) -> None:
    room = user.room("sub")
    first = user.ok({"room_subscriptions": {room: {"timeline_limit": 3, "required_state": [["m.room.name", ""]]}}})
    assert [ev["type"] for ev in first["rooms"][room]["required_state"]] == ["m.room.name"]
    user.say(room, "still subscribed")
    second = user.ok({}, pos=first["pos"], timeout=5000)
    assert [ev["content"]["body"] for ev in second["rooms"][room]["timeline"]] == ["still subscribed"]
    third = user.ok({"unsubscribe_rooms": [room]}, pos=second["pos"])
    user.say(room, "not any more")
    fourth = user.ok({}, pos=third["pos"], timeout=300)
    assert room not in fourth["rooms"]


def test_extensions_account_data_receipts_typing_to_device_e2ee(user: User, other: User) -> None:
    room = user.room("ext")
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": other.user_id})
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/join", {})
    event_id = other.say(room, "read me")
    user.call("PUT", f"/_matrix/client/v3/user/{Q(user.user_id)}/account_data/org.example.g", {"a": 1})
    user.call("PUT", f"/_matrix/client/v3/user/{Q(user.user_id)}/rooms/{Q(room)}/account_data/org.example.r",
              {"b": 2})
    exts = {name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")}
    first = user.ok({**a_list([[0, 5]]), "extensions": exts})
    ext = first["extensions"]
    assert {"type": "org.example.g", "content": {"a": 1}} in ext["account_data"]["global"]
    assert any(ev["type"] == "m.push_rules" for ev in ext["account_data"]["global"])
    assert ext["account_data"]["rooms"][room] == [{"type": "org.example.r", "content": {"b": 2}}]
    assert ext["to_device"]["events"] == [] and ext["to_device"]["next_batch"]
    assert ext["e2ee"]["device_lists"] == {"changed": [], "left": []}
    assert "device_one_time_keys_count" in ext["e2ee"]
    # live: a receipt, typing and a to-device message each arrive on the open connection
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/receipt/m.read/{Q(event_id)}", {})
    second = user.ok({**a_list([[0, 5]]), "extensions": exts}, pos=first["pos"], timeout=5000)
    receipt = second["extensions"]["receipts"]["rooms"][room]
    assert receipt["type"] == "m.receipt" and other.user_id in receipt["content"][event_id]["m.read"]
    other.call("PUT", f"/_matrix/client/v3/rooms/{Q(room)}/typing/{Q(other.user_id)}",
               {"typing": True, "timeout": 10000})
    third = user.ok({**a_list([[0, 5]]), "extensions": exts}, pos=second["pos"], timeout=5000)
    assert third["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == [other.user_id]
    devices = user.call("GET", "/_matrix/client/v3/devices")["devices"]
    other.call("PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/t1",
               {"messages": {user.user_id: {devices[0]["device_id"]: {"n": 1}}}})
    exts["to_device"]["since"] = third["extensions"]["to_device"]["next_batch"]
    fourth = user.ok({**a_list([[0, 5]]), "extensions": exts}, pos=third["pos"], timeout=5000)
    assert [ev["content"] for ev in fourth["extensions"]["to_device"]["events"]] == [{"n": 1}]
    # acknowledged by the next since: not sent again
    exts["to_device"]["since"] = fourth["extensions"]["to_device"]["next_batch"]
    fifth = user.ok({**a_list([[0, 5]]), "extensions": exts}, pos=fourth["pos"], timeout=0)
    assert fifth["extensions"]["to_device"]["events"] == []


def test_versions_advertises_simplified_sliding_sync(gateway: GatewayProcess) -> None:
    status, body = gateway.request("GET", "/_matrix/client/versions")
    assert status == 200 and body["unstable_features"]["org.matrix.simplified_msc3575"] is True


def test_leaving_a_room_is_sent_once_then_the_room_is_gone(user: User, other: User) -> None:
    room = other.room("leave me")
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": user.user_id})
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/join", {})
    first = user.ok(a_list([[0, 5]]))
    assert first["rooms"][room]["initial"] is True
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/leave", {})
    second = user.ok(a_list([[0, 5]]), pos=first["pos"], timeout=5000)
    leave = second["rooms"][room]["timeline"][-1]
    assert (leave["type"], leave["state_key"], leave["content"]["membership"]) == (
        "m.room.member", user.user_id, "leave")
    assert second["lists"]["all"]["count"] == 0
    other.say(room, "after you left")
    third = user.ok(a_list([[0, 5]]), pos=second["pos"], timeout=300)
    assert room not in third["rooms"]


def test_sticky_subscriptions_are_bounded_per_connection(user: User) -> None:
    first = user.ok({"room_subscriptions": {f"!r{i}:localhost": {} for i in range(150)}})
    status, err = user.ss({"room_subscriptions": {f"!s{i}:localhost": {} for i in range(150)}}, pos=first["pos"])
    assert (status, err["errcode"]) == (400, "M_INVALID_PARAM")
    # nothing was kept from the refused request: the connection goes on from its pos
    assert user.ok({"unsubscribe_rooms": [f"!r{i}:localhost" for i in range(100)]}, pos=first["pos"])["rooms"] == {}


def test_many_connections_of_one_user_evict_only_their_own(user: User, other: User) -> None:
    theirs = other.ok({"conn_id": "keep"})
    oldest = user.ok({"conn_id": "c0"})
    for i in range(1, 20):
        user.ok({"conn_id": f"c{i}"})
    assert other.ss({"conn_id": "keep"}, pos=theirs["pos"])[0] == 200
    status, err = user.ss({"conn_id": "c0"}, pos=oldest["pos"])
    assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")  # the client starts over
    assert user.ss({"conn_id": "c19"}, pos=user.ok({"conn_id": "c19"})["pos"])[0] == 200


def test_spaces_filter_lists_the_space_children(user: User) -> None:
    space = user.room("space", creation_content={"type": "m.space"})
    child = user.room("child")
    user.room("elsewhere")
    user.call("PUT", f"/_matrix/client/v3/rooms/{Q(space)}/state/m.space.child/{Q(child)}", {"via": ["localhost"]})
    answer = user.ok(a_list([[0, 9]], filters={"spaces": [space]}))
    assert set(answer["rooms"]) == {child} and answer["lists"]["all"]["count"] == 1


def test_history_before_joining_stays_hidden(user: User, other: User) -> None:
    room = other.room("hidden past", initial_state=[{"type": "m.room.history_visibility", "state_key": "",
                                                     "content": {"history_visibility": "joined"}}])
    other.say(room, "before you came")
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": user.user_id})
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/join", {})
    other.say(room, "after you came")
    body = user.ok(a_list([[0, 5]], timeline_limit=10))["rooms"][room]
    texts = [ev["content"].get("body") for ev in body["timeline"] if ev["type"] == "m.room.message"]
    assert texts == ["after you came"]


def _long_poll(user: User, body: dict[str, Any], pos: str, act: Any) -> tuple[Any, float]:
    """Start a long-poll (10 s), do `act` while it waits, and return its answer and how long after
    `act` it came (a wake-up, not the timeout)."""
    got: dict[str, Any] = {}

    def poll() -> None:
        got["answer"] = user.ok(body, pos=pos, timeout=10_000)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)  # let the poll start waiting (its wake-up is what is measured)
    done_at = time.monotonic()
    act()
    thread.join(15)
    assert "answer" in got
    return got["answer"], got["at"] - done_at


def test_a_read_receipt_resends_a_quiet_room_with_its_new_counts(user: User, other: User) -> None:
    """Counts moved by the user's own read (no new event, receipts extension off) re-send the room
    with only its new counts; a private read marker does too."""
    room = user.room("counts")
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": other.user_id})
    other.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/join", {})
    first = user.ok(a_list([[0, 5]]))
    assert first["rooms"][room]["notification_count"] == 0
    event_id = other.say(room, "unread")
    second = user.ok(a_list([[0, 5]]), pos=first["pos"], timeout=5000)
    assert second["rooms"][room]["notification_count"] == 1
    quiet = user.ok(a_list([[0, 5]]), pos=second["pos"], timeout=0)
    assert quiet["rooms"] == {}
    answer, took = _long_poll(user, a_list([[0, 5]]), quiet["pos"], lambda: user.call(
        "POST", f"/_matrix/client/v3/rooms/{Q(room)}/receipt/m.read/{Q(event_id)}", {}))
    assert took < 1.0
    assert answer["rooms"][room]["notification_count"] == 0
    assert answer["rooms"][room]["highlight_count"] == 0
    assert "timeline" not in answer["rooms"][room]
    # the same counts again are no news: the next long-poll is empty
    again = user.ok(a_list([[0, 5]]), pos=answer["pos"], timeout=0)
    assert again["rooms"] == {}
    # unread again, then read with a private read marker (not shown to anyone but the reader)
    second_id = other.say(room, "unread again")
    unread = user.ok(a_list([[0, 5]]), pos=again["pos"], timeout=5000)
    assert unread["rooms"][room]["notification_count"] == 1
    answer, took = _long_poll(user, a_list([[0, 5]]), unread["pos"], lambda: user.call(
        "POST", f"/_matrix/client/v3/rooms/{Q(room)}/read_markers",
        {"m.fully_read": second_id, "m.read.private": second_id}))
    assert took < 1.0 and answer["rooms"][room]["notification_count"] == 0
    # the other user's sliding sync does not show the room for the user's read
    theirs = other.ok(a_list([[0, 5]]))
    user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/receipt/m.read/{Q(second_id)}", {})
    assert other.ok(a_list([[0, 5]]), pos=theirs["pos"], timeout=0)["rooms"] == {}


def test_threads_extension_names_threads_with_missed_replies(user: User) -> None:
    """MSC4360: without include_roots only threads whose replies the timeline did not carry are
    named (with a /relations prev_batch when more than one was missed); with include_roots every
    updated thread comes with its bundled root. Nothing on a connection's first answer."""
    room = user.room("threads")
    root = user.say(room, "root")

    def reply(text: str) -> str:
        return user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message",
                         {"msgtype": "m.text", "body": text,
                          "m.relates_to": {"rel_type": "m.thread", "event_id": root}})["event_id"]

    unstable = "io.element.msc4360.threads"
    lean = {**a_list([[0, 5]]), "extensions": {unstable: {"enabled": True, "include_roots": False}}}
    full = {**a_list([[0, 5]]), "extensions": {"threads": {"enabled": True, "include_roots": True}},
            "conn_id": "full"}
    first, first_full = user.ok(lean), user.ok(full)
    assert unstable not in first["extensions"] and "threads" not in first_full["extensions"]
    r1 = reply("r1")
    reply("r2")
    second = user.ok(lean, pos=first["pos"], timeout=5000)  # timeline_limit 1: r1 was not sent
    entry = second["extensions"][unstable]["updates"][room][root]
    assert "thread_root" not in entry
    page = user.call("GET", f"/_matrix/client/v3/rooms/{Q(room)}/relations/{Q(root)}/m.thread"
                            f"?dir=b&limit=1&from={entry['prev_batch']}")
    assert [ev["event_id"] for ev in page["chunk"]] == [r1]
    reply("r3")
    third = user.ok(lean, pos=second["pos"], timeout=5000)  # r3 came down the timeline: not named
    assert [ev["content"]["body"] for ev in third["rooms"][room]["timeline"]] == ["r3"]
    assert unstable not in third["extensions"]
    full_next = user.ok(full, pos=first_full["pos"], timeout=5000)
    thread_root = full_next["extensions"]["threads"]["updates"][room][root]["thread_root"]
    assert thread_root["event_id"] == root
    bundle = thread_root["unsigned"]["m.relations"]["m.thread"]
    assert bundle["count"] == 3 and bundle["latest_event"]["content"]["body"] == "r3"
    # a quiet connection: nothing, and the section is left out
    assert "threads" not in user.ok(full, pos=full_next["pos"], timeout=0)["extensions"]


def test_thread_updates_page_what_the_threads_extension_left_out(user: User) -> None:
    """Past the extension's `limit` a top-level prev_batch leads to /thread_updates, which pages
    the rest (each thread once) down to the request's `pos`."""
    room = user.room("many threads")
    body = {**a_list([[0, 5]], timeline_limit=0),
            "extensions": {"io.element.msc4360.threads": {"enabled": True, "limit": 1}}}
    first = user.ok(body)
    roots = [user.say(room, f"root {i}") for i in range(3)]
    for i, root in enumerate(roots):
        user.call("POST", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message",
                  {"msgtype": "m.text", "body": f"reply {i}", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    second = user.ok(body, pos=first["pos"], timeout=5000)
    threads = second["extensions"]["io.element.msc4360.threads"]
    assert list(threads["updates"][room]) == [roots[2]]
    base = "/_matrix/client/unstable/io.element.msc4360/thread_updates?dir=b"
    rest = user.call("GET", f"{base}&from={Q(threads['prev_batch'])}&to={Q(first['pos'])}")
    assert list(rest["chunk"][room]) == [roots[1], roots[0]] and "next_batch" not in rest
    assert rest["chunk"][room][roots[0]]["thread_root"]["content"]["body"] == "root 0"
    # from the present, two a page
    page = user.call("GET", f"{base}&to={Q(first['pos'])}&limit=2")
    assert list(page["chunk"][room]) == [roots[2], roots[1]]
    page = user.call("GET", f"{base}&to={Q(first['pos'])}&limit=2&from={Q(page['next_batch'])}")
    assert list(page["chunk"][room]) == [roots[0]] and "next_batch" not in page
    for bad in ("dir=f", "dir=b&from=nonsense", "dir=b&from=u9_1", "dir=b&to=zz-1"):
        status, answer = user.gw.request("GET", f"/_matrix/client/unstable/io.element.msc4360/thread_updates?{bad}",
                                         token=user.token)
        assert status == 400 and answer["errcode"] in ("M_INVALID_PARAM", "M_UNKNOWN_POS"), (bad, answer)


def test_thread_updates_refuses_a_limit_of_zero_and_a_missing_dir(user: User) -> None:
    """MSC4360: `limit` "must be greater than zero" (0 and negatives are M_INVALID_PARAM, not
    quietly 1; more than the server's ceiling is clamped); `dir` is required (M_MISSING_PARAM,
    as for /messages)."""
    base = "/_matrix/client/unstable/io.element.msc4360/thread_updates"
    for query, code in (("dir=b&limit=0", "M_INVALID_PARAM"), ("dir=b&limit=-3", "M_INVALID_PARAM"),
                        ("dir=b&limit=x", "M_INVALID_PARAM"), ("limit=5", "M_MISSING_PARAM")):
        status, answer = user.gw.request("GET", f"{base}?{query}", token=user.token)
        assert (status, answer["errcode"]) == (400, code), (query, answer)
    status, answer = user.gw.request("GET", f"{base}?dir=b&limit=100000", token=user.token)
    assert status == 200 and "chunk" in answer


def test_thread_updates_pages_past_threads_the_user_may_not_see(user: User, other: User) -> None:
    """History visibility `joined`, the user left and came back: the threads updated while they
    were away are not theirs to see, and must not hide (by filling a room's page and then being
    filtered out) the older thread they did see: paging on from `next_batch` reaches it."""
    room = other.room("away", initial_state=[{"type": "m.room.history_visibility", "state_key": "",
                                              "content": {"history_visibility": "joined"}}])
    path = f"/_matrix/client/v3/rooms/{Q(room)}"
    other.call("POST", f"{path}/invite", {"user_id": user.user_id})
    user.call("POST", f"{path}/join", {})

    def thread(text: str) -> str:
        root = other.say(room, text)
        other.call("POST", f"{path}/send/m.room.message", {"msgtype": "m.text", "body": f"re {text}",
                                                          "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        return root

    seen = thread("seen")
    user.call("POST", f"{path}/leave", {})
    hidden = {thread("while away 1"), thread("while away 2")}
    other.call("POST", f"{path}/invite", {"user_id": user.user_id})
    user.call("POST", f"{path}/join", {})
    base = "/_matrix/client/unstable/io.element.msc4360/thread_updates?dir=b&limit=1"
    got: list[str] = []
    page = user.call("GET", base)
    for _ in range(5):
        got += list(page["chunk"].get(room, {}))
        if "next_batch" not in page:
            break
        page = user.call("GET", f"{base}&from={Q(page['next_batch'])}")
    assert got == [seen] and not hidden & set(got)
