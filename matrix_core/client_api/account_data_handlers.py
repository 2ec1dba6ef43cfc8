"""Account data (global and per room) and room tags: /user/{userId}/account_data/...,
/user/{userId}/rooms/{roomId}/account_data/... and /user/{userId}/rooms/{roomId}/tags/...

Only the user may read or write their own (M_FORBIDDEN otherwise). Bodies are read as plain
JSON with fractions kept (`ApiRequest.plain_json_object`): account data is not an event, and
Element stores tags as `{"order": 0.5}` (account_data_rules.py says how numbers are kept).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import account_data_rules as rules
from .. import errors
from ..service.accounts import Requester
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def _own(hs: Homeserver, req: ApiRequest, verb: str) -> Requester:
    requester = await hs.accounts.authenticate(req.access_token)
    if req.params["userId"] != requester.user_id:
        raise errors.forbidden(f"Cannot {verb} account data for other users.")
    return requester


async def get_global(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "get")
    data_type = rules.check_type(req.params["type"])
    content = await hs.account_data.get_global_account_data(requester.user_id, data_type)
    if content is None:
        raise errors.not_found("Account data not found.")
    return ok(content)


async def put_global(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "add")
    data_type = rules.check_type(req.params["type"])
    body = req.plain_json_object()
    rules.check_client_settable(data_type)
    await hs.account_data.set_global_account_data(requester.user_id, data_type, body)
    return ok()


async def get_room(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "get")
    room_id = rules.check_room_id(req.params["roomId"])
    data_type = rules.check_type(req.params["type"])
    content = await hs.account_data.get_room_account_data(requester.user_id, room_id, data_type)
    if content is None:
        raise errors.not_found("Room account data not found.")
    return ok(content)


async def put_room(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "add")
    room_id = rules.check_room_id(req.params["roomId"])
    data_type = rules.check_type(req.params["type"])
    body = req.plain_json_object()
    rules.check_client_settable(data_type)
    await hs.account_data.set_room_account_data(requester.user_id, room_id, data_type, body)
    return ok()


async def get_tags(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "get")
    room_id = rules.check_room_id(req.params["roomId"])
    return ok({"tags": await hs.account_data.room_tags(requester.user_id, room_id)})


async def put_tag(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "add")
    room_id = rules.check_room_id(req.params["roomId"])
    tag = rules.check_type(req.params["tag"], "tag")
    body = rules.check_tag_body(req.plain_json_object())
    await hs.account_data.add_tag(requester.user_id, room_id, tag, body)
    return ok()


async def delete_tag(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _own(hs, req, "remove")
    room_id = rules.check_room_id(req.params["roomId"])
    tag = rules.check_type(req.params["tag"], "tag")
    await hs.account_data.remove_tag(requester.user_id, room_id, tag)
    return ok()
