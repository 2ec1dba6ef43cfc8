"""/sync: what changed for one user since a stream position, long-polling on the event stream."""
from __future__ import annotations

import logging
import time
from typing import Any

from .. import errors, params
from ..events import Event
from ..log_limit import LogLimiter
from ..notifier import EventStream
from .accounts import Requester
from .rooms import Rooms

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

    async def sync(self, requester: Requester, since: str | None, timeout_ms: int, full_state: bool,
                   sync_filter: dict[str, Any]) -> dict[str, Any]:
        since_pos = parse_stream_token(since)
        limit = timeline_limit(sync_filter)
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            upto = self.stream.position
            if since_pos is None:
                rooms = await self._initial(requester, upto, limit)
            else:
                rooms = await self._incremental(requester, since_pos, upto, limit, full_state)
            remaining = deadline - time.monotonic()
            if since_pos is None or full_state or any(rooms.values()) or remaining <= 0 or self.stream.closed:
                break
            if not await self.stream.wait_for_change(upto, remaining):
                break  # timed out (or shutting down) with nothing new: an empty answer
        return {
            "next_batch": f"s{upto}",
            "rooms": rooms,
            "presence": {"events": []},
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }

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

    async def _initial(self, requester: Requester, upto: int, limit: int) -> dict[str, Any]:
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        for room_id, (membership, _) in await self._loadable_memberships(requester.user_id):
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
                           full_state: bool) -> dict[str, Any]:
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        recent = self.stream.recent_since(since)
        by_room: dict[str, list[tuple[int, Event]]] | None = None
        if recent is not None:
            by_room = {}
            for pos, ev in recent:
                if pos <= upto:
                    by_room.setdefault(ev.room_id, []).append((pos, ev))
        for room_id, (membership, mpos) in await self._loadable_memberships(requester.user_id):
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
        return {"join": join, "invite": invite, "leave": leave}
