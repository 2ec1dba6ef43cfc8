"""The hub's own read API for plots and Grafana-style tools (docs/series-api.md):
`GET /_gateway/v1/rooms/{roomId}/series?field=&from=&to=&buckets=` and
`GET /_gateway/v1/rooms/{roomId}/series/fields`, the Status page's `GET /_gateway/v1/status`
and the Devices page's `POST /_gateway/v1/devices` (both admins only). Authenticated with the Matrix access token; the
handlers check the parameters (matrix_core/series.py) and service/series.py answers."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import errors, params
from ..clock import now_ms
from ..series import SeriesParamError, parse_query
from .request import ApiRequest, ApiResponse, ok
from .router import ClientRouter

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def series(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    try:
        query = parse_query(req.arg("field"), req.arg("from"), req.arg("to"), req.arg("buckets"), now_ms(),
                            req.arg("last"))
    except SeriesParamError as exc:
        raise errors.invalid_param(str(exc)) from None
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return ok(await hs.series.buckets(requester, room_id, query))


async def fields(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return ok(await hs.series.fields(requester, room_id))


async def status(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """The Status page's figures (service/hub_status.py); admins only."""
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may read the hub's status")
    return ok(hs.status.report())


DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")  # short: it ends up in a sensor's CoAP URI


async def add_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """`POST /_gateway/v1/devices {"device_id", "user"?, "display_name"?}` (admins): a new device
    and its access token, shown once (as `matrix-gateway device add` prints it)."""
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may add devices")
    body = req.json_object()
    device_id, user, name = body.get("device_id"), body.get("user", requester.user_id), body.get("display_name")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise errors.invalid_param("'device_id' must be 1-32 letters, digits, '_', '-' or '.'")
    if not isinstance(user, str) or not user or len(user) > params.MAX_ID_LENGTH:
        raise errors.invalid_param("'user' must be a user name or id")
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise errors.invalid_param("'display_name' must be a string of at most 100 characters")
    user_id = hs.accounts.local_user_id(user)
    token = await hs.accounts.add_device(user_id, device_id, name)
    return ok({"user_id": user_id, "device_id": device_id, "access_token": token})


def build_router() -> ClientRouter:
    """Routes under /_gateway/v1/ (the hub's own API, not the Matrix client API)."""
    router = ClientRouter()
    router.add("GET", "rooms/{roomId}/series", series)
    router.add("GET", "rooms/{roomId}/series/fields", fields)
    router.add("GET", "status", status)
    router.add("POST", "devices", add_device)
    return router


GATEWAY_ROUTER = build_router()
