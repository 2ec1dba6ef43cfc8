"""Cross-signing (POST /keys/device_signing/upload, POST /keys/signatures/upload): the user's
master, self-signing and user-signing keys, and signatures by and on them. Replacing a master key
lets whoever does it vouch for any device as this user, so it is behind the password (UIA), except
for the first upload (MSC3967: nothing to protect yet) and a re-upload of the same keys."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import uia
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def upload_signing_keys(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    body = req.json_object()
    keys, needs_auth = await hs.cross_signing.check_upload(requester.user_id, body)
    if needs_auth:
        await hs.uia.check(requester, body, uia.operation(req.method, req.segments), req.remote or "unknown")
    await hs.cross_signing.store_keys(requester.user_id, keys)
    return ok()


async def upload_signatures(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    failures = await hs.cross_signing.upload_signatures(requester.user_id, req.json_object())
    return ok({"failures": failures})
