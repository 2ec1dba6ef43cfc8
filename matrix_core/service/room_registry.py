"""Which rooms this hub holds, their in-memory views (loaded on first use), and where local users
stand in them: the facts every other part of the rooms service starts from."""
from __future__ import annotations

import asyncio
import json

from .. import errors
from ..events import Event
from ..room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from ..store import Database, event_json
from ..store import events as event_rows, rooms as room_rows, state_groups
from .room_cache import RoomCache


class RoomRegistry:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name
        self.rooms: dict[str, RoomCache] = {}  # loaded rooms
        self.versions: dict[str, RoomVersion] = {}  # every room held
        self._loading: dict[str, asyncio.Future[RoomCache]] = {}
        # user_id -> room_id -> (membership, stream position of that member event), local users only
        self.memberships: dict[str, dict[str, tuple[str, int]]] = {}

    async def load(self) -> None:
        for room_id, version in await room_rows.room_versions(self.db):
            self.versions[room_id] = KNOWN_ROOM_VERSIONS[version]
        for room_id, user_id, membership, pos in await event_rows.local_memberships(self.db):
            if user_id.endswith(":" + self.server_name):
                self.memberships.setdefault(user_id, {})[room_id] = (membership, pos)

    def room_version(self, room_id: str) -> RoomVersion | None:
        return self.versions.get(room_id)

    def loaded_room(self, room_id: str) -> RoomCache | None:
        """The room's in-memory view if it is loaded (no I/O), else None."""
        return self.rooms.get(room_id)

    def add_room(self, room: RoomCache) -> None:
        """Make a room known (a remote room we joined): its row is written with its first events."""
        self.versions[room.room_id] = room.version
        self.rooms[room.room_id] = room

    async def get_room(self, room_id: str) -> RoomCache:
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        if room_id not in self.versions:
            raise errors.not_found(f"Unknown room {room_id}")
        pending = self._loading.get(room_id)
        if pending is not None:
            return await pending
        fut: asyncio.Future[RoomCache] = asyncio.get_running_loop().create_future()
        self._loading[room_id] = fut
        try:
            room = await self._load_room(room_id)
            self.rooms[room_id] = room
            fut.set_result(room)
            return room
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._loading[room_id]

    async def _load_room(self, room_id: str) -> RoomCache:
        version = self.versions[room_id]
        stored_extremities, group = await room_rows.room_head(self.db, room_id)
        room = RoomCache(room_id, version, extremities=json.loads(stored_extremities), state_group=group,
                         stored_extremities=stored_extremities, stored_group=group)
        if not room.extremities:
            latest = await event_rows.latest_timeline_event(self.db, room_id)
            room.extremities = [latest[1]] if latest else []
        for event_id, pdu_json in await event_rows.current_state_json(self.db, room_id):
            ev = Event(event_json.load(pdu_json), event_id, version)
            room.state[(ev.type, ev.state_key or "")] = ev
        if room.extremities:
            room.depth = await event_rows.max_depth(self.db, room.extremities)
        if room.state_group is not None:
            room.state_chain = await state_groups.chain_length(self.db, room.state_group)
        return room

    # -- membership index -----------------------------------------------------------------------

    def membership_of(self, user_id: str, room_id: str) -> tuple[str, int] | None:
        return self.memberships.get(user_id, {}).get(room_id)

    def joined_room_ids(self, user_id: str) -> list[str]:
        return [r for r, (m, _) in self.memberships.get(user_id, {}).items() if m == "join"]
