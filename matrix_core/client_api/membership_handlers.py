"""POST /rooms/{roomId}/forget (service/forgotten_rooms.py says what forgetting does)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import params
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def forget(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    room = params.room_id_or_alias(req.params["roomId"])
    room_id = await hs.rooms.resolve_room(room) if room.startswith("#") else room
    req.json_object()  # validate the (optional) body
    await hs.forgotten_rooms.forget(requester, room_id)
    return ok()
