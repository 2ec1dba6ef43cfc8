"""End-to-end encryption, server side (issue 14): /keys/upload, /keys/query, /keys/claim,
/keys/changes and /sendToDevice. The handlers read the request; service/e2e_keys.py and
service/to_device.py keep the keys and messages (the hub never sees plaintext)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from ..sync_token import parse_sync_token
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def upload(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    return ok(await hs.e2e_keys.upload(requester, req.json_object()))


async def query(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    return ok(await hs.e2e_keys.query(requester, req.json_object()))


async def claim(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await hs.accounts.authenticate(req.access_token)
    return ok(await hs.e2e_keys.claim(req.json_object()))


async def changes(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """Users whose devices changed between two /sync tokens (`from`, `to`)."""
    requester = await hs.accounts.authenticate(req.access_token)
    raw_from, raw_to = req.arg("from"), req.arg("to")
    if raw_from is None or raw_to is None:
        raise errors.missing_param("'from' and 'to' are required")
    start, end = parse_sync_token(raw_from), parse_sync_token(raw_to)
    assert start is not None and end is not None
    after = start.position("device_lists")
    upto = min(end.position("device_lists"), hs.e2e_keys.position())
    changed, left = await hs.e2e_keys.changes_for(requester.user_id, after, upto) if after < upto else ([], [])
    return ok({"changed": changed, "left": left})


async def send_to_device(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    body = req.plain_json_object()  # not an event: numbers with a fraction may pass
    await hs.to_device.send(requester, req.params["eventType"], req.params["txnId"], body)
    return ok()
