"""Time series of a room's readings (`GET /_gateway/v1/rooms/{room}/series`): the index rows of
one field in a time range (store/series.py), bucketed (matrix_core/series.py), after the same
read gate as every other read (read_access.py): a user who left sees the points up to their
leave, one kept out by history visibility sees none of the events they may not read."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..series import SeriesQuery, bucketize
from ..store import Database
from ..store import series as store

if TYPE_CHECKING:
    from .accounts import Requester
    from .rooms import Rooms

MAX_FIELDS_LISTED = 64


class Series:
    def __init__(self, db: Database, rooms: Rooms) -> None:
        self.db = db
        self.rooms = rooms

    async def buckets(self, requester: Requester, room_id: str, query: SeriesQuery) -> dict[str, Any]:
        access = await self.rooms.read_access(requester, room_id)
        rows = await store.points(self.db, room_id, query.field, query.start, query.end)
        if access.upto is not None or access.timeline is not None:
            rows = [row for row in rows if access.visible_at(row[1], "m.room.message")]
        points = ((ts, value) for ts, _pos, value in rows)
        return {"room_id": room_id, "field": query.field, "from": query.start, "to": query.end,
                "buckets": query.buckets, "bucket_ms": (query.end - query.start) / query.buckets,
                "points": len(rows), "series": bucketize(query, points)}

    async def fields(self, requester: Requester, room_id: str) -> dict[str, Any]:
        await self.rooms.read_access(requester, room_id)
        return {"room_id": room_id, "fields": await store.fields(self.db, room_id, MAX_FIELDS_LISTED)}
