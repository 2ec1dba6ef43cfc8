"""Versions, login, logout, whoami, registration (closed unless configured), profile, filters."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import errors, params
from ..identifiers import is_valid_localpart, user_id_for
from ..store import filters as filter_rows
from . import spec_versions
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver

# What /versions claims, and why: spec_versions.py (each version's required endpoints, checked by
# tests/test_versions_truth.py against a running hub).
SUPPORTED_VERSIONS = list(spec_versions.SUPPORTED_VERSIONS)


async def versions(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    return ok({"versions": SUPPORTED_VERSIONS, "unstable_features": dict(spec_versions.UNSTABLE_FEATURES)})


async def login_flows(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    flows = [{"type": "m.login.password"}]
    if hs.appservices.registrations:  # an AS logs its users in (devices of their own, e.g. for E2EE)
        flows.append({"type": "m.login.application_service"})
    return ok({"flows": flows})


def _login_user(body: dict[str, Any]) -> str:
    identifier = body.get("identifier")
    if isinstance(identifier, dict):
        if identifier.get("type") != "m.id.user" or not isinstance(identifier.get("user"), str):
            raise errors.MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported")
        return identifier["user"]
    user = body.get("user")
    if isinstance(user, str):
        return user
    raise errors.missing_param("Missing 'identifier'")


async def login(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    body = req.json_object()
    if body.get("type") == "m.login.application_service" and hs.appservices.registrations:
        return await _login_appservice_user(hs, req, body)
    if body.get("type") != "m.login.password":
        raise errors.MatrixError(400, "M_UNKNOWN", "Only m.login.password is supported")
    password = body.get("password")
    if not isinstance(password, str):
        raise errors.bad_json("'password' must be a string")
    user = _login_user(body)
    device_id = body.get("device_id")
    display_name = body.get("initial_device_display_name")
    if device_id is not None and not isinstance(device_id, str):
        raise errors.bad_json("'device_id' must be a string")
    if display_name is not None and not isinstance(display_name, str):
        raise errors.bad_json("'initial_device_display_name' must be a string")
    # The core throttles failed passwords per account and per address (M_LIMIT_EXCEEDED).
    return ok(await hs.accounts.login(user, password, device_id, display_name, req.remote or "unknown"))


async def logout(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    await hs.accounts.logout(requester)
    return ok()


async def logout_all(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    await hs.accounts.logout_all(requester)
    return ok()


async def whoami(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    return ok({"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False})


async def register(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    if req.arg("kind", "user") != "user":
        # No guest access on a hub: a guest would otherwise get a full account (the spec's answer).
        raise errors.MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed on this hub")
    if hs.appservices.registrations and req.access_token:
        body = req.json_object()
        if body.get("type") == "m.login.application_service":
            return await _register_appservice_user(hs, req, body)
    if not hs.settings.enable_registration:
        raise errors.forbidden("Registration is disabled on this hub; an admin adds users with the CLI")
    body = req.json_object()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not is_valid_localpart(username):
        raise errors.MatrixError(400, "M_INVALID_USERNAME", "Invalid username")
    hs.appservices.check_user_registration(user_id_for(username, hs.server_name), None)  # M_EXCLUSIVE
    if not isinstance(password, str) or not password:
        raise errors.bad_json("'password' must be a non-empty string")
    auth = body.get("auth")
    if not isinstance(auth, dict) or auth.get("type") != "m.login.dummy":
        return ApiResponse(401, {"flows": [{"stages": ["m.login.dummy"]}], "params": {}, "session": "dummy"})
    user_id = user_id_for(username, hs.server_name)
    if await hs.accounts.user_exists(user_id):
        raise errors.MatrixError(400, "M_USER_IN_USE", "User ID already taken")
    device_id = body.get("device_id") or None
    await hs.accounts.create_user(user_id, password)
    result = await hs.accounts.login(user_id, password, device_id, body.get("initial_device_display_name"), None)
    return ok(result)


async def _register_appservice_user(hs: Homeserver, req: ApiRequest, body: dict[str, Any]) -> ApiResponse:
    """`m.login.application_service`: an AS registers a user of its namespace, registration open or
    not; no password (the AS acts as it with its own token)."""
    token = (req.access_token or "").partition("\n")[0]
    if not token:
        raise errors.missing_token()
    if token not in hs.appservices.by_token:
        raise errors.unknown_token()
    username = body.get("username")
    if not isinstance(username, str) or not is_valid_localpart(username.lower()):
        raise errors.MatrixError(400, "M_INVALID_USERNAME", "Invalid username")
    user_id = user_id_for(username, hs.server_name)
    hs.appservices.check_user_registration(user_id, token)
    if await hs.accounts.user_exists(user_id):
        raise errors.MatrixError(400, "M_USER_IN_USE", "User ID already taken")
    await hs.accounts.create_user(user_id, None)
    if body.get("inhibit_login") is True:
        return ok({"user_id": user_id, "home_server": hs.server_name})
    device_id = body.get("device_id")
    display_name = body.get("initial_device_display_name")
    return ok(await hs.accounts.issue_token(user_id, device_id if isinstance(device_id, str) else None,
                                            display_name if isinstance(display_name, str) else None))


async def _login_appservice_user(hs: Homeserver, req: ApiRequest, body: dict[str, Any]) -> ApiResponse:
    """`m.login.application_service`: a new device and token for a user of the AS's namespace."""
    token = (req.access_token or "").partition("\n")[0]
    if not token:
        raise errors.missing_token()
    reg = hs.appservices.by_token.get(token)
    if reg is None:
        raise errors.unknown_token()
    user_id = user_id_for(_login_user(body), hs.server_name)
    if not reg.is_user_in_namespace(user_id, hs.server_name):
        raise errors.forbidden(f"{user_id} is not in the namespace of appservice {reg.id}")
    if not await hs.accounts.user_exists(user_id):
        raise errors.forbidden(f"{user_id} is not registered")
    device_id, display_name = body.get("device_id"), body.get("initial_device_display_name")
    return ok(await hs.accounts.issue_token(user_id, device_id if isinstance(device_id, str) else None,
                                            display_name if isinstance(display_name, str) else None))


async def get_profile(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    return ok(await hs.accounts.get_profile(params.user_id(req.params["userId"])))


async def get_profile_field(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    field = req.params["field"]
    if field not in ("displayname", "avatar_url"):
        raise errors.unrecognized()
    profile = await hs.accounts.get_profile(params.user_id(req.params["userId"]))
    if field not in profile:
        raise errors.not_found("Profile field not set")
    return ok({field: profile[field]})


async def set_profile_field(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    field = req.params["field"]
    if field not in ("displayname", "avatar_url"):
        raise errors.unrecognized()
    if req.params["userId"] != requester.user_id:
        raise errors.forbidden("You may only change your own profile")
    value = req.json_object().get(field)
    if value is not None and not isinstance(value, str):
        raise errors.bad_json(f"'{field}' must be a string")
    await hs.accounts.set_profile_field(requester.user_id, field, value)
    return ok()


async def create_filter(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    if req.params["userId"] != requester.user_id:
        raise errors.forbidden("You may only create filters for yourself")
    body = req.json_object()
    text = json.dumps(body)
    filter_id = await hs.db.write(lambda conn: filter_rows.insert_filter(conn, requester.user_id, text))
    return ok({"filter_id": str(filter_id)})


async def load_filter(hs: Homeserver, user_id: str, filter_id: str) -> dict[str, Any]:
    text = await filter_rows.filter_json(hs.db, user_id, params.filter_id(filter_id))
    if text is None:
        raise errors.not_found("No such filter")
    return json.loads(text)


async def get_filter(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    if req.params["userId"] != requester.user_id:
        raise errors.forbidden("You may only read your own filters")
    return ok(await load_filter(hs, requester.user_id, req.params["filterId"]))


async def capabilities(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await hs.accounts.authenticate(req.access_token)
    from ..room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

    return ok({"capabilities": {
        "m.change_password": {"enabled": True},  # POST /account/password (device_handlers.py)
        "m.room_versions": {"default": DEFAULT_ROOM_VERSION.identifier,
                            "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS}},
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": False},  # the hub binds no e-mail address or phone number
        "m.get_login_token": {"enabled": False},
    }})
