"""The client API of application services (issue 17): the ping (v1.7). Registration with
`m.login.application_service` is in auth_handlers.register."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def ping(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    body = req.json_object()
    transaction_id = body.get("transaction_id")
    if transaction_id is not None and not isinstance(transaction_id, str):
        raise errors.bad_json("'transaction_id' must be a string")
    if not req.access_token:
        raise errors.missing_token()
    if req.access_token.partition("\n")[0] not in hs.appservices.by_token:
        await hs.accounts.authenticate(req.access_token)  # M_UNKNOWN_TOKEN for a wrong token
        raise errors.forbidden("Only an application service may ping itself")
    return ok(await hs.appservices.ping(req.access_token, req.params["appserviceId"], transaction_id))
