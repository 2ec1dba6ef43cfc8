"""Rooms: create, membership, send, state, redact, read events and history, sync, directory."""
from __future__ import annotations


from typing import TYPE_CHECKING, Any

from .. import errors, params
from ..canonical_json import CanonicalJSONError, parse_json
from ..service.sync import parse_stream_token
from ..store import rooms as room_rows
from .auth_handlers import load_filter
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver

MAX_SYNC_TIMEOUT_MS = 300_000


async def _requester_and_room(hs: Homeserver, req: ApiRequest) -> tuple[Any, str]:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    return requester, room_id


async def create_room(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    body = req.json_object()
    return ok(await hs.rooms.create_room(requester, body))


async def join(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    req.json_object()  # validate the (optional) body
    room_id = await hs.rooms.join(requester, params.room_id_or_alias(req.params["roomIdOrAlias"]))
    return ok({"room_id": room_id})


async def knock(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    reason = req.json_object().get("reason")
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomIdOrAlias"]))
    await hs.rooms.update_membership(requester, room_id, requester.user_id, "knock", reason)
    return ok({"room_id": room_id})


def _membership_action(membership: str, needs_target: bool):
    async def handler(hs: Homeserver, req: ApiRequest) -> ApiResponse:
        if membership == "join" and not needs_target:
            room_param = params.room_id_or_alias(req.params["roomId"])
            if room_param.startswith("!") and hs.rooms.room_version(room_param) is None:
                # A room hosted elsewhere (an invite over federation): joined the way
                # POST /join/{roomIdOrAlias} joins it, through the server that invited us.
                requester = await hs.accounts.authenticate(req.access_token)
                req.json_object()  # validate the (optional) body
                return ok({"room_id": await hs.rooms.join(requester, room_param)})
        if membership == "leave" and not needs_target:
            requester = await hs.accounts.authenticate(req.access_token)
            if (requester.user_id, req.params["roomId"]) in hs.rooms.remote_invites \
                    and hs.rooms.room_version(req.params["roomId"]) is None:
                await hs.rooms.leave_remote_invite(requester, req.params["roomId"])  # declining an invite
                return ok()
        requester, room_id = await _requester_and_room(hs, req)
        body = req.json_object()
        target = requester.user_id
        if needs_target:
            target = body.get("user_id")
            if not isinstance(target, str):
                raise errors.missing_param("Missing 'user_id'")
        if membership == "invite" and hs.appservices.registrations:
            await hs.appservices.before_invite(target)  # an AS's user not made yet: ask the AS (lazy users)
        if membership == "join":
            await hs.rooms.update_membership(requester, room_id, target, "join", body.get("reason"))
            return ok({"room_id": room_id})
        await hs.rooms.update_membership(requester, room_id, target, membership, body.get("reason"))
        return ok()

    return handler


join_room_id = _membership_action("join", needs_target=False)
leave = _membership_action("leave", needs_target=False)
invite = _membership_action("invite", needs_target=True)
kick = _membership_action("leave", needs_target=True)
ban = _membership_action("ban", needs_target=True)
unban = _membership_action("leave", needs_target=True)


async def send(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """PUT .../send/{eventType}/{txnId} (idempotent per device) and the seed's legacy POST."""
    requester, room_id = await _requester_and_room(hs, req)
    content = req.json()
    event_id = await hs.rooms.send_event(requester, room_id, req.params["eventType"], content,
                                         txn_id=req.params.get("txnId"))
    return ok({"event_id": event_id})


async def put_state(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    content = req.json()
    event_type, state_key = req.params["eventType"], req.params.get("stateKey", "")
    if event_type == "m.room.member":
        raise errors.forbidden("Use the membership endpoints (join, invite, leave, kick, ban) instead")
    event_id = await hs.rooms.send_event(requester, room_id, event_type, content, state_key=state_key)
    return ok({"event_id": event_id})


async def get_state(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    return ok(await hs.rooms.get_state(requester, room_id))


async def get_state_event(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    event = await hs.rooms.get_state_event(requester, room_id, req.params["eventType"],
                                           req.params.get("stateKey", ""))
    if req.arg("format") == "event":
        return ok(hs.rooms.serialize(event))
    return ok(hs.rooms.serialize(event)["content"])


async def redact(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    reason = req.json_object().get("reason")
    event_id = await hs.rooms.redact(requester, room_id, req.params["eventId"], reason, req.params.get("txnId"))
    return ok({"event_id": event_id})


async def get_event(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    return ok(await hs.rooms.get_event_for_client(requester, room_id, req.params["eventId"]))


async def messages(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    direction = req.arg("dir", "b")
    if direction not in ("b", "f"):
        raise errors.invalid_param("'dir' must be 'b' or 'f'")
    limit = req.int_arg("limit", 10, minimum=1, maximum=1000)
    from_pos = parse_stream_token(req.arg("from"))
    to_pos = parse_stream_token(req.arg("to"))
    return ok(await hs.rooms.messages(requester, room_id, from_pos, direction, limit, to_pos))


async def members(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    state = await hs.rooms.get_state(requester, room_id)
    return ok({"chunk": [ev for ev in state if ev["type"] == "m.room.member"]})


async def joined_members(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester, room_id = await _requester_and_room(hs, req)
    state = await hs.rooms.get_state(requester, room_id)
    joined = {
        ev["state_key"]: {"display_name": ev["content"].get("displayname"),
                          "avatar_url": ev["content"].get("avatar_url")}
        for ev in state if ev["type"] == "m.room.member" and ev["content"].get("membership") == "join"
    }
    return ok({"joined": joined})


async def joined_rooms(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    return ok({"joined_rooms": hs.rooms.joined_room_ids(requester.user_id)})


async def sync(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    raw_filter = req.arg("filter")
    sync_filter: dict[str, Any] = {}
    if raw_filter:
        if raw_filter.lstrip().startswith("{"):
            try:
                sync_filter = parse_json(raw_filter)
            except (CanonicalJSONError, ValueError):
                raise errors.bad_json("Invalid inline filter") from None
        else:
            sync_filter = await load_filter(hs, requester.user_id, raw_filter)
    timeout = req.int_arg("timeout", 0, minimum=0, maximum=MAX_SYNC_TIMEOUT_MS)
    full_state = req.arg("full_state", "false") == "true"
    return ok(await hs.sync.sync(requester, req.arg("since"), timeout, full_state, sync_filter))


async def get_alias(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    alias = params.room_alias(req.params["roomAlias"])
    room_id = await hs.rooms.resolve_alias_local(alias)
    if room_id is None and hs.appservices.registrations and await hs.appservices.query_alias(alias):
        room_id = await hs.rooms.resolve_alias_local(alias)  # an application service made it (lazy room)
    if room_id is None:
        raise errors.not_found(f"Room alias {alias} not found")
    return ok({"room_id": room_id, "servers": [hs.server_name]})


async def put_alias(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = req.json_object().get("room_id")
    if not isinstance(room_id, str):
        raise errors.missing_param("Missing 'room_id'")
    await hs.rooms.create_alias(requester, params.room_alias(req.params["roomAlias"]), room_id)
    return ok()


async def delete_alias(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    await hs.rooms.delete_alias(requester, params.room_alias(req.params["roomAlias"]))
    return ok()


async def public_rooms(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    chunk = []
    for room_id in await room_rows.public_room_ids(hs.db):
        room = await hs.rooms.get_room(room_id)
        entry: dict[str, Any] = {"room_id": room_id, "num_joined_members": len(room.joined_users()),
                                 "world_readable": False, "guest_can_join": False}
        for key, field in (("m.room.name", "name"), ("m.room.topic", "topic"),
                           ("m.room.canonical_alias", "alias")):
            value = room.state_content(key).get(field)
            if isinstance(value, str):
                entry["canonical_alias" if field == "alias" else field] = value
        chunk.append(entry)
    return ok({"chunk": chunk, "total_room_count_estimate": len(chunk)})


