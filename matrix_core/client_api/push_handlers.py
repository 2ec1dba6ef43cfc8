"""Push rules (GET /pushrules/, GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}, `enabled`,
`actions`) and GET /notifications. The logic is the push service's (service/push.py).

matrix-js-sdk asks `pushrules/` with a trailing slash: the path then ends in an empty segment,
which the `{scope}` / `{kind}` / `{ruleId}` captures take as "" (the whole set, the scope, the kind).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors, params
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver

NOTIFICATIONS_MAX_LIMIT = 100


def _scope(req: ApiRequest) -> None:
    if req.params["scope"] != "global":
        raise errors.invalid_param("The only push rule scope is 'global'")


async def get_all(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /pushrules/ (and /pushrules/global/ via get_scope)."""
    requester = await hs.accounts.authenticate(req.access_token)
    return ok({"global": await hs.push.ruleset(requester.user_id)})


async def get_scope(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /pushrules/{scope}: "" is /pushrules/ itself; 'global' the user's rule set."""
    if req.params["scope"] == "":
        return await get_all(hs, req)
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    return ok(await hs.push.ruleset(requester.user_id))


async def get_kind(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /pushrules/global/ (kind "") or /pushrules/global/{kind}: the list of that kind."""
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    rules = await hs.push.ruleset(requester.user_id)
    kind = req.params["kind"]
    if kind == "":
        return ok(rules)
    if kind not in rules:
        raise errors.invalid_param(f"Unknown push rule kind {kind[:40]!r}")
    return ok(rules[kind])


async def get_rule(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    if req.params["ruleId"] == "":
        return await get_kind(hs, req)
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    return ok(await hs.push.get_rule(requester.user_id, req.params["kind"], req.params["ruleId"]))


async def put_rule(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    await hs.push.put_rule(requester.user_id, req.params["kind"], req.params["ruleId"], req.json(),
                           req.arg("before"), req.arg("after"))
    return ok()


async def delete_rule(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    await hs.push.delete_rule(requester.user_id, req.params["kind"], req.params["ruleId"])
    return ok()


def _attr(req: ApiRequest) -> str:
    attr = req.params["attr"]
    if attr not in ("enabled", "actions"):
        raise errors.unrecognized(f"Unknown push rule attribute {attr[:40]!r}")
    return attr


async def get_attr(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET .../{ruleId}/enabled -> {"enabled": bool}; .../actions -> {"actions": [...]}."""
    attr = _attr(req)
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    rule = await hs.push.get_rule(requester.user_id, req.params["kind"], req.params["ruleId"])
    return ok({attr: rule[attr]})


async def put_attr(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    attr = _attr(req)
    requester = await hs.accounts.authenticate(req.access_token)
    _scope(req)
    body: dict[str, Any] = req.json_object()
    if attr not in body:
        raise errors.missing_param(f"Missing '{attr}'")
    if attr == "enabled":
        await hs.push.set_enabled(requester.user_id, req.params["kind"], req.params["ruleId"], body[attr])
    else:
        await hs.push.set_actions(requester.user_id, req.params["kind"], req.params["ruleId"], body[attr])
    return ok()


async def notifications(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """GET /notifications?from=&limit=&only=highlight."""
    requester = await hs.accounts.authenticate(req.access_token)
    raw_from = req.arg("from")
    from_pos = None if raw_from is None else params.int_param("from", raw_from, -params.MAX_POSITION,
                                                                 params.MAX_POSITION)
    limit = req.int_arg("limit", 20, minimum=1, maximum=2**31)
    only = req.arg("only")
    return ok(await hs.push.notifications(requester, from_pos, min(limit, NOTIFICATIONS_MAX_LIMIT),
                                          only == "highlight"))
