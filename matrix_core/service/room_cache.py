"""The in-memory view of one room's current state, kept in step with the database.

Local events are built and auth-checked against this view synchronously (no await between read
and update), so concurrent sends into one room need no lock and can share a group commit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..events import Event
from ..room_versions import RoomVersion

StateKey = tuple[str, str]

# After this many deltas a state group is written out whole, bounding lookup chains.
MAX_STATE_CHAIN = 64


@dataclass(slots=True)
class RoomCache:
    room_id: str
    version: RoomVersion
    state: dict[StateKey, Event] = field(default_factory=dict)
    extremities: list[str] = field(default_factory=list)
    depth: int = 0
    state_group: int | None = None
    state_chain: int = 0
    # What the rooms row holds, so a write touches it only on change. "[]" there means "the
    # room's newest placed event is the only extremity" (the usual case: no write per message).
    stored_extremities: str = "[]"
    stored_group: int | None = None

    def member(self, user_id: str) -> str | None:
        ev = self.state.get(("m.room.member", user_id))
        return ev.membership if ev is not None else None

    def joined_users(self) -> list[str]:
        return [key[1] for key, ev in self.state.items() if key[0] == "m.room.member" and ev.membership == "join"]

    def state_content(self, event_type: str, state_key: str = "") -> dict:
        ev = self.state.get((event_type, state_key))
        return ev.content if ev is not None else {}
