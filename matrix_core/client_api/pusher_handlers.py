"""Pushers: GET /pushers and POST /pushers/set (create, update, `kind: null` deletes). The checks
are the pure push_gateway.parse_set_pusher; the pushers live in service/push_delivery.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..push_gateway import parse_set_pusher
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def get_pushers(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    return ok({"pushers": hs.push_delivery.list_pushers(requester.user_id)})


async def set_pusher(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    await hs.push_delivery.set_pusher(requester, parse_set_pusher(req.json_object()))
    return ok()
