"""Ephemeral events: typing notifications, read receipts and read markers. The handlers check
the request (ephemeral.py's pure checks) and call the typing and receipts services."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import params
from ..ephemeral import RECEIPT_TYPES, event_id, receipt_thread, receipt_type, typing_request
from .request import ApiRequest, ApiResponse, ok
from .room_handlers import _requester_and_room

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def set_typing(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """PUT /rooms/{roomId}/typing/{userId} {"typing": bool, "timeout": ms}."""
    requester, room_id = await _requester_and_room(hs, req)
    user_id = params.user_id(req.params["userId"])
    request = typing_request(req.json_object())
    await hs.typing.set_typing(requester, room_id, user_id, request)
    return ok()


async def post_receipt(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST /rooms/{roomId}/receipt/{receiptType}/{eventId} {"thread_id": "main" | "$root"}."""
    requester, room_id = await _requester_and_room(hs, req)
    kind = receipt_type(req.params["receiptType"])
    target = event_id(req.params["eventId"])
    thread = receipt_thread(req.json_object(), kind)
    await hs.receipts.client_receipt(requester, room_id, kind, target, thread)
    return ok()


async def read_markers(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST /rooms/{roomId}/read_markers {"m.fully_read": id, "m.read": id, "m.read.private": id}: each
    optional (none: nothing to do, as Synapse answers); other keys are ignored."""
    requester, room_id = await _requester_and_room(hs, req)
    body = req.json_object()
    markers = {kind: event_id(body[kind], kind) for kind in RECEIPT_TYPES if kind in body}
    await hs.receipts.read_markers(requester, room_id, markers)
    return ok()

