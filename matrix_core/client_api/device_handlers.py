"""Device management (GET /devices, GET/PUT/DELETE /devices/{deviceId}, POST /delete_devices),
and the account's password and deactivation: the endpoints behind user-interactive auth, so a
lost phone can be logged out from another device, but not by whoever holds the lost phone's token
without the password."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors, uia
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver
    from ..service.accounts import Requester


async def _requester(hs: Homeserver, req: ApiRequest) -> Requester:
    requester = await hs.accounts.authenticate(req.access_token)
    hs.devices.seen(req.access_token, req.remote)  # this very request counts as seen
    return requester


async def _authorised(hs: Homeserver, req: ApiRequest, requester: Requester, body: dict[str, Any]) -> None:
    """The request's UIA: returns once the password was given, else raises its 401."""
    await hs.uia.check(requester, body, uia.operation(req.method, req.segments), req.remote or "unknown")


async def list_devices(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _requester(hs, req)
    return ok({"devices": await hs.devices.of_user(requester.user_id)})


async def get_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _requester(hs, req)
    return ok(await hs.devices.get(requester.user_id, req.params["deviceId"]))


async def put_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """Only `display_name` can change; absent: nothing changes (other keys are ignored)."""
    requester = await _requester(hs, req)
    body = req.json_object()
    name = body.get("display_name")
    if name is not None and not isinstance(name, str):
        raise errors.bad_json("'display_name' must be a string")
    device_id = req.params["deviceId"]
    if name is None:
        await hs.devices.get(requester.user_id, device_id)  # 404 for an unknown device all the same
    else:
        await hs.devices.rename(requester.user_id, device_id, name)
    return ok()


async def delete_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """200 also for a device already gone (the spec's answer), after the password."""
    requester = await _requester(hs, req)
    body = req.json_object()
    await _authorised(hs, req, requester, body)
    await hs.devices.delete(requester.user_id, [req.params["deviceId"]])
    return ok()


async def delete_devices(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await _requester(hs, req)
    body = req.json_object()
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise errors.bad_json("'devices' must be a list of device ids")
    if len(devices) > 1000:
        raise errors.bad_json("At most 1000 devices at once")
    await _authorised(hs, req, requester, body)
    await hs.devices.delete(requester.user_id, devices)
    return ok()


async def change_password(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST /account/password: the old password through UIA; `logout_devices` (default true)
    deletes every other device and ends its sessions."""
    requester = await _requester(hs, req)
    body = req.json_object()
    new_password, logout_devices = body.get("new_password"), body.get("logout_devices", True)
    if not isinstance(new_password, str) or not new_password:
        raise errors.bad_json("'new_password' must be a non-empty string")
    if len(new_password) > 512:
        raise errors.bad_json("'new_password' is too long (max 512 characters)")
    if not isinstance(logout_devices, bool):
        raise errors.bad_json("'logout_devices' must be a boolean")
    await _authorised(hs, req, requester, body)
    await hs.accounts.change_password(requester.user_id, new_password, requester.access_token, logout_devices)
    return ok()


async def deactivate(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """POST /account/deactivate: after the password, no login again (password and every device
    with its tokens gone, every room left). `erase` is not supported: the account's events stay."""
    requester = await _requester(hs, req)
    body = req.json_object()
    if body.get("erase") not in (None, False):
        raise errors.invalid_param("Erasure is not supported on this hub")
    if "id_server" in body and not isinstance(body["id_server"], str):
        raise errors.bad_json("'id_server' must be a string")
    await _authorised(hs, req, requester, body)
    await hs.deactivation.deactivate(requester.user_id)  # and leaves every room (service/deactivation.py)
    return ok({"id_server_unbind_result": "no-support"})


async def third_party_ids(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /account/3pid: the hub binds no e-mail addresses or phone numbers (m.3pid_changes is
    false in /capabilities)."""
    await _requester(hs, req)
    return ok({"threepids": []})
