"""Simplified Sliding Sync (MSC4186): `POST /unstable/org.matrix.simplified_msc3575/sync?pos=&timeout=`.
The body is checked whole (sliding_sync_rules.parse_request) before any work; the service does the rest."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from ..sliding_sync_rules import THREADS_LIMIT
from .request import ApiRequest, ApiResponse, ok
from .room_handlers import MAX_SYNC_TIMEOUT_MS

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def sliding_sync(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    timeout = req.int_arg("timeout", 0, minimum=0, maximum=MAX_SYNC_TIMEOUT_MS)
    body = req.json_object()
    return ok(await hs.sliding_sync.sync(requester, req.arg("pos"), timeout, body))


async def thread_updates(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /unstable/io.element.msc4360/thread_updates?dir=b&from=&to=&limit= (MSC4360's
    companion endpoint: the thread updates a threads extension's `prev_batch` left out)."""
    requester = await hs.accounts.authenticate(req.access_token)
    direction = req.arg("dir")
    if direction is None:
        raise errors.missing_param("Missing query parameter 'dir'")  # required, as /messages' is
    if direction != "b":
        raise errors.invalid_param("'dir' must be 'b'")
    # "Must be greater than zero" (MSC4360): 0 or less is refused, not clamped to 1; more than
    # our ceiling is clamped ("servers may impose a smaller limit").
    limit = req.int_arg("limit", THREADS_LIMIT, minimum=-1, maximum=THREADS_LIMIT)
    if limit < 1:
        raise errors.invalid_param("'limit' must be greater than zero")
    return ok(await hs.sliding_sync.thread_updates(requester, req.arg("from"), req.arg("to"), limit))
