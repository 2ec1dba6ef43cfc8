"""Joining, leaving and inviting across servers, both ways.

Resident side (a remote user joins one of our rooms): make_join hands out a template built on our
current state; send_join checks the signed event like any PDU, places it, answers with the state
before it and its auth chain, and passes the join on to the room's other servers.
Joining side (our user joins a remote room): make_join, sign, send_join, then the state from the
answer becomes the room's state (its events stored as outliers) and the join is placed on top.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from .. import auth_rules, errors
from ..client_format import stripped_state
from ..event_hashing import hash_sign_and_compute_event_id, verify_event_signature
from ..events import Event
from .client import federation_path
from ..identifiers import server_of
from ..room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from ..service.room_cache import RoomCache, StateKey
from .inbound import PDUError
from .pdu import BadPDU, parse_pdu

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)


# -- resident side ------------------------------------------------------------------------------

async def make_membership_template(hs: Homeserver, origin: str, room_id: str, user_id: str, membership: str,
                                   versions: list[str] | None) -> dict[str, Any]:
    if server_of(user_id) != origin:
        raise errors.forbidden("a server may only make membership events for its own users")
    room = await hs.rooms.get_room(room_id)
    if versions is not None and room.version.identifier not in versions:
        raise errors.MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                                 f"room version {room.version.identifier} is not supported by the joining server",
                                 room_version=room.version.identifier)
    content = {"membership": membership}
    pdu: dict[str, Any] = {
        "type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
        "content": content, "origin_server_ts": hs.rooms.clock(), "depth": room.depth + 1,
        "prev_events": room.extremities[-10:],
    }
    keys = auth_rules.auth_types_for_event(room.version, "m.room.member", user_id, user_id, content)
    pdu["auth_events"] = [room.state[k].event_id for k in keys if k in room.state]
    try:
        auth_rules.check_event_auth(Event(pdu, "$template", room.version), room.state)
    except errors.AuthError as exc:
        raise errors.forbidden(f"{membership} not allowed: {exc.reason}") from None
    return {"event": pdu, "room_version": room.version.identifier}


async def auth_chain_pdus(hs: Homeserver, events: list[Event]) -> list[dict[str, Any]]:
    """The full auth chain of `events` (not including them unless reached), as PDUs."""
    seen: set[str] = set()
    frontier = [eid for ev in events for eid in ev.auth_event_ids]
    chain: list[Event] = []
    while frontier:
        batch = [eid for eid in dict.fromkeys(frontier) if eid not in seen]
        frontier = []
        if not batch:
            break
        seen.update(batch)
        found = await hs.rooms.get_events_any(batch)
        for ev, _, _ in found.values():
            chain.append(ev)
            frontier.extend(ev.auth_event_ids)
    return hs.rooms.outgoing_pdus(sorted(chain, key=lambda e: e.depth))


async def on_send_membership(hs: Homeserver, origin: str, room_id: str, event_id: str, body: Any,
                             membership: str) -> dict[str, Any]:
    version = hs.rooms.room_version(room_id)
    if version is None:
        raise errors.not_found("unknown room")
    try:
        event = parse_pdu(body, version)
    except BadPDU as exc:
        raise errors.bad_json(str(exc)) from None
    if event.event_id != event_id or event.room_id != room_id:
        raise errors.bad_json("the event does not match the path")
    if event.type != "m.room.member" or event.membership != membership or event.state_key != event.sender:
        raise errors.bad_json(f"not a {membership} event of its sender")
    if event.origin_server() != origin:
        raise errors.forbidden("the event's sender is not from the requesting server")
    room = await hs.rooms.get_room(room_id)
    state_before = dict(room.state)
    try:
        fut = await hs.federation_inbound.receive(origin, event)
    except PDUError as exc:
        raise errors.forbidden(str(exc)) from None
    hs.federation_sender.forward(event.event_id)
    if fut is not None:
        await fut
    if membership != "join":
        return {}
    state_events = list(state_before.values())
    return {
        "origin": hs.server_name,
        "state": hs.rooms.outgoing_pdus(state_events),
        "auth_chain": await auth_chain_pdus(hs, state_events + [event]),
        "members_omitted": False,
        "servers_in_room": sorted(hs.federation_sender.servers_in_room(room_id) | {hs.server_name}),
    }


async def on_invite(hs: Homeserver, origin: str, room_id: str, event_id: str, body: Any) -> dict[str, Any]:
    """A remote server invites one of our users: countersign, remember the invite for /sync."""
    if not isinstance(body, dict):
        raise errors.bad_json("expected an object")
    version = KNOWN_ROOM_VERSIONS.get(body.get("room_version"))  # type: ignore[arg-type]
    if version is None:
        raise errors.MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "unsupported room version",
                                 room_version=body.get("room_version"))
    try:
        event = parse_pdu(body.get("event"), version)
    except BadPDU as exc:
        raise errors.bad_json(str(exc)) from None
    if event.event_id != event_id or event.room_id != room_id:
        raise errors.bad_json("the event does not match the path")
    if event.type != "m.room.member" or event.membership != "invite" or not event.state_key:
        raise errors.bad_json("not an invite")
    invitee: str = event.state_key
    if server_of(invitee) != hs.server_name:
        raise errors.forbidden("the invitee is not on this server")
    if event.origin_server() != origin:
        raise errors.forbidden("the inviter is not from the requesting server")
    if not await hs.accounts.user_exists(event.state_key):
        raise errors.not_found("no such user")
    try:
        event = await hs.federation_inbound.check_signatures_and_hash(event)
    except PDUError as exc:
        raise errors.forbidden(str(exc)) from None
    signed, _ = hash_sign_and_compute_event_id(event.pdu, version, hs.server_name, hs.signing_key)
    invite_state = body.get("invite_room_state", [])
    if not isinstance(invite_state, list):
        invite_state = []
    await hs.rooms.remember_remote_invite(invitee, room_id, version, signed,
                                          [s for s in invite_state if isinstance(s, dict)])
    return {"event": signed}


# -- joining side -------------------------------------------------------------------------------

async def remote_membership(hs: Homeserver, user_id: str, room_id: str, servers: list[str], membership: str) -> str:
    """Join (or leave) a room hosted elsewhere through the first server that answers."""
    last_error: Exception | None = None
    for server in servers:
        if server == hs.server_name:
            continue
        try:
            return await _membership_via(hs, server, user_id, room_id, membership)
        except errors.MatrixError:
            raise
        except Exception as exc:  # try the next server
            log.info("%s via %s failed: %s", membership, server, exc)
            last_error = exc
    raise errors.MatrixError(404, "M_NOT_FOUND", f"no server could {membership} us to {room_id}: {last_error}")


async def _membership_via(hs: Homeserver, server: str, user_id: str, room_id: str, membership: str) -> str:
    client = hs.federation_client
    query = {"ver": SUPPORTED_VERSIONS} if membership == "join" else None
    try:
        made = await client.request(server, "GET", federation_path("/_matrix/federation/v1/make_" + membership + "/{r}/{u}", r=room_id, u=user_id),
                                    query=query)
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status == 403:
            raise errors.forbidden(f"{server} refused the {membership}: {exc}") from None
        raise
    if membership == "join":
        version = KNOWN_ROOM_VERSIONS.get(made.get("room_version", "1"))
    else:
        known = hs.rooms.room_version(room_id)
        invite = hs.rooms.remote_invites.get((user_id, room_id))
        version = known or (invite[0] if invite else None)
    if version is None:
        raise errors.MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "unsupported room version")
    template = made.get("event")
    if not isinstance(template, dict):
        raise errors.MatrixError(502, "M_UNKNOWN", f"{server} sent no event template")
    pdu = {k: v for k, v in template.items() if k not in ("signatures", "hashes", "unsigned", "event_id")}
    pdu["origin_server_ts"] = hs.rooms.clock()
    pdu["sender"] = user_id
    pdu["state_key"] = user_id
    pdu["content"] = {"membership": membership}
    profile = await hs.accounts.get_profile(user_id)
    if membership == "join" and profile.get("displayname"):
        pdu["content"]["displayname"] = profile["displayname"]
    signed, event_id = hash_sign_and_compute_event_id(pdu, version, hs.server_name, hs.signing_key)
    answer = await client.request(server, "PUT", federation_path("/_matrix/federation/v2/send_" + membership + "/{r}/{e}", r=room_id, e=event_id),
                                  body=signed)
    event = Event(signed, event_id, version)
    if membership == "join":
        await _place_join(hs, server, room_id, version, event, answer)
    elif hs.rooms.room_version(room_id) is not None:
        room = await hs.rooms.get_room(room_id)
        fut = await hs.rooms.place_federated_event(room, event, dict(room.state), room.state_group)
        await fut
    return event_id


async def send_invite(hs: Homeserver, room: RoomCache, invite: Event) -> Event:
    """Invites v2: the invitee's server checks and countersigns our invite before we place it."""
    target_server = server_of(invite.state_key or "")
    body = {
        "event": hs.rooms.outgoing_pdu(invite),
        "room_version": room.version.identifier,
        "invite_room_state": await invite_state_for(room, invite),
    }
    try:
        answer = await hs.federation_client.request(
            target_server, "PUT", federation_path("/_matrix/federation/v2/invite/{r}/{e}", r=room.room_id,
                                                  e=invite.event_id), body=body)
    except Exception as exc:
        raise errors.MatrixError(502, "M_UNKNOWN", f"{target_server} did not accept the invite: {exc}") from None
    signed = answer.get("event") if isinstance(answer, dict) else None
    try:
        countersigned = parse_pdu(signed, room.version)
    except BadPDU as exc:
        raise errors.MatrixError(502, "M_UNKNOWN", f"{target_server} answered a malformed invite: {exc}") from None
    if countersigned.event_id != invite.event_id:
        raise errors.MatrixError(502, "M_UNKNOWN", f"{target_server} changed the invite event")
    sigs = countersigned.pdu.get("signatures", {}).get(target_server, {})
    for key_id in sigs if isinstance(sigs, dict) else {}:
        key = await hs.keyring.get_verify_key(target_server, key_id, countersigned.origin_server_ts)
        if key is None:
            continue
        try:
            verify_event_signature(countersigned.pdu, room.version, target_server, key_id, key)
            break
        except ValueError:
            raise errors.MatrixError(502, "M_UNKNOWN", f"{target_server}'s countersignature is bad") from None
    else:
        raise errors.MatrixError(502, "M_UNKNOWN", f"{target_server} did not countersign the invite")
    return countersigned


async def _place_join(hs: Homeserver, server: str, room_id: str, version: RoomVersion, join: Event, answer: Any) -> None:
    if not isinstance(answer, dict):
        raise errors.MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed send_join answer")
    inbound = hs.federation_inbound
    checked: dict[str, Event] = {}
    for pdu in list(answer.get("auth_chain", [])) + list(answer.get("state", [])):
        try:
            ev = await inbound.check_signatures_and_hash(parse_pdu(pdu, version))
        except (BadPDU, PDUError) as exc:
            log.warning("dropping a state/auth event from %s's send_join answer: %s", server, exc)
            continue
        checked[ev.event_id] = ev
    state: dict[StateKey, Event] = {}
    for pdu in answer.get("state", []):
        try:
            found = checked.get(parse_pdu(pdu, version).event_id)
        except BadPDU:
            continue
        if found is not None and found.is_state:
            state[(found.type, found.state_key or "")] = found
    if ("m.room.create", "") not in state:
        raise errors.MatrixError(502, "M_UNKNOWN", f"{server}'s send_join answer has no create event")
    # Each state event must be allowed by its own auth events (the spec's check for send_join).
    for key, ev in list(state.items()):
        auth = {(a.type, a.state_key or ""): a for a in (checked.get(i) for i in ev.auth_event_ids) if a}
        if version.room_id_is_create_event_id and key != ("m.room.create", ""):
            auth[("m.room.create", "")] = state[("m.room.create", "")]
        try:
            auth_rules.check_event_auth(ev, auth)
        except errors.AuthError as exc:
            log.warning("state event %s from %s fails auth: %s", ev.event_id, server, exc.reason)
            del state[key]
    auth_rules.check_event_auth(join, state)
    await hs.rooms.enqueue_outliers(list(checked.values()))
    room = RoomCache(room_id, version, extremities=list(join.prev_event_ids),
                     depth=max((e.depth for e in state.values()), default=0))
    room.state = dict(state)
    hs.rooms.add_room(room)
    fut = await hs.rooms.place_federated_event(room, join, state, None, new_room=True)
    await fut
    await hs.rooms.forget_remote_invite(join.sender, room_id)


async def invite_state_for(room: RoomCache, invite: Event) -> list[dict[str, Any]]:
    from ..client_format import STRIPPED_STATE_TYPES

    return [stripped_state(room.state[k]) for k in STRIPPED_STATE_TYPES if k in room.state]

