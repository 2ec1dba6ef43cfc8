"""Typing notifications: who is typing in which room, IN MEMORY ONLY (a restart forgets it, as
Synapse's does: a typing notice is worth nothing after its timeout, which is at most 30 s).

Each change (a user starts or stops, a timeout runs out) moves the "typing" sync stream by one
and wakes waiting long-polls; /sync's joined rooms carry `m.typing` with the room's current
typers. Timeouts expire here on the server (one timer, set for the earliest). Local users'
changes go to the other servers in the room as `m.typing` EDUs (best effort: a lost one runs out
on the other side after its own timeout); other servers' EDUs land here through `remote_typing`.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Hashable, Protocol

from .. import errors
from ..clock import now_ms
from ..ephemeral import FEDERATION_TYPING_TIMEOUT_MS, TypingEDU, TypingRequest, typing_edu, typing_event
from ..identifiers import server_of
from ..ratelimit import RateLimit, RateLimiter
from .accounts import Requester
from .sync_sources import SyncContext, SyncOutput, SyncSource

if TYPE_CHECKING:
    from .rooms import Rooms

log = logging.getLogger(__name__)

# Per user: a client sends "typing" on a keystroke burst and refreshes it every few seconds;
# more than this is a flood (M_LIMIT_EXCEEDED), each accepted change being a /sync wake-up for
# every member and an EDU for every server in the room.
TYPING_RATE = RateLimit(per_second=2.0, burst=20)
# While a local user keeps typing, the other servers are reminded this often (theirs time out
# after 60 s without news).
FEDERATION_REFRESH_S = 20.0


class EduQueue(Protocol):
    """What the ephemeral services ask of federation (FederationSender implements it): queue an
    EDU for one server, replacing a queued one with the same key; `after_sent` runs once a
    transaction carrying it was acknowledged."""

    def queue_edu(self, destination: str, key: Hashable, edu: dict[str, Any],
                  after_sent: Callable[[], None] | None = None) -> None: ...


class Typing:
    def __init__(self, rooms: Rooms, server_name: str, notify: Callable[[], None],
                 limit: RateLimit = TYPING_RATE) -> None:
        self.rooms = rooms
        self.server_name = server_name
        self._notify = notify
        self._limiter = RateLimiter(limit)
        self._typers: dict[str, dict[str, float]] = {}  # room -> user -> expiry (loop time, s)
        self._room_position: dict[str, int] = {}  # room -> the stream position of its last change
        # The stream is not persisted, so it starts at the wall clock's milliseconds: above any
        # position handed out before a restart (changes are rate-limited far below one per ms),
        # so a client's old token sees every change made after the restart.
        self._position = now_ms()
        self._poked: dict[tuple[str, str], float] = {}  # (room, local user) -> last EDU sent (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self.federation: EduQueue | None = None  # set by the federation front end at its start
        self.sync_source = TypingSource(self)
        # told the room id whenever a room's typers change (application services' ephemeral push)
        self.listeners: list[Callable[[str], None]] = []

    @property
    def position(self) -> int:
        return self._position

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- changes ------------------------------------------------------------------------------

    async def set_typing(self, requester: Requester, room_id: str, user_id: str, request: TypingRequest) -> None:
        """PUT /rooms/{roomId}/typing/{userId}: only for yourself, only in a room you are in."""
        if user_id != requester.user_id:
            raise errors.forbidden("You may only set your own typing state")
        if not self.rooms.is_joined(user_id, room_id):
            raise errors.forbidden("You are not in this room")
        self._limiter.check(user_id)
        self._set(room_id, user_id, request.typing, request.timeout_ms, local=True)

    async def remote_typing(self, origin: str, edu: TypingEDU) -> None:
        """An `m.typing` EDU from `origin`: its user must be of that server and joined to the room
        (ValueError otherwise: the caller drops the EDU with a log line)."""
        if server_of(edu.user_id) != origin:
            raise ValueError(f"{edu.user_id} is not a user of {origin}")
        if self.rooms.room_version(edu.room_id) is None:
            raise ValueError(f"unknown room {edu.room_id}")
        room = await self.rooms.get_room(edu.room_id)
        if room.member(edu.user_id) != "join":
            raise ValueError(f"{edu.user_id} is not in {edu.room_id}")
        if self._limiter.tokens(edu.user_id) < 1:
            raise ValueError(f"typing flood from {edu.user_id}")
        self._limiter.check(edu.user_id)
        self._set(edu.room_id, edu.user_id, edu.typing, FEDERATION_TYPING_TIMEOUT_MS, local=False)

    def _set(self, room_id: str, user_id: str, typing: bool, timeout_ms: int, local: bool) -> None:
        now = asyncio.get_running_loop().time()
        typers = self._typers.get(room_id)
        was_typing = typers is not None and user_id in typers
        if typing:
            self._typers.setdefault(room_id, {})[user_id] = now + timeout_ms / 1000
            changed = not was_typing
        else:
            if typers is not None and was_typing:
                del typers[user_id]
                if not typers:
                    del self._typers[room_id]
            changed = was_typing
        if changed:
            self._moved(room_id)
        if local:
            key = (room_id, user_id)
            last = self._poked.get(key)
            if changed or (typing and (last is None or now - last >= FEDERATION_REFRESH_S)):
                self._tell_servers(room_id, user_id, typing)
                if typing:
                    self._poked[key] = now
                else:
                    self._poked.pop(key, None)
        self._schedule()

    def _moved(self, room_id: str) -> None:
        self._position += 1
        self._room_position[room_id] = self._position
        self._notify()
        for listener in self.listeners:
            listener(room_id)

    def _tell_servers(self, room_id: str, user_id: str, typing: bool) -> None:
        if self.federation is None:
            return
        room = self.rooms.loaded_room(room_id)
        if room is None:
            return
        servers = {server_of(user) for user in room.joined_users()} - {self.server_name}
        edu = typing_edu(room_id, user_id, typing)
        for server in servers:
            self.federation.queue_edu(server, ("m.typing", room_id, user_id), edu)

    # -- timeouts -----------------------------------------------------------------------------

    def _schedule(self) -> None:
        """One timer, for the earliest expiry (a handful of typers: a scan is cheaper than a heap)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        soonest = min((t for typers in self._typers.values() for t in typers.values()), default=None)
        if soonest is not None:
            self._timer = asyncio.get_running_loop().call_at(soonest, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for room_id, typers in list(self._typers.items()):
            gone = [user for user, until in typers.items() if until <= now]
            for user in gone:
                del typers[user]
                if server_of(user) == self.server_name:
                    self._poked.pop((room_id, user), None)
                    self._tell_servers(room_id, user, False)
            if not typers:
                del self._typers[room_id]
            if gone:
                self._moved(room_id)
        self._schedule()

    # -- reads --------------------------------------------------------------------------------

    def typers(self, room_id: str) -> list[str]:
        """The room's current typers that are still joined (one who left stops at once)."""
        typers = self._typers.get(room_id)
        if not typers:
            return []
        room = self.rooms.loaded_room(room_id)
        return [user for user in typers if room is None or room.member(user) == "join"]

    def rooms_with_typers(self) -> list[str]:
        return list(self._typers)

    def changed_rooms(self, since: int, upto: int) -> list[str]:
        return [room for room, pos in self._room_position.items() if since < pos <= upto]


class TypingSource(SyncSource):
    """/sync's `m.typing` in joined rooms' `ephemeral`: a room's current typers whenever they
    changed since the client's token (an empty list says everyone stopped); an initial sync has
    every room where somebody is typing now."""

    stream = "typing"

    def __init__(self, typing: Typing) -> None:
        self.typing = typing

    def position(self) -> int:
        return self.typing.position

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        joined = set(ctx.joined_rooms)
        if ctx.initial:
            rooms = [room for room in self.typing.rooms_with_typers() if room in joined]
        else:
            rooms = [room for room in self.typing.changed_rooms(since, upto) if room in joined]
        for room_id in rooms:
            typers = self.typing.typers(room_id)
            if typers or not ctx.initial:
                out.add_room(room_id, "ephemeral", [typing_event(typers)])
