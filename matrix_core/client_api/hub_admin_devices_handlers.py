"""The hub's own admin routes for the Devices page, where Synapse's admin API has no equivalent
(`/_gateway/admin/v1/...`, admins only): every account with its devices in one answer, a device
made with its token shown once (a coaps key when asked, the settings, snippets and a QR code of
them), and the household flag. Routes: gateway_routes.py; logic: service/admin.py."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from .hub_admin_handlers import new_device_fields
from .request import ApiRequest, ApiResponse, ok
from .synapse_admin_handlers import require_admin

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def account(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /_gateway/v1/account (any signed-in user): who the page's user is and whether a hub
    admin, so the page shows admin controls without calling an admin route to find out."""
    requester = await hs.accounts.authenticate(req.access_token)
    return ok({"user_id": requester.user_id, "admin": requester.is_admin})


async def accounts(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET accounts: every account (deactivated and guests too) with its devices."""
    await require_admin(hs, req)
    listing = await hs.admin.list_users({"deactivated": ["true"], "limit": ["1000"]})
    users: list[dict[str, Any]] = listing["users"]
    for user in users:
        user["devices"] = (await hs.admin.devices(user["name"]))["devices"]
    return ok({"users": users, "total": listing["total"]})


async def add_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST users/{userId}/devices {"device_id", "display_name"?, "psk"?: bool}: the device's
    access token (once), its coaps key when asked, and the settings, snippets and QR code."""
    await require_admin(hs, req)
    body = req.json_object()
    device_id, name = new_device_fields(body)
    psk = body.get("psk", False)
    if not isinstance(psk, bool):
        raise errors.invalid_param("'psk' must be a boolean")
    user_id = req.params["userId"]
    made = await hs.admin.add_device(user_id, device_id, name or None, psk)
    assert made is not None  # exist_ok=False: an existing device is refused
    token, key = made
    answer: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "access_token": token}
    if key is not None:
        answer["psk_identity"], answer["psk"] = key
    answer.update(hs.admin.device_setup(req.host, user_id, device_id, token, key))
    return ok(answer)


async def set_household(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """PUT users/{userId}/household {"household": bool}: a household member shares the broker's
    topic rooms; a guest reaches only rooms it is invited to (docs/mqtt.md)."""
    requester = await require_admin(hs, req)
    household = req.json_object().get("household")
    if not isinstance(household, bool):
        raise errors.invalid_param("'household' must be a boolean")
    user_id = req.params["userId"]
    await hs.admin.user(user_id)  # 400 for a remote user, 404 for an unknown one
    await hs.admin.put_user(requester.user_id, user_id, {"household": household})
    return ok(await hs.admin.user(user_id))
