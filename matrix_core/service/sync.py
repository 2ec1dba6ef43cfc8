"""/sync: what changed for one user since a stream position, long-polling on the event stream."""
from __future__ import annotations

import logging
import time
from typing import Any

from .. import errors, params
from ..account_data_rules import ephemeral_filter, ephemeral_kept
from ..events import Event
from ..log_limit import LogLimiter
from ..notifier import EventStream
from ..sync_token import SIDE_STREAMS, SyncToken, parse_sync_token
from .accounts import Requester
from .rooms import Rooms
from .sync_sources import SyncContext, SyncOutput, SyncSource

log = logging.getLogger(__name__)

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 500


def parse_stream_token(token: str | None) -> int | None:
    """Our tokens are 's<position>' (also 't<position>'); strict and bounded (params.py)."""
    return params.stream_token(token)


def timeline_limit(sync_filter: dict[str, Any]) -> int:
    room_filter = sync_filter.get("room", {}) if isinstance(sync_filter, dict) else {}
    timeline = room_filter.get("timeline", {}) if isinstance(room_filter, dict) else {}
    limit = timeline.get("limit", DEFAULT_TIMELINE_LIMIT) if isinstance(timeline, dict) else DEFAULT_TIMELINE_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise errors.bad_json("Filter timeline limit must be a non-negative integer")
    return min(limit, MAX_TIMELINE_LIMIT)


class Sync:
    def __init__(self, rooms: Rooms, stream: EventStream) -> None:
        self.rooms = rooms
        self.stream = stream
        self._skip_log = LogLimiter(60.0)
        self._sources: list[SyncSource] = []

    def add_source(self, source: SyncSource) -> None:
        """Register a domain that adds to /sync answers (sync_sources.py); one per stream."""
        if source.stream not in SIDE_STREAMS or any(s.stream == source.stream for s in self._sources):
            raise ValueError(f"sync source stream {source.stream!r} is unknown or taken")
        self._sources.append(source)

    def source(self, stream: str) -> SyncSource | None:
        """The source registered for a stream (sliding sync's extensions reuse them)."""
        return next((s for s in self._sources if s.stream == stream), None)

    def notify(self) -> None:
        """A source's stream moved: wake the long-polls so they look."""
        self.stream.wake_all()

    def _side_positions(self) -> dict[str, int]:
        return {source.stream: source.position() for source in self._sources}

    async def sync(self, requester: Requester, since: str | None, timeout_ms: int, full_state: bool,
                   sync_filter: dict[str, Any]) -> dict[str, Any]:
        since_token = parse_sync_token(since)
        limit = timeline_limit(sync_filter)
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            upto = self.stream.position
            side_upto = self._side_positions()
            memberships = await self._loadable_memberships(requester.user_id)
            if since_token is None:
                rooms = await self._initial(requester, upto, limit, memberships)
            else:
                rooms = await self._incremental(requester, since_token.events, upto, limit, full_state,
                                                memberships)
            joined = [room_id for room_id, (membership, _) in memberships if membership == "join"]
            ctx = SyncContext(requester, joined, since_token is None, full_state, sync_filter)
            out = await self._collect_sources(ctx, since_token, side_upto)
            await self._merge(ctx, rooms, out)
            remaining = deadline - time.monotonic()
            if (since_token is None or full_state or any(rooms.values()) or out.has_news()
                    or remaining <= 0 or self.stream.closed):
                break
            await self.stream.wait_for_signal(
                lambda: self.stream.position > upto or self._side_positions() != side_upto, remaining)
            if self.stream.position == upto and self._side_positions() == side_upto:
                break  # timed out (or shutting down) with nothing new: an empty answer
        return {
            "next_batch": SyncToken(upto, side_upto).format(),
            "rooms": rooms,
            "presence": {"events": out.top.get("presence", [])},
            "account_data": {"events": out.top.get("account_data", [])},
            "to_device": {"events": out.top.get("to_device", [])},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
            **out.top_fields,
        }

    async def _collect_sources(self, ctx: SyncContext, since: SyncToken | None,
                               side_upto: dict[str, int]) -> SyncOutput:
        out = SyncOutput()
        for source in self._sources:
            upto = side_upto[source.stream]
            after = 0 if since is None or ctx.full_state else min(since.position(source.stream), upto)
            if ctx.initial or ctx.full_state or after < upto:
                await source.collect(ctx, after, upto, out)
            await source.every_answer(ctx, out)
        return out

    async def _merge(self, ctx: SyncContext, rooms: dict[str, Any], out: SyncOutput) -> None:
        """Put the sources' per-room news into the join section (a room with only a receipt or a
        typing change appears with an empty timeline), then let sources annotate shown rooms."""
        join: dict[str, Any] = rooms["join"]
        joined = set(ctx.joined_rooms)
        ephemeral = ephemeral_filter(ctx.sync_filter)
        for room_id, sections in out.rooms.items():
            if room_id not in joined:
                continue  # a source may only speak of rooms the user is in now
            if ephemeral is not None and "ephemeral" in sections:
                had = any(sections.values())
                sections = {**sections, "ephemeral": ephemeral_kept(ephemeral, room_id, sections["ephemeral"])}
                if had and not any(sections.values()):
                    continue  # only news the filter leaves out: the room does not appear for it
            body = join.get(room_id)
            if body is None:
                body = join[room_id] = self._joined_room_body(ctx.requester, [], False, [])
            for section, events in sections.items():
                body.setdefault(section, {"events": []})["events"].extend(events)
        if join:
            for source in self._sources:
                await source.annotate(ctx, list(join), out)
        for room_id, fields in out.room_fields.items():
            if room_id in join:
                join[room_id].update(fields)

    def _joined_room_body(self, requester: Requester, timeline: list[tuple[int, Event]], limited: bool,
                          state: list[Event]) -> dict[str, Any]:
        prev = timeline[0][0] - 1 if timeline else self.stream.position
        return {
            "timeline": {
                "events": [self.rooms.serialize(ev, requester) for _, ev in timeline],
                "limited": limited,
                "prev_batch": f"s{prev}",
            },
            "state": {"events": [self.rooms.serialize(ev) for ev in state]},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "unread_notifications": {},
            "summary": {},
        }

    async def _room_window(self, room_id: str, after: int | None, upto: int, limit: int
                           ) -> tuple[list[tuple[int, Event]], bool]:
        got = await self.rooms.timeline(room_id, upto, limit + 1, after=after)
        got.reverse()
        limited = len(got) > limit
        return (got[-limit:] if limit else []), limited

    async def _initial(self, requester: Requester, upto: int, limit: int,
                       memberships: list[tuple[str, tuple[str, int]]]) -> dict[str, Any]:
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        for room_id, (membership, _) in memberships:
            room = await self._room_if_known(room_id)
            if membership == "join":
                timeline, limited = await self._room_window(room_id, None, upto, limit)
                timeline = await self._visible(requester, room_id, timeline)
                in_timeline = {ev.event_id for _, ev in timeline}
                state = [ev for ev in room.state.values() if ev.event_id not in in_timeline]
                join[room_id] = self._joined_room_body(requester, timeline, limited, state)
            elif membership == "invite":
                stripped = self._invite_state(requester.user_id, room_id, room)
                if stripped is not None:
                    invite[room_id] = {"invite_state": {"events": stripped}}
        await self.rooms.relations.bundle_rooms(  # bundled aggregations (service/relations.py)
            requester, {room_id: body["timeline"]["events"] for room_id, body in join.items()})
        return {"join": join, "invite": invite, "leave": {}}

    async def _loadable_memberships(self, user_id: str) -> list[tuple[str, tuple[str, int]]]:
        """The user's memberships, less joined and invited rooms that cannot be loaded now.

        A room this hub does not know although a join names it, or whose rows fail to load, is
        left out with one log line a minute: one bad room must not make every /sync of its
        members a 500. (Invites into rooms hosted elsewhere have no local room: they stay.)
        """
        out: list[tuple[str, tuple[str, int]]] = []
        for room_id, entry in list(self.rooms.memberships.get(user_id, {}).items()):
            if entry[0] in ("join", "invite"):
                try:
                    if self.rooms.room_version(room_id) is not None:
                        if self.rooms.loaded_room(room_id) is None:
                            await self.rooms.get_room(room_id)
                    elif entry[0] == "join":
                        raise LookupError("a membership names a room this hub does not hold")
                except Exception as exc:
                    self._skip_log.log(log, logging.ERROR, room_id, "sync leaves out room %s for %s: %r",
                                       room_id, user_id, exc)
                    continue
            out.append((room_id, entry))
        return out

    async def _visible(self, requester: Requester, room_id: str,
                       timeline: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
        """The events of a timeline window the user may see (history visibility)."""
        if not timeline:
            return timeline
        return (await self.rooms.read_access(requester, room_id)).visible(timeline)

    def _invite_state(self, user_id: str, room_id: str, room: Any) -> list[dict[str, Any]] | None:
        """Stripped state for an invite: from the room if we know it, else from the remote invite."""
        if room is not None:
            invite_event = room.state.get(("m.room.member", user_id))
            if invite_event is not None and invite_event.membership == "invite":
                return self.rooms.invite_state(room, invite_event)
        remote = self.rooms.remote_invites.get((user_id, room_id))
        return remote[2] if remote is not None else None

    async def _room_if_known(self, room_id: str) -> Any:
        return await self.rooms.get_room(room_id) if self.rooms.room_version(room_id) is not None else None

    async def _incremental(self, requester: Requester, since: int, upto: int, limit: int,
                           full_state: bool, memberships: list[tuple[str, tuple[str, int]]]) -> dict[str, Any]:
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        bundled: dict[str, list[dict[str, Any]]] = {}
        recent = self.stream.recent_since(since)
        by_room: dict[str, list[tuple[int, Event]]] | None = None
        if recent is not None:
            by_room = {}
            for pos, ev in recent:
                if pos <= upto:
                    by_room.setdefault(ev.room_id, []).append((pos, ev))
        for room_id, (membership, mpos) in memberships:
            changed = since < mpos <= upto
            if membership == "join":
                if by_room is not None:
                    window = by_room.get(room_id, [])
                    limited = len(window) > limit
                    timeline = window[-limit:] if limit else []
                else:
                    timeline, limited = await self._room_window(room_id, since, upto, limit)
                if not timeline and not changed and not full_state:
                    continue
                timeline = await self._visible(requester, room_id, timeline)
                room = await self.rooms.get_room(room_id)
                in_timeline = {ev.event_id for _, ev in timeline}
                if changed or full_state or by_room is None:
                    state = [ev for ev in room.state.values() if ev.event_id not in in_timeline]
                elif limited:
                    gap = {ev.event_id for _, ev in by_room.get(room_id, []) if ev.is_state} - in_timeline
                    state = [ev for ev in room.state.values() if ev.event_id in gap]
                else:
                    state = []
                join[room_id] = self._joined_room_body(requester, timeline, limited, state)
                if limited or changed:  # bundled aggregations: limited timelines, newly joined rooms
                    bundled[room_id] = join[room_id]["timeline"]["events"]
            elif membership == "invite" and changed:
                stripped = self._invite_state(requester.user_id, room_id, await self._room_if_known(room_id))
                if stripped is not None:
                    invite[room_id] = {"invite_state": {"events": stripped}}
            elif membership in ("leave", "ban") and changed:
                timeline, limited = await self._room_window(room_id, since, mpos, limit)
                timeline = await self._visible(requester, room_id, timeline)
                leave[room_id] = {
                    "timeline": {
                        "events": [self.rooms.serialize(ev, requester) for _, ev in timeline],
                        "limited": limited,
                        "prev_batch": f"s{timeline[0][0] - 1 if timeline else mpos}",
                    },
                    "state": {"events": []},
                    "account_data": {"events": []},
                }
                if limited:
                    bundled[room_id] = leave[room_id]["timeline"]["events"]
        await self.rooms.relations.bundle_rooms(requester, bundled)
        return {"join": join, "invite": invite, "leave": leave}
