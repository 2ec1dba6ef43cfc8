"""The pure parts of Simplified Sliding Sync (matrix_core/sliding_sync_rules.py), without a hub."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from matrix_core import errors
from matrix_core import sliding_sync_rules as rules


def ev(content: dict[str, Any], sender: str = "@a:h") -> SimpleNamespace:
    return SimpleNamespace(content=content, sender=sender)


STATE = {
    ("m.room.create", ""): ev({}),
    ("m.room.name", ""): ev({"name": "Kitchen"}),
    ("m.room.topic", ""): ev({"topic": "t"}),
    ("m.room.member", "@me:h"): ev({"membership": "join"}),
    ("m.room.member", "@a:h"): ev({"membership": "join", "displayname": "A", "avatar_url": "mxc://h/a"}),
    ("m.room.member", "@b:h"): ev({"membership": "invite"}),
    ("m.room.member", "@c:h"): ev({"membership": "leave"}),
}


def test_select_state_wildcards_me_and_lazy() -> None:
    assert rules.select_state(STATE, [("*", "*")], "@me:h", []) == list(STATE)
    assert set(rules.select_state(STATE, [("m.room.member", "*")], "@me:h", [])) == {
        k for k in STATE if k[0] == "m.room.member"}
    assert rules.select_state(STATE, [("m.room.member", "$ME")], "@me:h", []) == [("m.room.member", "@me:h")]
    assert set(rules.select_state(STATE, [("m.room.member", "$LAZY")], "@me:h", ["@a:h"])) == {
        ("m.room.member", "@me:h"), ("m.room.member", "@a:h")}
    assert rules.select_state(STATE, [("m.room.topic", ""), ("m.room.avatar", "")], "@me:h", []) == [
        ("m.room.topic", "")]
    assert rules.select_state(STATE, [("*", "@b:h")], "@me:h", []) == [("m.room.member", "@b:h")]
    assert rules.select_state(STATE, [], "@me:h", ["@a:h"]) == []


def test_name_heroes_counts() -> None:
    assert rules.room_name(STATE) == "Kitchen"
    assert rules.room_name({("m.room.canonical_alias", ""): ev({"alias": "#k:h"})}) == "#k:h"
    assert rules.room_name({}) is None
    assert rules.heroes(STATE, "@me:h") == [
        {"user_id": "@a:h", "displayname": "A", "avatar_url": "mxc://h/a"}, {"user_id": "@b:h"}]
    assert rules.heroes({("m.room.member", "@c:h"): ev({"membership": "leave"})}, "@me:h") == [{"user_id": "@c:h"}]
    assert rules.member_counts(STATE) == (2, 1)
    assert rules.dm_rooms({"@a:h": ["!x:h", 5], "@b:h": "bad"}) == frozenset({"!x:h"})


def test_order_and_ranges() -> None:
    ordered = rules.order_rooms({"!a:h": 5, "!b:h": 9, "!c:h": 5})
    assert ordered == ["!b:h", "!a:h", "!c:h"]
    assert rules.in_ranges(ordered, [(1, 1), (0, 1), (2, 100)]) == ["!a:h", "!b:h", "!c:h"]
    assert rules.in_ranges(ordered, [(5, 9)]) == []


def test_filters() -> None:
    dm = rules.RoomFacts("!d:h", "join", True, True, None, frozenset({"!s:h"}))
    space = rules.RoomFacts("!s:h", "invite", False, False, "m.space")
    assert rules.matches(rules.ListFilters(is_dm=True, is_encrypted=True), dm)
    assert not rules.matches(rules.ListFilters(is_invite=True), dm)
    assert rules.matches(rules.ListFilters(is_invite=True, room_types=("m.space",)), space)
    assert not rules.matches(rules.ListFilters(not_room_types=("m.space",)), space)
    assert rules.matches(rules.ListFilters(spaces=("!s:h",)), dm)
    assert not rules.matches(rules.ListFilters(spaces=("!s:h",)), space)


def test_parse_request_bounds_and_merging() -> None:
    req = rules.parse_request({
        "lists": {"a": {"ranges": [[0, 9]], "timeline_limit": 10_000, "required_state": [["m.room.name", ""]]}},
        "room_subscriptions": {"!r:h": {"timeline_limit": 3}},
        "extensions": {"typing": {"enabled": True}, "future": {"x": 1}},
        "conn_id": "main",
    })
    assert req.lists["a"].config.timeline_limit == rules.MAX_TIMELINE_LIMIT
    assert set(req.extensions) == {"typing"} and req.conn_id == "main"
    merged = req.lists["a"].config.merge(req.subscriptions["!r:h"])
    assert merged == rules.RoomConfig(rules.MAX_TIMELINE_LIMIT, (("m.room.name", ""),))
    for bad in ({"lists": {"a": {"ranges": [[1, 0]]}}}, {"lists": {"": {}}},
                {"lists": {"a": {"ranges": [[True, 1]]}}}, {"unsubscribe_rooms": ["x"]}):
        with pytest.raises(errors.MatrixError) as info:
            rules.parse_request(bad)
        assert info.value.errcode == "M_INVALID_PARAM"


def test_pos_tokens() -> None:
    assert rules.parse_pos("ab12-7") == ("ab12", 7)
    for bad in ("", "ab12", "AB-1", "ab-" + "9" * 10, "ab-1-2"):
        with pytest.raises(errors.MatrixError) as info:
            rules.parse_pos(bad)
        assert info.value.errcode == "M_UNKNOWN_POS"


def test_thread_updates_one_per_thread_newest_first_and_covered_left_out() -> None:
    replies = {"!a:h": [("$t1", 5), ("$t1", 7), ("$t2", 6)], "!b:h": [("$t3", 9)]}
    chosen, more = rules.thread_updates(replies, {}, False, 10)
    assert [(u.room_id, u.root_id, u.latest, u.missed) for u in chosen] == [
        ("!b:h", "$t3", 9, 1), ("!a:h", "$t1", 7, 2), ("!a:h", "$t2", 6, 1)]
    assert more is False
    # !a:h's timeline in this answer starts at 6: $t2's only reply came down it, $t1's reply at 5 did not
    chosen, _ = rules.thread_updates(replies, {"!a:h": 6}, False, 10)
    assert [u.root_id for u in chosen] == ["$t3", "$t1"]
    # include_roots: every updated thread, covered or not; the limit keeps the newest
    chosen, more = rules.thread_updates(replies, {"!a:h": 5, "!b:h": 9}, True, 2)
    assert [u.root_id for u in chosen] == ["$t3", "$t1"] and more is True


def test_threads_extension_request_checks() -> None:
    req = rules.parse_request({"extensions": {"io.element.msc4360.threads": {"enabled": True, "include_roots": True,
                                                                              "limit": 5}}})
    assert req.extensions["io.element.msc4360.threads"]["include_roots"] is True
    for bad in ({"include_roots": "yes"}, {"limit": 0}, {"limit": -1}):
        with pytest.raises(errors.MatrixError) as info:
            rules.parse_request({"extensions": {"threads": {"enabled": True, **bad}}})
        assert info.value.errcode == "M_INVALID_PARAM"
