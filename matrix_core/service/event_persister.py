"""Persisting events: stream positions, state groups, the rows of one write (store/events.py's
EventRows), and what happens once they are committed (the stream advances, memberships and
redactions are noted, federation hears of them).

It also keeps the events of the last moments in memory: an event placed here may be read (by a
sync, by federation asking for a previous PDU) before its write has committed."""
from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import Any

from .. import errors
from ..events import Event
from ..notifier import EventStream
from ..store import Database, event_json
from ..store import events as event_rows, state_groups
from ..store.database import WriteFn
from ..store.events import Compactor, EventRows
from .read_access import ReadGate
from .remote_rooms import NO_FEDERATION, RemoteRooms
from .room_cache import MAX_STATE_CHAIN, RoomCache, StateKey
from .room_registry import RoomRegistry

log = logging.getLogger(__name__)

# Events kept in memory (recently placed, outliers, state after each): about 2 KB each, so this
# bounds what a busy hub keeps resident on a 512 MB Pi; older ones are a database read away.
EVENT_CACHE_SIZE = 1024


class EventPersister:
    def __init__(self, db: Database, stream: EventStream, registry: RoomRegistry, read_gate: ReadGate,
                 server_name: str) -> None:
        self.db = db
        self.stream = stream
        self.registry = registry
        self.read_gate = read_gate
        self.server_name = server_name
        self.remote: RemoteRooms = NO_FEDERATION  # told of every commit (Rooms.attach_federation)
        self._next_stream = 1
        self._next_backfill = -1
        self._next_state_group = 1
        self.event_cache: OrderedDict[str, Event] = OrderedDict()  # placed events (timeline)
        self.outlier_cache: OrderedDict[str, Event] = OrderedDict()  # auth/state events not placed
        # event id -> (state after it, its group), for events placed moments ago (writes may be queued)
        self._recent_state: OrderedDict[str, tuple[dict[StateKey, Event], int | None]] = OrderedDict()
        self.redactions: dict[str, str] = {}  # redacted event id -> redaction event id
        self._redaction_events: dict[str, Event] = {}
        # Rooms holding at least one relation (loaded by service/relations.py, added to as relation
        # rows are written): bundling aggregations for any other room needs no query.
        self.relation_rooms: set[str] = set()
        self.compactor = Compactor(self.db.submit)

    async def load_positions(self) -> None:
        top, bottom = await event_rows.position_bounds(self.db)
        last = top if top is not None else 0
        self._next_stream = last + 1
        self.stream.reset(last)
        self._next_backfill = min(-1, (bottom or 0) - 1)
        self.compactor.note_positions(self._next_stream, self._next_backfill)  # resumes interrupted work
        self._next_state_group = await state_groups.next_group_id(self.db)

    async def load_redactions(self) -> None:
        """After the registry: a redaction is decoded with its room's version."""
        for redacted, redaction_id, room_id, pdu_json in await event_rows.redactions(self.db):
            self.redactions[redacted] = redaction_id
            self._redaction_events[redaction_id] = Event(
                event_json.load(pdu_json), redaction_id, self.registry.versions[room_id]
            )

    # -- what is in memory --------------------------------------------------------------------------

    def placed_in_memory(self, event_id: str) -> bool:
        """Placed (or built) moments ago, whether or not its write has committed yet."""
        return event_id in self.event_cache

    def redaction_of(self, event_id: str) -> Event | None:
        """The redaction event of a redacted event, if it is redacted."""
        redaction_id = self.redactions.get(event_id)
        if not redaction_id:
            return None
        redaction = self.event_cache.get(redaction_id)
        if redaction is None:
            redaction = self._redaction_events.get(redaction_id)
        return redaction

    def cache_event(self, event: Event) -> None:
        self.outlier_cache.pop(event.event_id, None)
        self.event_cache[event.event_id] = event
        if len(self.event_cache) > EVENT_CACHE_SIZE:
            self.event_cache.popitem(last=False)

    def remember_state_after(self, event_id: str, state: dict[StateKey, Event], group: int | None) -> None:
        """Keep the state after a just-placed event in memory (its write may still be queued)."""
        self._recent_state[event_id] = (state, group)
        if len(self._recent_state) > EVENT_CACHE_SIZE:
            self._recent_state.popitem(last=False)

    def recent_state(self, event_id: str) -> tuple[dict[StateKey, Event], int | None] | None:
        return self._recent_state.get(event_id)

    # -- positions --------------------------------------------------------------------------------

    def alloc_position(self, backfilled: bool) -> int:
        if backfilled:
            pos = self._next_backfill
            self._next_backfill -= 1
            return pos
        pos = self._next_stream
        self._next_stream += 1
        return pos

    def reserve_backfill_positions(self, count: int) -> list[int]:
        """`count` positions below everything held, ascending: for older events fetched at once, so
        that the oldest sorts first however they are processed."""
        low = self._next_backfill - count + 1
        self._next_backfill -= count
        return list(range(low, low + count))

    # -- rows ----------------------------------------------------------------------------------------

    def new_group(self, rows: EventRows, room_id: str, state: dict[StateKey, Event], base_group: int | None,
                  base_chain: int, delta: dict[StateKey, Event]) -> tuple[int, int]:
        """Write a state group: a delta on `base_group`, or whole when there is no base or the
        chain is long. Returns (group id, chain length)."""
        group = self._next_state_group
        self._next_state_group += 1
        if base_group is None or base_chain >= MAX_STATE_CHAIN:
            rows.groups.append((group, room_id, None, 0))
            rows.entries.extend((group, t, sk, e.event_id) for (t, sk), e in state.items())
            return group, 0
        rows.groups.append((group, room_id, base_group, base_chain + 1))
        rows.entries.extend((group, t, sk, e.event_id) for (t, sk), e in delta.items())
        return group, base_chain + 1

    def apply_and_enqueue(self, room: RoomCache, events: list[Event], txn_key: str | None = None,
                          new_room: bool = False, also: WriteFn | None = None) -> "asyncio.Future[Any]":
        """Advance the room's in-memory state past local `events` and queue their write (no await)."""
        rows = EventRows()
        self.apply(room, events, rows, txn_key)
        if also is not None:
            rows.also.append(also)
        if new_room:
            rows.new_room = (room.room_id, room.version.identifier, events[0].sender)
        self.update_room_row(rows, room, latest_is_sole_extremity=True)
        return self.submit(room, rows)

    def apply(self, room: RoomCache, events: list[Event], rows: EventRows, txn_key: str | None = None) -> None:
        """Advance the room's in-memory state past local `events`, adding their rows to `rows`."""
        for i, ev in enumerate(events):
            pos = self._next_stream
            self._next_stream += 1
            before_group = room.state_group
            if ev.is_state:
                key = (ev.type, ev.state_key or "")
                room.state = {**room.state, key: ev}  # copy on write: earlier snapshots stay valid
                room.state_group, room.state_chain = self.new_group(
                    rows, room.room_id, room.state, room.state_group, room.state_chain, {key: ev}
                )
                rows.current.append((room.room_id, key[0], key[1], ev.event_id, ev.membership))
                self.note_member(rows, ev, pos)
            room.extremities = [ev.event_id]
            room.depth = max(room.depth, ev.depth)
            rows.add_event(pos, ev, room.state_group, before_group, txn_key if i == len(events) - 1 else None,
                           fresh=True)
            self.cache_event(ev)
            self.remember_state_after(ev.event_id, room.state, room.state_group)

    @staticmethod
    def update_room_row(rows: EventRows, room: RoomCache, latest_is_sole_extremity: bool) -> None:
        """Write the rooms row only when it changes: most messages leave it alone (SD-card writes)."""
        extremities = "[]" if latest_is_sole_extremity else json.dumps(room.extremities)
        if extremities != room.stored_extremities or room.state_group != room.stored_group:
            rows.room_update = (extremities, room.state_group, room.room_id)
            room.stored_extremities, room.stored_group = extremities, room.state_group

    def note_member(self, rows: EventRows, ev: Event, pos: int) -> None:
        if ev.type == "m.room.member" and ev.state_key and ev.state_key.endswith(":" + self.server_name):
            rows.member_updates.append((ev.state_key, ev.membership or "leave", pos))

    # -- writes ------------------------------------------------------------------------------------

    def submit_rows(self, rows: EventRows, delay: float = 0.0) -> "asyncio.Future[Any]":
        fut = self.db.submit(rows.write, delay)
        if rows.relations:
            self.relation_rooms.update(row[3] for row in rows.relations)
        self.compactor.note_positions(self._next_stream, self._next_backfill)
        return fut

    def submit(self, room: RoomCache, rows: EventRows, delay: float = 0.0) -> "asyncio.Future[Any]":
        fut = self.submit_rows(rows, delay)

        def on_committed(f: "asyncio.Future[Any]") -> None:
            if f.cancelled() or f.exception() is not None:
                exc = None if f.cancelled() else f.exception()
                if not isinstance(exc, errors.StorageFull):  # a full disk is logged by the store, once a minute
                    log.error("write for room %s failed (%s); reloading its state", room.room_id, exc)
                self.registry.rooms.pop(room.room_id, None)
                return
            if rows.visibility_changed:
                self.read_gate.visibility_changed(room.room_id)
            memberships = self.registry.memberships
            for user_id, membership, pos in rows.member_updates:
                memberships.setdefault(user_id, {})[room.room_id] = (membership, pos)
            for _, ev in rows.notify:
                if ev.type == "m.room.redaction" and ev.redacts:
                    self.redactions[ev.redacts] = ev.event_id
                    self._redaction_events[ev.event_id] = ev
            self.stream.advance(rows.notify)
            self.remote.events_persisted(room.room_id, rows.notify)

        fut.add_done_callback(on_committed)
        return fut

    def enqueue_outliers(self, events: list[Event]) -> "asyncio.Future[Any]":
        """Store events we need for auth or state but have not placed in the DAG (no stream)."""
        rows = EventRows()
        for ev in events:
            rows.add_event(self.alloc_position(True), ev, None, None, None, outlier=True, announce=False)
            self.outlier_cache[ev.event_id] = ev
            if len(self.outlier_cache) > EVENT_CACHE_SIZE:
                self.outlier_cache.popitem(last=False)
        return self.submit_rows(rows)

    def enqueue_rejected(self, ev: Event, reason: str) -> "asyncio.Future[Any]":
        rows = EventRows()
        rows.add_event(self.alloc_position(True), ev, None, None, None, rejected=reason, announce=False)
        return self.submit_rows(rows)
