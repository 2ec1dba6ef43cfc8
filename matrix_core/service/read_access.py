"""Who may read a room, and which of its events: the one gate every read path goes through.

HTTP and CoAP (`/messages`, `/event`, `/state`, `/members`, `/joined_members`), `/sync`'s join
and leave sections and CoAP Observe all ask `ReadGate.access` first and filter what they return
with the answer. The rules themselves are pure (`matrix_core/history_visibility.py`); this module
fetches the facts they need and keeps the cheap case cheap: a joined member of a room whose
history was never restricted (the default `shared`) reads everything, decided from an in-memory
list, with no query and no per-event work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .. import errors
from ..events import Event
from ..history_visibility import VisibilityTimeline, always_open
from ..store import Database, history


@dataclass(frozen=True, slots=True)
class ReadAccess:
    """What one user may read of one room right now."""
    upto: int | None  # the last stream position they may see; None: up to the present
    peeking: bool  # not joined now
    timeline: VisibilityTimeline | None  # None: every event up to `upto` is visible

    def event_visible(self, pos: int, event: Event) -> bool:
        return self.visible_at(pos, event.type, event.state_key)

    def visible_at(self, pos: int, event_type: str, state_key: str | None = None) -> bool:
        """`event_visible` from the facts alone (an index row, say, without its event)."""
        if self.upto is not None and pos > self.upto:
            return False
        return self.timeline is None or self.timeline.event_visible(pos, event_type, state_key, self.peeking)

    def visible(self, events: Iterable[tuple[int, Event]]) -> list[tuple[int, Event]]:
        if self.timeline is None and self.upto is None:
            return list(events)
        return [(pos, ev) for pos, ev in events if self.event_visible(pos, ev)]

    def state_position(self) -> int | None:
        """Where the state this user may read stands (None: the current state); raises when the
        user departed without ever being able to read the room (a rejected invite, say)."""
        if self.upto is None:
            return None
        if self.timeline is not None and not self.timeline.state_visible_before(self.upto):
            raise errors.forbidden("You may not read this room's state")
        return self.upto


class ReadGate:
    """Builds `ReadAccess` answers; caches each room's visibility changes (a few entries)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._visibility: dict[str, tuple[tuple[int, str], ...]] = {}
        self._epoch = 0  # bumped by every invalidation, so a load racing a commit is not kept

    def visibility_changed(self, room_id: str) -> None:
        """A history-visibility event of the room was committed."""
        self._epoch += 1
        self._visibility.pop(room_id, None)

    async def _visibility_changes(self, room_id: str) -> tuple[tuple[int, str], ...]:
        cached = self._visibility.get(room_id)
        if cached is not None:
            return cached
        epoch = self._epoch
        changes = tuple(await history.visibility_changes(self.db, room_id))
        if epoch == self._epoch:
            self._visibility[room_id] = changes
        return changes

    async def _timeline(self, user_id: str, room_id: str,
                        visibilities: tuple[tuple[int, str], ...]) -> VisibilityTimeline:
        memberships = tuple(await history.membership_changes(self.db, room_id, user_id))
        return VisibilityTimeline(user_id, memberships, visibilities)

    async def access(self, user_id: str, room_id: str, membership: tuple[str, int] | None,
                     current_visibility: str) -> ReadAccess:
        """`membership`: the user's current (membership, position) in the room, if any;
        `current_visibility`: the room's history visibility now."""
        visibilities = await self._visibility_changes(room_id)
        if membership is not None and membership[0] == "join":
            if always_open(list(visibilities)):
                return ReadAccess(None, False, None)
            return ReadAccess(None, False, await self._timeline(user_id, room_id, visibilities))
        if membership is not None and membership[0] in ("leave", "ban"):
            return ReadAccess(membership[1], True, await self._timeline(user_id, room_id, visibilities))
        if current_visibility == "world_readable":
            return ReadAccess(None, True, await self._timeline(user_id, room_id, visibilities))
        raise errors.forbidden("You are not a member of this room")
