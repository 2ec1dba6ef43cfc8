"""The hub's own read API for plots and Grafana-style tools (docs/series-api.md):
`GET /_gateway/v1/rooms/{roomId}/series?field=&from=&to=&buckets=` and
`GET /_gateway/v1/rooms/{roomId}/series/fields`. Authenticated with the Matrix access token; the
handlers check the parameters (matrix_core/series.py) and service/series.py answers."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors, params
from ..clock import now_ms
from ..series import SeriesParamError, parse_query
from .request import ApiRequest, ApiResponse, ok

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
