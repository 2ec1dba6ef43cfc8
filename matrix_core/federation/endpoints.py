"""The server-server API's room endpoints, registered on the federation route table at import.

Each handler takes (hs, origin, request) where `origin` is already authenticated, and returns
(status, body). Reads of room data are limited to servers that have a member in the room.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from ..clock import now_ms
from ..store import federation as federation_store
from ..events import Event
from ..identifiers import server_of
from .joins import make_membership_template, on_invite, on_send_membership
from .server import FEDERATION_ROUTES, FederationRequest

if TYPE_CHECKING:
    from ..homeserver import Homeserver

MAX_BACKFILL = 100
MAX_MISSING = 50


async def _room_visible_to(hs: Homeserver, origin: str, room_id: str) -> Any:
    """The room, if `origin` has (or had) a member in it; M_FORBIDDEN otherwise."""
    if hs.rooms.room_version(room_id) is None:
        raise errors.not_found("unknown room")
    room = await hs.rooms.get_room(room_id)
    members = [key[1] for key in room.state if key[0] == "m.room.member"]
    if not any(server_of(user) == origin for user in members):
        if room.state_content("m.room.history_visibility").get("history_visibility") != "world_readable":
            raise errors.forbidden(f"{origin} has no member in this room")
    return room


async def on_send(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    body = req.content
    if isinstance(body, dict) and body.get("origin") not in (None, origin):
        raise errors.forbidden("the transaction's origin is not the authenticated server")
    return 200, await hs.federation_inbound.on_transaction(origin, body)


async def on_make_join(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    versions = req.query.get("ver") or ["1"]
    return 200, await make_membership_template(hs, origin, req.path_params["roomId"], req.path_params["userId"],
                                               "join", versions)


async def on_make_leave(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    return 200, await make_membership_template(hs, origin, req.path_params["roomId"], req.path_params["userId"],
                                               "leave", None)


async def on_send_join(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    return 200, await on_send_membership(hs, origin, req.path_params["roomId"], req.path_params["eventId"],
                                         req.content, "join")


async def on_send_leave(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    return 200, await on_send_membership(hs, origin, req.path_params["roomId"], req.path_params["eventId"],
                                         req.content, "leave")


async def on_invite_v2(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    return 200, await on_invite(hs, origin, req.path_params["roomId"], req.path_params["eventId"], req.content)


async def on_event(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    event_id = req.path_params["eventId"]
    found = await hs.rooms.get_events_any([event_id])
    if event_id not in found or found[event_id][2]:
        raise errors.not_found("unknown event")
    event = found[event_id][0]
    await _room_visible_to(hs, origin, event.room_id)
    return 200, {"origin": hs.server_name, "origin_server_ts": now_ms(), "pdus": [hs.rooms.outgoing_pdu(event)]}


async def _state_before(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[Any, list[Event]]:
    room_id = req.path_params["roomId"]
    await _room_visible_to(hs, origin, room_id)
    event_id = req.arg("event_id")
    if not event_id:
        raise errors.missing_param("event_id is required")
    group = await federation_store.state_group_before(hs.db, event_id, room_id)
    if group is None:
        raise errors.not_found("no state known at that event")
    state = await hs.rooms.load_state_group(room_id, group)
    return room_id, list(state.values())


async def on_state_ids(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    from .joins import auth_chain_pdus

    _, state = await _state_before(hs, origin, req)
    chain = await auth_chain_pdus(hs, state)
    from ..event_hashing import compute_event_id

    room_version = state[0].room_version if state else None
    chain_ids = [compute_event_id(pdu, room_version) for pdu in chain] if room_version else []
    return 200, {"pdu_ids": [ev.event_id for ev in state], "auth_chain_ids": chain_ids}


async def on_state(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    from .joins import auth_chain_pdus

    _, state = await _state_before(hs, origin, req)
    return 200, {"pdus": hs.rooms.outgoing_pdus(state), "auth_chain": await auth_chain_pdus(hs, state)}


async def _walk_back(hs: Homeserver, start: list[str], stop: set[str], limit: int) -> list[Event]:
    """Breadth-first over prev_events from `start` (exclusive of `stop`), newest first."""
    out: list[Event] = []
    seen = set(stop)
    frontier = [e for e in start if e not in seen]
    while frontier and len(out) < limit:
        seen.update(frontier)
        found = await hs.rooms.get_events_any(frontier)
        frontier = []
        for ev, outlier, rejected in sorted(found.values(), key=lambda t: -t[0].depth):
            if outlier or rejected:
                continue
            out.append(ev)
            frontier.extend(p for p in ev.prev_event_ids if p not in seen)
            if len(out) >= limit:
                break
    return out


async def on_backfill(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    room_id = req.path_params["roomId"]
    await _room_visible_to(hs, origin, room_id)
    starts = req.query.get("v") or []
    try:
        limit = min(MAX_BACKFILL, max(1, int(req.arg("limit", "10") or "10")))
    except ValueError:
        raise errors.invalid_param("limit must be an integer") from None
    events = await _walk_back(hs, starts, set(), limit)
    return 200, {"origin": hs.server_name, "origin_server_ts": now_ms(), "pdus": hs.rooms.outgoing_pdus(events)}


async def on_get_missing_events(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    room_id = req.path_params["roomId"]
    await _room_visible_to(hs, origin, room_id)
    body = req.content if isinstance(req.content, dict) else {}
    earliest = [e for e in body.get("earliest_events", []) if isinstance(e, str)]
    latest = [e for e in body.get("latest_events", []) if isinstance(e, str)]
    limit = body.get("limit", 10)
    min_depth = body.get("min_depth", 0)
    if not isinstance(limit, int) or not isinstance(min_depth, int):
        raise errors.bad_json("limit and min_depth must be integers")
    limit = min(MAX_MISSING, max(1, limit))
    latest_events = await hs.rooms.get_events_any(latest)
    starts = [p for ev, _, _ in latest_events.values() for p in ev.prev_event_ids]
    events = [ev for ev in await _walk_back(hs, starts, set(earliest) | set(latest), limit) if ev.depth >= min_depth]
    events.sort(key=lambda e: e.depth)
    return 200, {"events": hs.rooms.outgoing_pdus(events)}


async def on_query_directory(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    alias = req.arg("room_alias")
    if not alias:
        raise errors.missing_param("room_alias is required")
    room_id = await hs.rooms.resolve_alias_local(alias)
    if room_id is None:
        raise errors.not_found("Room alias not found")
    servers = sorted(hs.federation_sender.servers_in_room(room_id) | {hs.server_name})
    servers.remove(hs.server_name)
    return 200, {"room_id": room_id, "servers": [hs.server_name] + servers}


async def on_query_profile(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    user_id = req.arg("user_id")
    if not user_id or not user_id.endswith(":" + hs.server_name):
        raise errors.not_found("no such user here")
    profile = await hs.accounts.get_profile(user_id)
    field = req.arg("field")
    if field:
        if field not in profile:
            raise errors.not_found("field not set")
        return 200, {field: profile[field]}
    return 200, profile


def register(routes: Any = FEDERATION_ROUTES) -> None:
    add = routes.add
    add("PUT", "/_matrix/federation/v1/send/{txnId}", on_send)
    add("GET", "/_matrix/federation/v1/make_join/{roomId}/{userId}", on_make_join)
    add("PUT", "/_matrix/federation/v2/send_join/{roomId}/{eventId}", on_send_join)
    add("GET", "/_matrix/federation/v1/make_leave/{roomId}/{userId}", on_make_leave)
    add("PUT", "/_matrix/federation/v2/send_leave/{roomId}/{eventId}", on_send_leave)
    add("PUT", "/_matrix/federation/v2/invite/{roomId}/{eventId}", on_invite_v2)
    add("GET", "/_matrix/federation/v1/event/{eventId}", on_event)
    add("GET", "/_matrix/federation/v1/state_ids/{roomId}", on_state_ids)
    add("GET", "/_matrix/federation/v1/state/{roomId}", on_state)
    add("GET", "/_matrix/federation/v1/backfill/{roomId}", on_backfill)
    add("POST", "/_matrix/federation/v1/get_missing_events/{roomId}", on_get_missing_events)
    add("GET", "/_matrix/federation/v1/query/directory", on_query_directory)
    add("GET", "/_matrix/federation/v1/query/profile", on_query_profile)


register()
