"""GET /v1/rooms/{roomId}/timestamp_to_event: the event closest to a time in one direction
(clients' "jump to date"), among the events the user may see."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from ..store import event_timestamps

if TYPE_CHECKING:
    from .accounts import Requester
    from .rooms import Rooms

CANDIDATES = 50  # matches read per query; the closest visible one among them is the answer


async def closest_event(rooms: Rooms, requester: Requester, room_id: str, ts: int, direction: str) -> dict[str, Any]:
    access = await rooms.read_access(requester, room_id)  # 403 unless the user may read the room
    if direction == "f":
        rows = await event_timestamps.at_or_after(rooms.db, room_id, ts, CANDIDATES)
    else:
        rows = await event_timestamps.at_or_before(rooms.db, room_id, ts, CANDIDATES)
    visible = access.visible(rooms.rows_to_events(rows))
    if not visible:
        raise errors.not_found(f"Unable to find an event from {ts} in direction {direction}")
    best = min(visible, key=lambda item: (abs(item[1].origin_server_ts - ts), item[0] if direction == "f" else -item[0]))
    return {"event_id": best[1].event_id, "origin_server_ts": best[1].origin_server_ts}
