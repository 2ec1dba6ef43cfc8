"""Who may see which event of a room: the spec's history visibility rules, pure.

The client-server API ("Room history visibility") decides event by event from two facts at
that event: the room's `m.room.history_visibility` and the reader's membership. Synapse
(`synapse/visibility.py`) is the reference for the edge cases kept here:

- an event that *changes* one of the two facts is judged by the less restrictive of the values
  before and after it (so a member sees the visibility change that hides what follows, and a
  user sees the join that starts what they may read);
- a user always sees their own leave that ends a join or an invite (a rejected invite has to
  disappear from their client);
- `shared` history is for users who are joined *now* ("peeking" users, who left, see only what
  they saw while joined);
- an unknown or missing visibility counts as `shared`.

The facts are looked up in a `VisibilityTimeline`: the user's membership changes and the room's
visibility changes, each as (stream position, value) in position order. Positions follow the
room's DAG order for a hub's own rooms; with federated forks they are an approximation of the
state at each event (the same one the hub's stream order gives everywhere else).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

HISTORY_VISIBILITY = "m.room.history_visibility"
MEMBER = "m.room.member"

# Least to most restrictive.
VISIBILITIES = ("world_readable", "shared", "invited", "joined")
DEFAULT_VISIBILITY = "shared"
# Most to least "in the room".
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
_OPEN = frozenset({"world_readable", "shared"})


def visibility_of(content: Any) -> str:
    """The visibility an `m.room.history_visibility` content sets (unknown values: shared)."""
    value = content.get("history_visibility") if isinstance(content, dict) else None
    return value if value in VISIBILITIES else DEFAULT_VISIBILITY


def membership_of(content: Any) -> str:
    """The membership an `m.room.member` content sets (unknown values count as leave)."""
    value = content.get("membership") if isinstance(content, dict) else None
    return value if value in MEMBERSHIPS else "leave"


def always_open(visibility_changes: list[tuple[int, str]]) -> bool:
    """True when the room's history was never restricted: every member sees everything."""
    return all(vis in _OPEN for _, vis in visibility_changes)


def _less_restrictive(a: str, b: str) -> str:
    return a if VISIBILITIES.index(a) <= VISIBILITIES.index(b) else b


def _more_joined(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if MEMBERSHIPS.index(a) <= MEMBERSHIPS.index(b) else b


def visible(membership_before: str | None, membership_after: str | None, visibility_before: str,
            visibility_after: str, own_membership_event: bool, peeking: bool) -> bool:
    """May the user see one event, given the facts just before and just after it?

    `own_membership_event`: the event is the user's own `m.room.member`. `peeking`: the user is
    not joined to the room now."""
    if own_membership_event and membership_after == "leave" and membership_before in ("join", "invite"):
        return True
    membership = _more_joined(membership_before, membership_after)
    if membership == "join":
        return True
    visibility = _less_restrictive(visibility_before, visibility_after)
    if visibility == "world_readable":
        return True
    if visibility == "shared":
        return not peeking
    if visibility == "invited":
        return membership == "invite"
    return False


@dataclass(frozen=True, slots=True)
class VisibilityTimeline:
    """One user's membership changes and one room's visibility changes, by stream position."""
    user_id: str
    memberships: tuple[tuple[int, str], ...]
    visibilities: tuple[tuple[int, str], ...]

    @staticmethod
    def _value_at(changes: tuple[tuple[int, str], ...], pos: int, inclusive: bool) -> str | None:
        keys = [p for p, _ in changes]
        i = (bisect_right if inclusive else bisect_left)(keys, pos)
        return changes[i - 1][1] if i else None

    def membership_after(self, pos: int) -> str | None:
        return self._value_at(self.memberships, pos, True)

    def membership_before(self, pos: int) -> str | None:
        return self._value_at(self.memberships, pos, False)

    def visibility_after(self, pos: int) -> str:
        return self._value_at(self.visibilities, pos, True) or DEFAULT_VISIBILITY

    def visibility_before(self, pos: int) -> str:
        return self._value_at(self.visibilities, pos, False) or DEFAULT_VISIBILITY

    def event_visible(self, pos: int, event_type: str, state_key: str | None, peeking: bool) -> bool:
        """May the user see the event stored at `pos`?"""
        return visible(self.membership_before(pos), self.membership_after(pos), self.visibility_before(pos),
                       self.visibility_after(pos), event_type == MEMBER and state_key == self.user_id, peeking)

    def state_visible_before(self, pos: int) -> bool:
        """May the user see the room's state just before the event at `pos` (their leave)?

        The test a plain message placed there would have to pass: a departed user sees the state
        they left only if they could read the room at that point."""
        membership = self.membership_before(pos)
        return visible(membership, membership, self.visibility_before(pos), self.visibility_before(pos),
                       False, True)
