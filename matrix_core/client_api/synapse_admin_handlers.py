"""The part of Synapse's admin API the hub implements (`/_synapse/admin/...`), same paths, query
parameters, JSON shapes and errors, so existing admin tools (synadm, synapse-admin) work: users
(list, details, create/modify, deactivate), their devices (list, create, delete), rooms (list,
details) and the server version. Admins only: 401 without a token, 403 M_FORBIDDEN for others.
Routes: gateway_routes.py; logic: service/admin.py and admin_rules.py. docs/admin-api.md lists them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from ..service.accounts import Requester
from .hub_admin_handlers import DEVICE_ID_RE
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def require_admin(hs: Homeserver, req: ApiRequest) -> Requester:
    """The requester, who must be a hub admin (Synapse's words for the 403)."""
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("You are not a server admin")
    return requester


async def server_version(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await require_admin(hs, req)
    return ok({"server_version": f"matrix-gateway {hs.status.version}"})


async def list_users(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET v2/users?from&limit&guests&deactivated&admins&name&user_id&order_by&dir."""
    await require_admin(hs, req)
    return ok(await hs.admin.list_users(req.query))


async def get_user(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await require_admin(hs, req)
    return ok(await hs.admin.user(req.params["userId"]))


async def put_user(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """PUT v2/users/{userId}: 201 and the account when created, 200 when modified."""
    requester = await require_admin(hs, req)
    user_id = req.params["userId"]
    created = await hs.admin.put_user(requester.user_id, user_id, req.json_object())
    return ApiResponse(201 if created else 200, await hs.admin.user(user_id))


async def deactivate(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST v1/deactivate/{userId} {"erase"?}: erasing is not implemented, so `erase: true` is
    refused before anything changes (as the user's own /account/deactivate refuses it)."""
    await require_admin(hs, req)
    body = req.json_object()
    if not isinstance(body.get("erase", False), bool):
        raise errors.invalid_param("'erase' must be a boolean")
    if body.get("erase"):
        raise errors.invalid_param("Erasure is not supported on this hub")
    await hs.admin.deactivate(req.params["userId"])
    return ok({"id_server_unbind_result": "success"})


async def joined_rooms(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET v1/users/{userId}/joined_rooms: {"joined_rooms", "total"} (synadm asks before deactivating)."""
    await require_admin(hs, req)
    return ok(await hs.admin.joined_rooms(req.params["userId"]))


async def list_devices(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await require_admin(hs, req)
    return ok(await hs.admin.devices(req.params["userId"]))


async def create_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST v2/users/{userId}/devices {"device_id"}: Synapse answers {} (the device gets a token,
    never shown: the Devices page's /_gateway/admin/v1 route is the one that shows it). Synapse
    does nothing for a device that exists; so do we."""
    await require_admin(hs, req)
    device_id = req.json_object().get("device_id")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise errors.invalid_param("'device_id' must be 1-32 letters, digits, '_', '-' or '.'")
    await hs.admin.add_device(req.params["userId"], device_id, None, exist_ok=True)
    return ApiResponse(201, {})


async def delete_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """DELETE v2/users/{userId}/devices/{deviceId}: the token dies now, live sessions end."""
    await require_admin(hs, req)
    await hs.admin.revoke_device(req.params["userId"], req.params["deviceId"])
    return ok({})


async def list_rooms(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET v1/rooms?from&limit&order_by&dir&search_term."""
    await require_admin(hs, req)
    return ok(await hs.admin.list_rooms(req.query))


async def get_room(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await require_admin(hs, req)
    return ok(await hs.admin.room(req.params["roomId"]))
