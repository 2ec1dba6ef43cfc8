"""The history visibility rules (matrix_core/history_visibility.py), pure: who sees which event."""
from __future__ import annotations

import pytest

from matrix_core.history_visibility import VisibilityTimeline, always_open, membership_of, visible, visibility_of

U = "@erin:hub"


def tl(memberships: list[tuple[int, str]], visibilities: list[tuple[int, str]] | None = None) -> VisibilityTimeline:
    return VisibilityTimeline(U, tuple(memberships), tuple(visibilities or []))


def test_unknown_values_count_as_shared_and_leave() -> None:
    assert visibility_of({"history_visibility": "bogus"}) == "shared"
    assert visibility_of({}) == "shared"
    assert visibility_of("not a dict") == "shared"
    assert membership_of({"membership": "dance"}) == "leave"
    assert membership_of({"membership": "ban"}) == "ban"


@pytest.mark.parametrize("vis,expected", [("world_readable", True), ("shared", True), ("invited", False),
                                          ("joined", False)])
def test_always_open(vis: str, expected: bool) -> None:
    assert always_open([(1, "shared"), (5, vis)]) is expected
    assert always_open([])


def test_invited_then_rejected_never_sees_shared_history() -> None:
    """The campaign's L1: invited at 5, rejected (leave) at 9, messages at 2..8."""
    t = tl([(5, "invite"), (9, "leave")])
    assert not any(t.event_visible(p, "m.room.message", None, peeking=True) for p in range(2, 9))
    assert t.event_visible(9, "m.room.member", U, peeking=True), "one's own rejection stays visible"
    assert not t.state_visible_before(9)


def test_banned_before_joining_sees_nothing() -> None:
    t = tl([(4, "ban")])
    assert not any(t.event_visible(p, "m.room.message", None, peeking=True) for p in range(1, 10))
    assert not t.event_visible(4, "m.room.member", U, peeking=True)
    assert not t.state_visible_before(4)


def test_joined_then_left_sees_what_they_saw_while_joined() -> None:
    t = tl([(3, "join"), (8, "leave")])
    assert t.event_visible(3, "m.room.member", U, peeking=True)
    assert t.event_visible(5, "m.room.message", None, peeking=True)
    assert t.event_visible(8, "m.room.member", U, peeking=True)
    assert not t.event_visible(2, "m.room.message", None, peeking=True), "shared history is for current members"
    assert t.state_visible_before(8)


def test_shared_history_is_visible_to_current_members_from_before_their_join() -> None:
    t = tl([(6, "join")])
    assert t.event_visible(2, "m.room.message", None, peeking=False)


@pytest.mark.parametrize("vis", ["joined", "invited"])
def test_restricted_history_hides_what_came_before(vis: str) -> None:
    t = tl([(6, "invite"), (7, "join")], [(1, vis)])
    assert not t.event_visible(3, "m.room.message", None, peeking=False)
    assert t.event_visible(7, "m.room.member", U, peeking=False)
    assert t.event_visible(8, "m.room.message", None, peeking=False)
    # while invited (position 6 .. 7): only "invited" history shows it
    assert t.event_visible(6, "m.room.member", U, peeking=False) is (vis == "invited")


def test_the_visibility_change_itself_is_judged_by_the_less_restrictive_side() -> None:
    t = tl([], [(1, "world_readable"), (5, "joined")])
    assert t.event_visible(5, "m.room.history_visibility", "", peeking=True)
    assert not t.event_visible(6, "m.room.message", None, peeking=True)
    assert t.event_visible(4, "m.room.message", None, peeking=True)


def test_world_readable_history_is_for_everyone() -> None:
    assert visible(None, None, "world_readable", "world_readable", False, True)
    assert not visible(None, None, "shared", "shared", False, True)
    assert visible(None, None, "shared", "shared", False, False)


def test_the_lookups_read_the_partial_indexes(tmp_path) -> None:
    """A lookup walks a few membership/visibility rows, never the room's messages."""
    from matrix_core.store import history
    from matrix_core.store.database import open_sync

    conn = open_sync(tmp_path / "h.db")
    plans = {
        "events_member_changes": conn.execute("EXPLAIN QUERY PLAN " + history.MEMBERSHIP_CHANGES_SQL, ("!r", U)),
        "events_visibility_changes": conn.execute("EXPLAIN QUERY PLAN " + history.VISIBILITY_CHANGES_SQL, ("!r",)),
    }
    for index, plan in plans.items():
        details = [row[3] for row in plan.fetchall()]
        assert details == [details[0]] and f"USING INDEX {index}" in details[0], details
