"""Presence: PUT/GET /presence/{userId}/status (service/presence.py says what is kept, for how
long, and what `presence_enabled = false` changes)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors, params, presence_state
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def put_status(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    if req.params["userId"] != requester.user_id:
        raise errors.forbidden("Can only set your own presence state")
    presence, status_msg = presence_state.parse_status_body(req.json_object())
    # Each change wakes every waiting /sync: a status flood is held to the user's message rate
    # (the spec lists 429 for this endpoint), checked after the body so bad input costs nothing.
    hs.rooms.check_send_rate(requester.user_id)
    hs.presence.set_status(requester.user_id, presence, status_msg)
    return ok()


async def get_status(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    user_id = params.user_id(req.params["userId"])
    return ok(await hs.presence.get_status(requester.user_id, user_id))
