"""Server-side key backup (`/room_keys/version[/{version}]`, `/room_keys/keys[/{roomId}[/{sessionId}]]`):
Element asks GET /room_keys/version at start and takes 404 M_NOT_FOUND as "no backup yet"."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import key_backup_rules as rules
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


async def _user(hs: Homeserver, req: ApiRequest) -> str:
    return (await hs.accounts.authenticate(req.access_token)).user_id


async def create_version(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    return ok({"version": await hs.key_backup.create_version(user_id, req.json_object())})


async def get_version(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    return ok(await hs.key_backup.get_version(user_id, req.params.get("version")))


async def put_version(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    await hs.key_backup.update_version(user_id, req.params["version"], req.json_object())
    return ok()


async def delete_version(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    await hs.key_backup.delete_version(user_id, req.params["version"])
    return ok()


def _target(req: ApiRequest) -> tuple[str | None, str | None]:
    room_id, session_id = req.params.get("roomId"), req.params.get("sessionId")
    if room_id is not None:
        rules.check_room_id(room_id)
    if session_id is not None:
        rules.check_session_id(session_id)
    return room_id, session_id


async def put_keys(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    room_id, session_id = _target(req)
    body = req.json_object()
    if session_id is not None:
        assert room_id is not None
        keys = {room_id: {session_id: rules.check_key_data(body, "The body")}}
    elif room_id is not None:
        keys = {room_id: rules.check_sessions(body, room_id)}
    else:
        keys = rules.check_rooms(body)
    return ok(await hs.key_backup.upload(user_id, req.arg("version"), keys))


async def get_keys(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    room_id, session_id = _target(req)
    return ok(await hs.key_backup.get_keys(user_id, req.arg("version"), room_id, session_id))


async def delete_keys(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    user_id = await _user(hs, req)
    room_id, session_id = _target(req)
    return ok(await hs.key_backup.delete_keys(user_id, req.arg("version"), room_id, session_id))
