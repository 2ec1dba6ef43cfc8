"""Presence of local users: PUT/GET /presence/{userId}/status and /sync's top-level `presence`.

Kept in memory only: presence is what a user is doing now, so after a restart everyone starts
as offline until their client says otherwise (Synapse persists it, a hub need not: an SD card is
spared one write per status change). Shared with users who share a joined room, as the spec says.
No idle timer and no federation EDUs yet: a state stays as its user last set it, and users of
other servers read as offline.

With the config's `presence_enabled = false` (small servers often turn presence off) the hub
does what Synapse does with `use_presence: false`: a PUT is checked and then ignored, a GET
answers `offline`, and /sync carries no presence.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import errors, presence_state
from ..account_data_rules import event_filter_allows, explicit_limit
from ..clock import now_ms
from ..presence_state import OFFLINE, UserPresence
from .rooms import Rooms
from .sync import Sync
from .sync_sources import SyncContext, SyncOutput, SyncSource


class Presence:
    def __init__(self, rooms: Rooms, sync: Sync, enabled: bool = True,
                 clock: Callable[[], int] = now_ms) -> None:
        self.rooms = rooms
        self.enabled = enabled
        self.clock = clock
        self._position = 0
        self._states: dict[str, tuple[int, UserPresence]] = {}  # local user -> (position, state)
        self._notify = sync.notify
        # Called with (user, new state) when a local user's presence changes (application services)
        self.listeners: list[Callable[[str, UserPresence], None]] = []
        if enabled:
            sync.add_source(PresenceSource(self))

    def position(self) -> int:
        return self._position

    def state_of(self, user_id: str) -> UserPresence:
        entry = self._states.get(user_id)
        return OFFLINE if entry is None else entry[1]

    def set_status(self, user_id: str, presence: str, status_msg: str | None) -> None:
        """A local user's own PUT (already checked: presence_state.parse_status_body)."""
        if not self.enabled:
            return
        old = self.state_of(user_id)
        new = presence_state.updated(old, presence, status_msg, self.clock())
        if not presence_state.is_news(old, new):
            self._states[user_id] = (self._states[user_id][0] if user_id in self._states else 0, new)
            return
        self._position += 1
        self._states[user_id] = (self._position, new)
        self._notify()
        for listener in self.listeners:
            listener(user_id, new)

    async def get_status(self, requester_id: str, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status: one's own, or of a user one shares a room with."""
        if not self.enabled:
            return {"presence": "offline"}
        if user_id != requester_id and not await self.shares_room(requester_id, user_id):
            raise errors.forbidden("You are not allowed to see their presence")
        return presence_state.content(self.state_of(user_id), self.clock())

    async def shares_room(self, user_id: str, other: str) -> bool:
        for room_id in self.rooms.joined_room_ids(user_id):
            room = self.rooms.loaded_room(room_id) or await self.rooms.get_room(room_id)
            if room.member(other) == "join":
                return True
        return False

    async def visible_to(self, user_id: str, joined_rooms: list[str], users: list[str]) -> set[str]:
        """Which of `users` the user may see: themselves and those joined to one of their rooms.
        A dict lookup per (room, user): the users changed in a sync window are few, while a
        hub account may sit in hundreds of device rooms with long member lists."""
        rooms = [self.rooms.loaded_room(r) or await self.rooms.get_room(r) for r in joined_rooms]
        return {u for u in users if u == user_id or any(room.member(u) == "join" for room in rooms)}

    def changed(self, after: int, upto: int) -> list[tuple[str, UserPresence]]:
        """Users whose latest change is in (after, upto] (every known one for after = 0)."""
        return [(user_id, state) for user_id, (pos, state) in self._states.items()
                if after < pos <= upto or (after == 0 and pos <= upto)]


class PresenceSource(SyncSource):
    """/sync's top-level `presence`: changes of the users who share a room with the requester,
    filtered by the sync filter's `presence` (types, not_types, senders, not_senders, limit)."""

    stream = "presence"

    def __init__(self, presence: Presence) -> None:
        self.presence = presence

    def position(self) -> int:
        return self.presence.position()

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        changed = self.presence.changed(since, upto)
        filt = ctx.sync_filter.get("presence") if isinstance(ctx.sync_filter, dict) else None
        changed = [(u, s) for u, s in changed if event_filter_allows(filt, "m.presence", u)]
        if not changed:
            return
        visible = await self.presence.visible_to(ctx.requester.user_id, ctx.joined_rooms, [u for u, _ in changed])
        now = self.presence.clock()
        events = [presence_state.event(u, s, now) for u, s in changed if u in visible]
        limit = explicit_limit(filt)
        out.add_top("presence", events[-limit:] if limit else events)
