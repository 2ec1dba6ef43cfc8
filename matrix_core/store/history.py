"""What history visibility needs from the events table: a user's membership changes in a room and
the room's history-visibility changes, each as (position, value) in position order.

Both read a partial index (core migration 3) that only membership and visibility events enter,
so the write path of messages is untouched and a lookup reads a handful of rows. (The literal
`type = '...'` term is what lets SQLite pick the partial index: keep it a literal.)"""
from __future__ import annotations

from typing import Any

from ..history_visibility import membership_of, visibility_of
from . import event_index, event_json
from .database import Database

MEMBERSHIP_CHANGES_SQL = (
    "SELECT e.stream_ordering, e.json FROM events e WHERE e.type = 'm.room.member' AND e.room_id = ? "
    f"AND e.state_key = ? AND {event_index.TIMELINE} ORDER BY e.stream_ordering"
)
VISIBILITY_CHANGES_SQL = (
    "SELECT e.stream_ordering, e.json FROM events e WHERE e.type = 'm.room.history_visibility' "
    f"AND e.room_id = ? AND {event_index.TIMELINE} ORDER BY e.stream_ordering"
)


def _content(stored: Any) -> Any:
    return event_json.load(stored).get("content")


async def membership_changes(db: Database, room_id: str, user_id: str) -> list[tuple[int, str]]:
    rows = await db.fetchall(MEMBERSHIP_CHANGES_SQL, (room_id, user_id))
    return [(pos, membership_of(_content(stored))) for pos, stored in rows]


async def visibility_changes(db: Database, room_id: str) -> list[tuple[int, str]]:
    rows = await db.fetchall(VISIBILITY_CHANGES_SQL, (room_id,))
    return [(pos, visibility_of(_content(stored))) for pos, stored in rows]
