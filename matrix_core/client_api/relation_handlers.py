"""Relations, threads and event context: `GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}
[/{eventType}]]`, `GET /v1/rooms/{roomId}/threads` and `GET /v3/rooms/{roomId}/context/{eventId}`.
The handlers check the request; service/relations.py answers it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors, params
from ..canonical_json import CanonicalJSONError, parse_json
from .auth_handlers import load_filter
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver
    from ..service.accounts import Requester

RELATIONS_LIMIT = (20, 100)  # (default, most) children per /relations page
THREADS_LIMIT = (20, 100)
CONTEXT_LIMIT = (10, 100)


async def _requester_and_room(hs: Homeserver, req: ApiRequest) -> tuple[Requester, str]:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return requester, room_id


def _event_id(raw: str) -> str:
    if not raw.startswith("$") or len(raw) > params.MAX_ID_LENGTH or params.has_space_or_control(raw):
        raise errors.not_found("Event not found.")  # no event has such an id
    return raw


def _bool_arg(req: ApiRequest, name: str) -> bool | None:
    raw = req.arg(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise errors.invalid_param(f"'{name}' must be 'true' or 'false'")
    return raw == "true"


async def relations(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    direction = req.arg("dir", "b")
    if direction not in ("b", "f"):
        raise errors.invalid_param("'dir' must be 'b' or 'f'")
    from_token = req.arg("from")
    return ok(await hs.rooms.relations.relations(
        requester, room_id, _event_id(req.params["eventId"]), req.params.get("relType"),
        req.params.get("eventType"), from_token, params.stream_token(from_token), params.stream_token(req.arg("to")),
        req.int_arg("limit", RELATIONS_LIMIT[0], minimum=1, maximum=RELATIONS_LIMIT[1]), direction == "f",
        _bool_arg(req, "recurse")))


async def threads(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    include = req.arg("include", "all")
    if include not in ("all", "participated"):
        raise errors.invalid_param("'include' must be 'all' or 'participated'")
    return ok(await hs.rooms.relations.threads(
        requester, room_id, include == "participated", params.stream_token(req.arg("from")),
        req.int_arg("limit", THREADS_LIMIT[0], minimum=1, maximum=THREADS_LIMIT[1])))


async def _room_event_filter(hs: Homeserver, requester: Requester, raw: str | None) -> dict[str, Any]:
    """The `filter` query parameter: a RoomEventFilter as JSON (or a stored filter's id)."""
    if not raw:
        return {}
    if raw.lstrip().startswith("{"):
        try:
            found = parse_json(raw)
        except (CanonicalJSONError, ValueError):
            raise errors.bad_json("Invalid filter") from None
    else:
        found = await load_filter(hs, requester.user_id, raw)
    if not isinstance(found, dict):
        raise errors.bad_json("The filter must be a JSON object")
    return found


async def context(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    limit = req.int_arg("limit", CONTEXT_LIMIT[0], minimum=0, maximum=CONTEXT_LIMIT[1])
    room_filter = await _room_event_filter(hs, requester, req.arg("filter"))
    return ok(await hs.rooms.relations.context(requester, room_id, _event_id(req.params["eventId"]), limit,
                                               room_filter.get("lazy_load_members") is True))
