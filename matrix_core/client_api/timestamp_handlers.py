"""GET /v1/rooms/{roomId}/timestamp_to_event (spec v1.6): jump to a date."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors, params
from ..service.room_timestamps import closest_event
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def timestamp_to_event(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    if req.arg("ts") is None:
        raise errors.missing_param("Missing 'ts'")
    ts = req.int_arg("ts", 0, minimum=0, maximum=2**53 - 1)
    direction = req.arg("dir")
    if direction is None:
        raise errors.missing_param("Missing 'dir'")
    if direction not in ("f", "b"):
        raise errors.invalid_param("'dir' must be 'f' or 'b'")
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return ok(await closest_event(hs.rooms, requester, room_id, ts, direction))
