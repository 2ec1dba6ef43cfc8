"""Events of a room by their origin_server_ts, for GET /timestamp_to_event (jump to a date).

No index on timestamps: it would cost an index page write for every stored reading, for an
endpoint a person uses now and then. Instead each query walks the room's events by position from
the newest (through the room index, event_index.room_events) and stops at `limit` matches, which
reads the events newer than the timestamp asked for: a jump to yesterday reads a day of the room.
Timestamps follow positions closely (local events are stamped as they are stored), so the
matches nearest in position are the nearest in time; the caller picks the closest among them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .event_index import TIMELINE, room_events

if TYPE_CHECKING:
    from .database import Database

_COLUMNS = "e.stream_ordering, e.event_id, e.room_id, e.json"
_AT_OR_BEFORE = room_events(_COLUMNS, "?1", f"{TIMELINE} AND e.origin_server_ts <= ?2", "DESC", "?3")
_BEFORE = room_events("e.stream_ordering", "?1", f"{TIMELINE} AND e.origin_server_ts < ?2", "DESC", "1")
_AT_OR_AFTER = room_events(_COLUMNS, "?1", f"{TIMELINE} AND e.origin_server_ts >= ?2", "ASC", "?3", after="?4")


async def at_or_before(db: Database, room_id: str, ts: int, limit: int) -> list[tuple[int, str, str, Any]]:
    """The newest (by position) `limit` timeline events stamped at or before `ts`."""
    return await db.fetchall(_AT_OR_BEFORE, (room_id, ts, limit))


async def at_or_after(db: Database, room_id: str, ts: int, limit: int) -> list[tuple[int, str, str, Any]]:
    """The oldest `limit` timeline events stamped at or after `ts`, found from the newest end: past
    the last event stamped before `ts`."""
    row = await db.fetchone(_BEFORE, (room_id, ts))
    after = row[0] if row is not None else -(2**62)
    return await db.fetchall(_AT_OR_AFTER, (room_id, ts, limit, after))
