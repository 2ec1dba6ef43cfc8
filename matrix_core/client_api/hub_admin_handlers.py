"""The hub's own admin operations the pages use: the Status page's `GET /_gateway/v1/status` and the
Devices page's `POST /_gateway/v1/devices` (both admins only). Routes: gateway_routes.py."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .. import errors, params
from ..service.devices import MAX_DISPLAY_NAME  # Synapse's limit, as PUT /devices/{id} has it
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def status(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """The Status page's figures (service/hub_status.py); admins only."""
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may read the hub's status")
    sender = getattr(hs, "federation_sender", None)  # absent when federation is not running
    return ok(await hs.status.full_report(hs.db, sender.peers if sender is not None else None))


DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")  # short: it ends up in a sensor's CoAP URI


def new_device_fields(body: dict[str, Any]) -> tuple[str, str | None]:
    """A new device's `device_id` and optional `display_name`, checked (both device routes)."""
    device_id, name = body.get("device_id"), body.get("display_name")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise errors.invalid_param("'device_id' must be 1-32 letters, digits, '_', '-' or '.'")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME):
        raise errors.invalid_param(f"'display_name' must be a string of at most {MAX_DISPLAY_NAME} characters")
    return device_id, name


async def add_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """`POST /_gateway/v1/devices {"device_id", "user"?, "display_name"?}` (admins): a new device
    and its access token, shown once (as `matrix-gateway device add` prints it)."""
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may add devices")
    body = req.json_object()
    device_id, name = new_device_fields(body)
    user = body.get("user", requester.user_id)
    if not isinstance(user, str) or not user or len(user) > params.MAX_ID_LENGTH:
        raise errors.invalid_param("'user' must be a user name or id")
    user_id = hs.accounts.local_user_id(user)
    # through the admin service, as the Devices page's route: a deactivated account gets no token
    made = await hs.admin.add_device(user_id, device_id, name)
    assert made is not None  # exist_ok=False: an existing device is refused
    return ok({"user_id": user_id, "device_id": device_id, "access_token": made[0]})
