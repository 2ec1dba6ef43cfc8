"""Account data, global and per room, and room tags (the `m.tag` room account data): stored per
user (store/account_data.py), given to /sync through the "account_data" stream.

Other parts of the hub set server-managed types through the same methods (read markers set
`m.fully_read`); only the client API refuses those types (account_data_rules.check_client_settable).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from .. import account_data_rules as rules
from ..store import Database
from ..store import account_data as rows
from .sync import Sync
from .sync_sources import SyncContext, SyncOutput, SyncSource


class AccountData:
    def __init__(self, db: Database, sync: Sync) -> None:
        self.db = db
        self._position = 0
        # Called whenever the position moves (the Sync service's notify: wakes long-polls).
        self.on_change: Callable[[], None] = sync.notify
        sync.add_source(AccountDataSource(self))
        # Global types another service keeps in its own store (the push rules service's
        # `m.push_rules`): GET /user/{userId}/account_data/{type} reads them through it, as the
        # spec asks ("servers must allow clients to read the above event types as normal").
        self._readers: dict[str, Callable[[str], Awaitable[dict | None]]] = {}

    async def load(self) -> None:
        self._position = await rows.max_stream_id(self.db)

    def position(self) -> int:
        return self._position

    def _moved(self, stream_id: int | None) -> None:
        if stream_id is not None and stream_id > self._position:
            self._position = stream_id
            self.on_change()

    # -- the interface other services call (read markers: m.fully_read) -------------------------

    async def set_global_account_data(self, user_id: str, data_type: str, content: dict) -> None:
        await self._put(user_id, rows.GLOBAL, data_type, content)

    async def set_room_account_data(self, user_id: str, room_id: str, data_type: str, content: dict) -> None:
        await self._put(user_id, room_id, data_type, content)

    async def get_global_account_data(self, user_id: str, data_type: str) -> dict | None:
        reader = self._readers.get(data_type)
        if reader is not None:
            return await reader(user_id)
        return await self._get(user_id, rows.GLOBAL, data_type)

    def register_reader(self, data_type: str, reader: Callable[[str], Awaitable[dict | None]]) -> None:
        """Let a service that keeps a server-managed global type (`m.push_rules`) answer reads of
        it: `reader(user_id)` gives its content, or None (404)."""
        self._readers[data_type] = reader

    async def get_room_account_data(self, user_id: str, room_id: str, data_type: str) -> dict | None:
        return await self._get(user_id, room_id, data_type)

    async def _put(self, user_id: str, room_id: str, data_type: str, content: dict) -> None:
        text = rules.encode_content(content)  # M_BAD_JSON before anything is written
        self._moved(await self.db.write(lambda conn: rows.put(conn, user_id, room_id, data_type, text)))

    async def _get(self, user_id: str, room_id: str, data_type: str) -> dict | None:
        text = await rows.content(self.db, user_id, room_id, data_type)
        return None if text is None else rules.decode_content(text)

    # -- tags ---------------------------------------------------------------------------------------

    async def room_tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        return rules.tags_of(await self.get_room_account_data(user_id, room_id, rules.TAG_TYPE))

    async def add_tag(self, user_id: str, room_id: str, tag: str, body: dict[str, Any]) -> None:
        rules.encode_content(body)  # refuse what cannot be stored before the write

        def change(stored: str | None) -> str:
            current = None if stored is None else rules.decode_content(stored)
            return rules.encode_content(rules.with_tag(current, tag, body))

        self._moved(await self.db.write(
            lambda conn: rows.update(conn, user_id, room_id, rules.TAG_TYPE, change)))

    async def remove_tag(self, user_id: str, room_id: str, tag: str) -> None:
        """Remove one tag; a tag that is not there changes nothing (and wakes no one)."""
        def change(stored: str | None) -> str | None:
            if stored is None:
                return None
            new = rules.without_tag(rules.decode_content(stored), tag)
            return None if new is None else rules.encode_content(new)

        self._moved(await self.db.write(
            lambda conn: rows.update(conn, user_id, room_id, rules.TAG_TYPE, change)))


class AccountDataSource(SyncSource):
    """/sync's top-level `account_data` and joined rooms' `account_data` (tags, read markers, ...),
    filtered by the sync filter's `account_data` and `room.account_data` (types, not_types, rooms,
    not_rooms, and a limit when one is given)."""

    stream = "account_data"

    def __init__(self, account_data: AccountData) -> None:
        self.account_data = account_data

    def position(self) -> int:
        return self.account_data.position()

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        changed = await rows.changed(self.account_data.db, ctx.requester.user_id, since, upto)
        if not changed:
            return
        global_filter = rules.global_filter(ctx.sync_filter)
        room_filter, room_data_filter = rules.room_filters(ctx.sync_filter)
        joined = set(ctx.joined_rooms)
        global_events: list[dict[str, Any]] = []
        room_events: dict[str, list[dict[str, Any]]] = {}
        for room_id, data_type, text in changed:
            if room_id == rows.GLOBAL:
                if rules.event_filter_allows(global_filter, data_type):
                    global_events.append({"type": data_type, "content": rules.decode_content(text)})
            elif (room_id in joined and rules.room_allowed(room_filter, room_id)
                  and rules.room_allowed(room_data_filter, room_id)
                  and rules.event_filter_allows(room_data_filter, data_type)):
                room_events.setdefault(room_id, []).append({"type": data_type, "content": rules.decode_content(text)})
        limit = rules.explicit_limit(global_filter)
        out.add_top("account_data", global_events[-limit:] if limit else global_events)
        limit = rules.explicit_limit(room_data_filter)
        for room_id, events in room_events.items():
            out.add_room(room_id, "account_data", events[-limit:] if limit else events)
