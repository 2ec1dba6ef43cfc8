"""First run (issue 18): `GET /_gateway/v1/setup` tells the page whether to show the setup view;
`POST /_gateway/v1/setup {"setup_code", "username", "password"}` creates the first admin with the
one-time code the hub printed and answers like /login, so the page is signed in. No access token:
the code is the credential. Logic and throttle: service/setup.py, setup_rules.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from ..service.setup import check_new_admin
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def setup_state(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    return ok({"setup_needed": await hs.setup.needed()})


async def complete_setup(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    body = req.json_object()
    code = body.get("setup_code")
    if not isinstance(code, str) or not code:
        raise errors.missing_param("'setup_code' is required: the code the hub printed on its console and log")
    localpart, password = check_new_admin(body.get("username"), body.get("password"))
    return ok(await hs.setup.complete(code, localpart, password, req.remote or "unknown"))
