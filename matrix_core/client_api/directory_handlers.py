"""The user directory (POST /user_directory/search) and a room's local aliases
(GET /rooms/{roomId}/aliases): service/directory.py says who finds whom."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors, params
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver

DEFAULT_SEARCH_LIMIT = 10
MAX_SEARCH_LIMIT = 100
MAX_SEARCH_TERM_CHARS = 256


async def search_users(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    body = req.json_object()
    if "search_term" not in body:
        raise errors.missing_param("Missing 'search_term'")
    term = body["search_term"]
    if not isinstance(term, str):
        raise errors.bad_json("'search_term' must be a string")
    if len(term) > MAX_SEARCH_TERM_CHARS:
        raise errors.bad_json(f"'search_term' is longer than {MAX_SEARCH_TERM_CHARS} characters")
    limit = body.get("limit", DEFAULT_SEARCH_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise errors.bad_json("'limit' must be a non-negative integer")
    return ok(await hs.directory.search_users(requester, term, min(limit, MAX_SEARCH_LIMIT)))


async def room_aliases(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return ok({"aliases": await hs.directory.local_aliases(requester, room_id)})
