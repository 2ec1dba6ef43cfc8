"""Rooms: building, authorizing and persisting events; membership; state; aliases; history.

Every front end ends up here: an HTTP PUT, a CoAP POST and an MQTT PUBLISH all become
`send_event`. The build-check-enqueue step is synchronous (see room_cache), the commit is awaited,
and only then does the caller get its event id.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from .. import auth_rules, errors
from ..client_format import STRIPPED_STATE_TYPES, client_event, stripped_state
from ..event_hashing import compute_event_id, hash_and_encode_new_event, sign_if_ours, signature_block_bytes
from ..events import Event
from ..identifiers import is_valid_user_id, random_string, split_id
from ..notifier import EventStream
from ..room_presets import check_body as check_create_body, initial_state_events
from ..room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS, RoomVersion
from ..signing import SigningKey
from ..store import Database, event_json
from ..store import accounts as account_rows, events as event_rows, rooms as room_rows, state_groups
from ..store.database import WriteFn
from ..store.events import Compactor, EventRows
from .accounts import Requester
from .read_access import ReadAccess, ReadGate
from .remote_rooms import NO_FEDERATION, RemoteRooms
from .room_cache import MAX_STATE_CHAIN, RoomCache, StateKey

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 65536
MAX_PREV_EVENTS = 10
# Events kept in memory (recently placed, outliers, state after each): about 2 KB each, so this
# bounds what a busy hub keeps resident on a 512 MB Pi; older ones are a database read away.
EVENT_CACHE_SIZE = 1024
# Transaction ids remembered for idempotent PUT /send (loaded at start-up from the newest events).
# Like Synapse's time-bounded cache: a retry older than this many sends is treated as new
# (clients retry within seconds; ~250 bytes each, so an old hub's start-up stays small).
TXN_MEMORY = 4096


def now_ms() -> int:
    return int(time.time() * 1000)


class Rooms:
    def __init__(self, db: Database, stream: EventStream, server_name: str, signing_key: SigningKey,
                 clock: Callable[[], int] = now_ms) -> None:
        self.db = db
        self.stream = stream
        self.server_name = server_name
        self.signing_key = signing_key
        self._signature_bytes = signature_block_bytes(server_name, signing_key)
        self.clock = clock
        self._rooms: dict[str, RoomCache] = {}
        self._room_versions: dict[str, RoomVersion] = {}
        self._loading: dict[str, asyncio.Future[RoomCache]] = {}
        self._next_stream = 1
        self._next_backfill = -1
        self._next_state_group = 1
        # user_id -> room_id -> (membership, stream position of that member event)
        self.memberships: dict[str, dict[str, tuple[str, int]]] = {}
        self.redactions: dict[str, str] = {}
        self._event_cache: OrderedDict[str, Event] = OrderedDict()  # placed events (timeline)
        self._outlier_cache: OrderedDict[str, Event] = OrderedDict()  # auth/state events not placed
        # (room, state group, sender, type) of plain events that passed the auth rules
        self._auth_passed: set[tuple[str, int, str, str]] = set()
        # auth_types_for_event per (room version, type, sender) for every type but m.room.member.
        self._auth_types: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        # event id -> (state after it, its group), for events placed moments ago (writes may be queued)
        self._recent_state: OrderedDict[str, tuple[dict[StateKey, Event], int | None]] = OrderedDict()
        self._txns: OrderedDict[str, str] = OrderedDict()
        self._txn_of_event: dict[str, dict[str, str]] = {}
        self._redaction_events: dict[str, Event] = {}
        self._aliases: dict[str, str] = {}
        # (user_id, room_id) -> (room version, invite PDU, stripped state) for rooms on other servers.
        self.remote_invites: dict[tuple[str, str], tuple[RoomVersion, dict[str, Any], list[dict[str, Any]]]] = {}
        # Rooms hosted elsewhere: the federation front end, once attached (attach_federation).
        self.remote: RemoteRooms = NO_FEDERATION
        # Alias localpart prefixes a component owns (the MQTT broker's "mqtt/", which routes topics
        # by them): only that component and hub admins create or delete aliases there.
        self.reserved_alias_prefixes: list[str] = []
        # Rooms an account may create (0: no limit; hub admins are exempt), and the contact a
        # refusal names (the config's max_rooms_per_user and admin_contact).
        self.max_rooms_per_user = 0
        self.admin_contact = ""
        self._rooms_created: dict[str, int] = {}  # user -> rooms created, once read
        self.compactor = Compactor(self.db.submit)
        self.read_gate = ReadGate(db)

    def attach_federation(self, remote: RemoteRooms) -> None:
        """Plug in the federation front end, once. Not a constructor argument: the Homeserver
        builds Rooms before the gateway decides whether to federate, and federation's own parts
        (sender, inbound handler) are built from the Homeserver, i.e. after Rooms."""
        if self.remote is not NO_FEDERATION:
            raise RuntimeError("federation is already attached")
        self.remote = remote

    # -- start-up -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read counters and the small indexes kept in memory; room state loads on first use."""
        top, bottom = await event_rows.position_bounds(self.db)
        last = top if top is not None else 0
        self._next_stream = last + 1
        self.stream.reset(last)
        self._next_backfill = min(-1, (bottom or 0) - 1)
        self.compactor.note_positions(self._next_stream, self._next_backfill)  # resumes interrupted work
        self._next_state_group = await state_groups.next_group_id(self.db)
        for room_id, version in await room_rows.room_versions(self.db):
            self._room_versions[room_id] = KNOWN_ROOM_VERSIONS[version]
        for room_id, user_id, membership, pos in await event_rows.local_memberships(self.db):
            if user_id.endswith(":" + self.server_name):
                self.memberships.setdefault(user_id, {})[room_id] = (membership, pos)
        for user_id, room_id, version, invite_pdu, invite_state, pos in await room_rows.remote_invites(self.db):
            self.remote_invites[(user_id, room_id)] = (KNOWN_ROOM_VERSIONS[version], invite_pdu, invite_state)
            if room_id not in self._room_versions:
                self.memberships.setdefault(user_id, {})[room_id] = ("invite", pos)
        for txn_key, event_id in await event_rows.recent_txns(self.db, TXN_MEMORY):
            self._txns[txn_key] = event_id
        for redacted, redaction_id, room_id, pdu_json in await event_rows.redactions(self.db):
            self.redactions[redacted] = redaction_id
            self._redaction_events[redaction_id] = Event(
                event_json.load(pdu_json), redaction_id, self._room_versions[room_id]
            )

    # -- reading rooms and events ---------------------------------------------------------------

    def room_version(self, room_id: str) -> RoomVersion | None:
        return self._room_versions.get(room_id)

    def loaded_room(self, room_id: str) -> RoomCache | None:
        """The room's in-memory view if it is loaded (no I/O), else None."""
        return self._rooms.get(room_id)

    async def get_room(self, room_id: str) -> RoomCache:
        room = self._rooms.get(room_id)
        if room is not None:
            return room
        if room_id not in self._room_versions:
            raise errors.not_found(f"Unknown room {room_id}")
        pending = self._loading.get(room_id)
        if pending is not None:
            return await pending
        fut: asyncio.Future[RoomCache] = asyncio.get_running_loop().create_future()
        self._loading[room_id] = fut
        try:
            room = await self._load_room(room_id)
            self._rooms[room_id] = room
            fut.set_result(room)
            return room
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._loading[room_id]

    async def _load_room(self, room_id: str) -> RoomCache:
        version = self._room_versions[room_id]
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

    def placed_in_memory(self, event_id: str) -> bool:
        """Placed (or built) moments ago, whether or not its write has committed yet."""
        return event_id in self._event_cache

    def _cache_event(self, event: Event) -> None:
        self._outlier_cache.pop(event.event_id, None)
        self._event_cache[event.event_id] = event
        if len(self._event_cache) > EVENT_CACHE_SIZE:
            self._event_cache.popitem(last=False)

    async def fetch_event(self, event_id: str) -> tuple[Event, int] | None:
        """An accepted, non-outlier event and its stream position, or None."""
        row = await event_rows.accepted_event(self.db, event_id)
        if row is None:
            return None
        version = self._room_versions[row[0]]
        return Event(event_json.load(row[1]), event_id, version), row[2]

    def outgoing_pdu(self, event: Event) -> dict[str, Any]:
        """The event's pdu as another server gets it: events built here are stored unsigned and
        signed on their way out (event_hashing.hash_and_encode_new_event says why)."""
        return sign_if_ours(event.pdu, event.room_version, self.server_name, self.signing_key)

    def outgoing_pdus(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        return [self.outgoing_pdu(ev) for ev in events]

    def rows_to_events(self, rows: list[tuple[Any, ...]]) -> list[tuple[int, Event]]:
        """(stream_ordering, event_id, room_id, json) rows -> (position, Event)."""
        out = []
        for pos, event_id, room_id, pdu_json in rows:
            cached = self._event_cache.get(event_id)
            if cached is None:
                cached = Event(event_json.load(pdu_json), event_id, self._room_versions[room_id])
            out.append((pos, cached))
        return out

    def serialize(self, event: Event, requester: Requester | None = None) -> dict[str, Any]:
        redaction_id = self.redactions.get(event.event_id)
        redaction = self._event_cache.get(redaction_id) if redaction_id else None
        if redaction_id and redaction is None:
            redaction = self._redaction_events.get(redaction_id)
        txn = None
        if requester is not None and event.sender == requester.user_id:
            txn = self._txn_of_event.get(event.event_id, {}).get(requester.device_id)
        return client_event(event, self.clock(), redaction=redaction, transaction_id=txn)

    # -- membership index -----------------------------------------------------------------------

    def membership_of(self, user_id: str, room_id: str) -> tuple[str, int] | None:
        return self.memberships.get(user_id, {}).get(room_id)

    def joined_room_ids(self, user_id: str) -> list[str]:
        return [r for r, (m, _) in self.memberships.get(user_id, {}).items() if m == "join"]

    # -- building and persisting events ---------------------------------------------------------

    def _build_event(self, room: RoomCache, sender: str, event_type: str, content: dict[str, Any],
                     state_key: str | None = None, redacts: str | None = None) -> Event:
        """Build, sign and auth-check an event on top of the room's current state (pure CPU)."""
        version = room.version
        pdu: dict[str, Any] = {
            "type": event_type,
            "room_id": room.room_id,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.clock(),
            "depth": min(room.depth + 1, 2**53 - 1),
            "prev_events": room.extremities[-MAX_PREV_EVENTS:],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None and not version.msc2174_redacts_in_content:
            pdu["redacts"] = redacts
        if event_type == "m.room.member":  # the only type whose auth events depend on content
            auth_keys = auth_rules.auth_types_for_event(version, event_type, sender, state_key, content)
        else:
            memo_key = (version.identifier, event_type, sender)
            auth_keys = self._auth_types.get(memo_key)  # type: ignore[assignment]
            if auth_keys is None:
                if len(self._auth_types) > 4096:
                    self._auth_types.clear()
                auth_keys = self._auth_types[memo_key] = auth_rules.auth_types_for_event(
                    version, event_type, sender, state_key, content)
        pdu["auth_events"] = [room.state[key].event_id for key in auth_keys if key in room.state]
        memo = None
        if state_key is None and event_type != "m.room.redaction" and room.state_group is not None:
            # Whether a plain (non-state) event may be sent depends only on the room state, the
            # sender and the type: remember the verdict per state group (most sends are readings).
            memo = (room.room_id, room.state_group, sender, event_type)
        return self._finish_event(pdu, room.state, version, memo)

    def _finish_event(self, pdu: dict[str, Any], auth_state: dict[StateKey, Event],
                      version: RoomVersion, auth_memo: tuple[str, int, str, str] | None = None) -> Event:
        try:
            hashed, event_id, canonical = hash_and_encode_new_event(pdu, version)
            size = len(canonical) + self._signature_bytes  # as it will leave this server
        except ValueError as exc:  # floats, huge ints, bad types in content
            raise errors.bad_json(str(exc)) from None
        if size > MAX_EVENT_BYTES:
            raise errors.too_large(f"Event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
        event = Event(hashed, event_id, version, canonical)
        if auth_memo is not None and auth_memo in self._auth_passed:
            return event
        try:
            auth_rules.check_event_auth(event, auth_state)
        except errors.AuthError as exc:
            raise exc.as_matrix_error() from None
        if auth_memo is not None:
            if len(self._auth_passed) > 4096:
                self._auth_passed.clear()
            self._auth_passed.add(auth_memo)
        return event

    def _new_group(self, rows: EventRows, room_id: str, state: dict[StateKey, Event], base_group: int | None,
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

    def _apply_and_enqueue(self, room: RoomCache, events: list[Event], txn_key: str | None = None,
                           new_room: bool = False, also: WriteFn | None = None) -> "asyncio.Future[Any]":
        """Advance the room's in-memory state past local `events` and queue their write (no await)."""
        rows = EventRows()
        self._apply(room, events, rows, txn_key)
        if also is not None:
            rows.also.append(also)
        if new_room:
            rows.new_room = (room.room_id, room.version.identifier, events[0].sender)
        self._update_room_row(rows, room, latest_is_sole_extremity=True)
        return self._submit(room, rows)

    def _apply(self, room: RoomCache, events: list[Event], rows: EventRows, txn_key: str | None = None) -> None:
        """Advance the room's in-memory state past local `events`, adding their rows to `rows`."""
        for i, ev in enumerate(events):
            pos = self._next_stream
            self._next_stream += 1
            before_group = room.state_group
            if ev.is_state:
                key = (ev.type, ev.state_key or "")
                room.state = {**room.state, key: ev}  # copy on write: earlier snapshots stay valid
                room.state_group, room.state_chain = self._new_group(
                    rows, room.room_id, room.state, room.state_group, room.state_chain, {key: ev}
                )
                rows.current.append((room.room_id, key[0], key[1], ev.event_id, ev.membership))
                self._note_member(rows, ev, pos)
            room.extremities = [ev.event_id]
            room.depth = max(room.depth, ev.depth)
            rows.add_event(pos, ev, room.state_group, before_group, txn_key if i == len(events) - 1 else None,
                           fresh=True)
            self._cache_event(ev)
            self._remember_state_after(ev.event_id, room.state, room.state_group)

    @staticmethod
    def _update_room_row(rows: EventRows, room: RoomCache, latest_is_sole_extremity: bool) -> None:
        """Write the rooms row only when it changes: most messages leave it alone (SD-card writes)."""
        extremities = "[]" if latest_is_sole_extremity else json.dumps(room.extremities)
        if extremities != room.stored_extremities or room.state_group != room.stored_group:
            rows.room_update = (extremities, room.state_group, room.room_id)
            room.stored_extremities, room.stored_group = extremities, room.state_group

    def _note_member(self, rows: EventRows, ev: Event, pos: int) -> None:
        if ev.type == "m.room.member" and ev.state_key and ev.state_key.endswith(":" + self.server_name):
            rows.member_updates.append((ev.state_key, ev.membership or "leave", pos))

    def _submit_rows(self, rows: EventRows, delay: float = 0.0) -> "asyncio.Future[Any]":
        fut = self.db.submit(rows.write, delay)
        self.compactor.note_positions(self._next_stream, self._next_backfill)
        return fut

    def _submit(self, room: RoomCache, rows: EventRows, delay: float = 0.0) -> "asyncio.Future[Any]":
        fut = self._submit_rows(rows, delay)

        def on_committed(f: "asyncio.Future[Any]") -> None:
            if f.cancelled() or f.exception() is not None:
                exc = None if f.cancelled() else f.exception()
                if not isinstance(exc, errors.StorageFull):  # a full disk is logged by the store, once a minute
                    log.error("write for room %s failed (%s); reloading its state", room.room_id, exc)
                self._rooms.pop(room.room_id, None)
                return
            if rows.visibility_changed:
                self.read_gate.visibility_changed(room.room_id)
            for user_id, membership, pos in rows.member_updates:
                self.memberships.setdefault(user_id, {})[room.room_id] = (membership, pos)
            for _, ev in rows.notify:
                if ev.type == "m.room.redaction" and ev.redacts:
                    self.redactions[ev.redacts] = ev.event_id
                    self._redaction_events[ev.event_id] = ev
            self.stream.advance(rows.notify)
            self.remote.events_persisted(room.room_id, rows.notify)

        fut.add_done_callback(on_committed)
        return fut

    # -- events from other servers --------------------------------------------------------------

    def add_room(self, room: RoomCache) -> None:
        """Make a room known (a remote room we joined): its row is written with its first events."""
        self._room_versions[room.room_id] = room.version
        self._rooms[room.room_id] = room

    async def get_events_any(self, event_ids: Iterable[str]) -> dict[str, tuple[Event, bool, str | None]]:
        """Known events, outliers and rejected ones included: id -> (event, is_outlier, rejected).

        Memory first: events placed or fetched moments ago may not be committed yet, and federation
        asks about the previous PDU of a transaction while its write is still queued."""
        out: dict[str, tuple[Event, bool, str | None]] = {}
        ids = []
        for event_id in dict.fromkeys(event_ids):
            placed = self._event_cache.get(event_id)
            if placed is not None:
                out[event_id] = (placed, False, None)
                continue
            outlier = self._outlier_cache.get(event_id)
            if outlier is not None:
                out[event_id] = (outlier, True, None)
                continue
            ids.append(event_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for event_id, room_id, pdu_json, is_outlier, rejected in await event_rows.events_any(self.db, chunk):
                version = self._room_versions.get(room_id)
                if version is not None:
                    out[event_id] = (Event(event_json.load(pdu_json), event_id, version), bool(is_outlier), rejected)
        return out

    def _remember_state_after(self, event_id: str, state: dict[StateKey, Event], group: int | None) -> None:
        """Keep the state after a just-placed event in memory (its write may still be queued)."""
        self._recent_state[event_id] = (state, group)
        if len(self._recent_state) > EVENT_CACHE_SIZE:
            self._recent_state.popitem(last=False)

    async def state_after(self, room: RoomCache, event_id: str) -> tuple[dict[StateKey, Event], int | None] | None:
        """The state after a stored, placed (non-outlier) event, and its group; None if unknown."""
        if room.extremities == [event_id] and room.state_group is not None:
            return dict(room.state), room.state_group
        recent = self._recent_state.get(event_id)
        if recent is not None:
            return dict(recent[0]), recent[1]
        group = await event_rows.state_group_after(self.db, event_id)
        if group is None:
            return None
        return await self.load_state_group(room.room_id, group), group

    async def resolve_states(self, version: RoomVersion, state_sets: list[dict[StateKey, Event]]
                             ) -> dict[StateKey, Event]:
        """State resolution over full state maps, loading auth-chain events from the store."""
        from .. import state_res  # only forks need it: kept out of an idle hub's memory (~0.7 MB)

        events: dict[str, Event] = {}
        for state in state_sets:
            for ev in state.values():
                events[ev.event_id] = ev
        id_sets = [{key: ev.event_id for key, ev in state.items()} for state in state_sets]
        rejected: set[str] = set()
        for _ in range(64):
            try:
                resolved = state_res.resolve(version, id_sets, events, rejected=rejected)
                break
            except state_res.MissingEventsError as exc:
                found = await self.get_events_any(exc.event_ids)
                if not found:
                    raise errors.MatrixError(500, "M_UNKNOWN", f"cannot resolve state: missing {len(exc.event_ids)}")
                for event_id, (ev, _, rejected_reason) in found.items():
                    events[event_id] = ev
                    if rejected_reason:
                        rejected.add(event_id)
        else:
            raise errors.MatrixError(500, "M_UNKNOWN", "state resolution did not converge")
        return {key: events[eid] for key, eid in resolved.items()}

    def _alloc_position(self, backfilled: bool) -> int:
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

    def enqueue_outliers(self, events: list[Event]) -> "asyncio.Future[Any]":
        """Store events we need for auth or state but have not placed in the DAG (no stream)."""
        rows = EventRows()
        for ev in events:
            rows.add_event(self._alloc_position(True), ev, None, None, None, outlier=True, announce=False)
            self._outlier_cache[ev.event_id] = ev
            if len(self._outlier_cache) > EVENT_CACHE_SIZE:
                self._outlier_cache.popitem(last=False)
        return self._submit_rows(rows)

    def enqueue_rejected(self, ev: Event, reason: str) -> "asyncio.Future[Any]":
        rows = EventRows()
        rows.add_event(self._alloc_position(True), ev, None, None, None, rejected=reason, announce=False)
        return self._submit_rows(rows)

    async def place_federated_event(self, room: RoomCache, ev: Event, state_before: dict[StateKey, Event],
                                    before_group: int | None, soft_failed: bool = False,
                                    backfilled: bool = False, new_room: bool = False,
                                    position: int | None = None) -> "asyncio.Future[Any]":
        """Store an authorized event from another server with the state before it; advance the
        room's extremities and current state (resolving forks) unless it is soft-failed or old."""
        while True:
            extremities_seen = list(room.extremities)
            state_after = dict(state_before)
            if ev.is_state:
                state_after[(ev.type, ev.state_key or "")] = ev
            new_current: dict[StateKey, Event] | None = None
            new_extremities = extremities_seen
            if not soft_failed and not backfilled:
                new_extremities = [e for e in extremities_seen if e not in ev.prev_event_ids] + [ev.event_id]
                if new_extremities == [ev.event_id]:
                    new_current = state_after
                else:
                    new_current = await self.resolve_states(room.version, [dict(room.state), state_after])
            if room.extremities == extremities_seen:
                break  # nothing moved while we resolved: apply now, without awaiting
        rows = EventRows()
        if new_room:
            rows.new_room = (room.room_id, room.version.identifier, None)
        pos = position if position is not None else self._alloc_position(backfilled)
        # A delta may only extend a group whose chain length we know (the room's current one).
        chain = room.state_chain if before_group == room.state_group else MAX_STATE_CHAIN
        if before_group is None:
            before_group, chain = self._new_group(rows, room.room_id, state_before, None, 0, {})
        after_group = before_group
        if ev.is_state:
            key = (ev.type, ev.state_key or "")
            after_group, _ = self._new_group(rows, room.room_id, state_after, before_group, chain, {key: ev})
        rows.add_event(pos, ev, after_group, before_group, None, announce=not (soft_failed or backfilled),
                       rejected="soft_failed" if soft_failed else None)
        self._cache_event(ev)
        if not soft_failed:
            self._remember_state_after(ev.event_id, state_after, after_group)
        if new_current is not None:
            old = room.state
            for key, cur in new_current.items():
                if key not in old or old[key].event_id != cur.event_id:
                    rows.current.append((room.room_id, key[0], key[1], cur.event_id, cur.membership))
                    self._note_member(rows, cur, pos)
            for key in old:
                if key not in new_current:
                    rows.current_deleted.append((room.room_id, key[0], key[1]))
            current_group = after_group
            if new_current is not state_after:
                current_group, _ = self._new_group(rows, room.room_id, new_current, None, 0, {})
            room.state = dict(new_current)
            room.state_group = current_group
            room.state_chain = 0 if current_group != after_group else chain + (1 if ev.is_state else 0)
            room.extremities = new_extremities[-MAX_PREV_EVENTS:]
            room.depth = max(room.depth, ev.depth)
            self._update_room_row(rows, room, latest_is_sole_extremity=room.extremities == [ev.event_id])
        return self._submit(room, rows)

    async def remember_remote_invite(self, user_id: str, room_id: str, version: RoomVersion,
                                     pdu: dict[str, Any], invite_state: list[dict[str, Any]]) -> None:
        """An invite from another server into a room we are not in: kept until joined or left."""
        pos = self._alloc_position(False)
        stripped = list(invite_state) + [{"type": "m.room.member", "state_key": user_id,
                                          "content": pdu.get("content", {}), "sender": pdu.get("sender")}]
        await self.db.write(lambda conn: room_rows.put_remote_invite(
            conn, user_id, room_id, version.identifier, pdu, stripped, pos))
        self.remote_invites[(user_id, room_id)] = (version, pdu, stripped)
        if room_id in self._room_versions:
            return  # a room we already know: the invite also arrives as a room event
        self.memberships.setdefault(user_id, {})[room_id] = ("invite", pos)
        invite = Event(pdu, compute_event_id(pdu, version), version)
        self.stream.advance([(pos, invite)])

    async def forget_remote_invite(self, user_id: str, room_id: str) -> None:
        if self.remote_invites.pop((user_id, room_id), None) is None:
            return
        await self.db.write(lambda conn: room_rows.delete_remote_invite(conn, user_id, room_id))

    async def send_event(self, requester: Requester, room_id: str, event_type: str, content: Any,
                         txn_id: str | None = None, state_key: str | None = None,
                         also: WriteFn | None = None) -> str:
        """Send a message or state event as the requester; returns the event id once durable.

        `also`: a front end's own write committed in the same transaction as the event (MQTT
        records a QoS 2 packet id with its message: a crash cannot keep one without the other)."""
        if not isinstance(content, dict):
            raise errors.bad_json("Event content must be a JSON object")
        txn_key = f"{requester.user_id}|{requester.device_id}|{txn_id}" if txn_id is not None else None
        if txn_key is not None and txn_key in self._txns:
            return self._txns[txn_key]
        room = await self.get_room(room_id)
        if txn_key is not None and txn_key in self._txns:  # a retry raced us while loading
            return self._txns[txn_key]
        event = self._build_requested(room, requester, event_type, content, state_key)
        if txn_key is not None:
            self._txns[txn_key] = event.event_id
            self._txn_of_event.setdefault(event.event_id, {})[requester.device_id] = txn_id  # type: ignore
            while len(self._txns) > TXN_MEMORY:
                self._txns.popitem(last=False)
            if len(self._txn_of_event) > TXN_MEMORY:
                self._txn_of_event.clear()
        try:
            await self._apply_and_enqueue(room, [event], txn_key, also=also)
        except BaseException:
            if txn_key is not None:
                self._txns.pop(txn_key, None)
            raise
        return event.event_id

    def _build_requested(self, room: RoomCache, requester: Requester, event_type: str, content: Any,
                         state_key: str | None) -> Event:
        """A client's (or device's) event on top of the room, checked like the send API checks it."""
        if not isinstance(content, dict):
            raise errors.bad_json("Event content must be a JSON object")
        redacts = content.get("redacts") if event_type == "m.room.redaction" else None
        return self._build_event(room, requester.user_id, event_type, content, state_key, redacts)

    def send_events_nowait(self, requester: Requester, room_id: str,
                           items: list[tuple[str, dict[str, Any], str | None]], delay: float = 0.0,
                           on_placed: Callable[[list[tuple[int, Event]]], None] | None = None,
                           extras: "list[WriteFn | None] | None" = None,
                           ) -> "tuple[asyncio.Future[Any] | None, list[Any]]":
        """`send_event` without a coroutine, for many messages to one room as one write: a burst
        of device messages (MQTT reads dozens of PUBLISHes per socket read) shares one future,
        one queue slot and one announcement instead of paying for each.

        `items` are (event type, content, state key or None), built in order, each on the one
        before. Returns (future resolved after COMMIT, per item its event id or the MatrixError
        that refused it alone); the future is None when nothing was accepted or the room is not
        in memory yet (then no outcomes either: use `send_event`).

        `delay`: seconds the commit may wait to share it with later writes, for messages nobody
        is waiting to see acknowledged (MQTT QoS 0); they reach the stream after that commit.
        `on_placed` gets the (position, event) pairs at once, before the commit: a front end
        may pass them on to its own live subscribers while they wait (MQTT QoS 0).
        `extras`: per item, a front end's own write (or None) committed in the same transaction
        as that item's event, and only if the item is accepted (like `send_event`'s `also`)."""
        room = self._rooms.get(room_id)
        if room is None:
            return None, []
        outcomes: list[Any] = []
        events: list[Event] = []
        rows = EventRows()
        for i, (event_type, content, state_key) in enumerate(items):
            try:
                event = self._build_requested(room, requester, event_type, content, state_key)
            except errors.MatrixError as exc:
                outcomes.append(exc)
                continue
            self._apply(room, [event], rows)  # the next event builds on this one
            extra = extras[i] if extras is not None else None
            if extra is not None:
                rows.also.append(extra)
            events.append(event)
            outcomes.append(event.event_id)
        if not events:
            return None, outcomes
        self._update_room_row(rows, room, latest_is_sole_extremity=True)
        fut = self._submit(room, rows, delay)
        if on_placed is not None:
            on_placed(rows.notify)
        return fut, outcomes

    # -- creating rooms ---------------------------------------------------------------------------

    async def create_room(self, requester: Requester, body: dict[str, Any], *,
                          reserved_alias_ok: bool = False) -> dict[str, Any]:
        """`reserved_alias_ok`: the caller is the component owning the alias's namespace."""
        check_create_body(body, self.server_name)
        version_id = body.get("room_version", DEFAULT_ROOM_VERSION.identifier)
        if not isinstance(version_id, str) or version_id not in KNOWN_ROOM_VERSIONS:
            raise errors.unsupported_room_version(str(version_id))
        version = KNOWN_ROOM_VERSIONS[version_id]
        creator = requester.user_id
        await self._check_room_quota(requester)

        alias = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            if not isinstance(alias_name, str) or not alias_name or ":" in alias_name or "#" in alias_name:
                raise errors.MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name")
            alias = f"#{alias_name}:{self.server_name}"
            if not reserved_alias_ok:
                self._check_alias_namespace(requester, alias_name)
            if await self.resolve_alias_local(alias) is not None:
                raise errors.MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        creation_content = body.get("creation_content", {})
        if not isinstance(creation_content, dict):
            raise errors.bad_json("'creation_content' must be an object")
        create_content = dict(creation_content)
        create_content["room_version"] = version.identifier
        if not version.implicit_room_creator:
            create_content["creator"] = creator
        later = initial_state_events(version, creator, body, alias)
        invites = body.get("invite", [])
        for invitee in invites:
            if not is_valid_user_id(invitee):
                raise errors.invalid_param(f"Invalid user id to invite: {invitee!r}")

        if version.room_id_is_create_event_id:
            pdu = {
                "type": "m.room.create", "state_key": "", "sender": creator, "content": create_content,
                "origin_server_ts": self.clock(), "depth": 1, "prev_events": [], "auth_events": [],
            }
            create = self._finish_event(pdu, {}, version)
            # The room id is the create event's hash, and its only entropy is the millisecond:
            # one user creating rooms in the same millisecond (an MQTT device's first publishes
            # to new topics, a script) would make one room id twice. Like Synapse, move
            # origin_server_ts on until the id is new; nothing awaits between this check and
            # the room's registration below, so two creations cannot both pass it.
            while create.room_id in self._room_versions:
                pdu["origin_server_ts"] = create.origin_server_ts + 1
                create = self._finish_event(pdu, {}, version)
            room_id = create.room_id
        else:
            room_id = f"!{random_string(18)}:{self.server_name}"
            pdu = {
                "type": "m.room.create", "room_id": room_id, "state_key": "", "sender": creator,
                "content": create_content, "origin_server_ts": self.clock(), "depth": 1,
                "prev_events": [], "auth_events": [],
            }
            create = self._finish_event(pdu, {}, version)

        room = RoomCache(room_id, version)
        room.state[("m.room.create", "")] = create
        room.extremities = [create.event_id]
        room.depth = 1
        events = [create]
        # Build every event against a scratch copy first, so a bad initial_state fails whole.
        scratch = RoomCache(room_id, version, dict(room.state), list(room.extremities), room.depth)
        specs: list[tuple[str, str, dict[str, Any]]] = [("m.room.member", creator, {"membership": "join"})]
        specs += later
        specs += [("m.room.member", invitee, {"membership": "invite"}) for invitee in invites]
        for event_type, state_key, content in specs:
            ev = self._build_event(scratch, creator, event_type, content, state_key)
            scratch.state[(event_type, state_key)] = ev
            scratch.extremities = [ev.event_id]
            scratch.depth = ev.depth
            events.append(ev)

        counted = self._count_room(requester)
        self._room_versions[room_id] = version
        self._rooms[room_id] = room
        try:
            await self._apply_and_enqueue(room, events, new_room=True)
        except BaseException:
            self._rooms.pop(room_id, None)
            self._room_versions.pop(room_id, None)
            if counted:
                self._rooms_created[creator] -= 1
            raise
        if alias is not None:
            await self.create_alias(requester, alias, room_id, reserved_ok=True)
        if body.get("visibility") == "public":
            await self.db.write(lambda c: room_rows.set_public(c, room_id))
        return {"room_id": room_id, **({"room_alias": alias} if alias else {})}

    async def _check_room_quota(self, requester: Requester) -> None:
        """Refuse before any work if the account already created max_rooms_per_user rooms (one
        account made 299 during fuzzing). Counts every room it created, MQTT default rooms too."""
        limit = self.max_rooms_per_user
        if not limit or requester.is_admin:
            return
        if requester.user_id not in self._rooms_created:
            count = await room_rows.count_created_by(self.db, requester.user_id)
            self._rooms_created.setdefault(requester.user_id, count)  # a concurrent call may have read it
        self._count_room(requester, dry_run=True)

    def _count_room(self, requester: Requester, dry_run: bool = False) -> bool:
        """Count one more room for its creator (no await between the check and the count, so
        concurrent creations cannot both take the last one); True if counted."""
        limit = self.max_rooms_per_user
        if not limit or requester.is_admin:
            return False
        count = self._rooms_created[requester.user_id]
        if count >= limit:
            raise errors.resource_limit_exceeded(
                f"This account has created {count} rooms, the most this hub allows (max_rooms_per_user)",
                self.admin_contact)
        if not dry_run:
            self._rooms_created[requester.user_id] = count + 1
        return not dry_run

    # -- membership -------------------------------------------------------------------------------

    async def update_membership(self, requester: Requester, room_id: str, target: str, membership: str,
                                reason: str | None = None, extra: dict[str, Any] | None = None) -> str:
        """join / invite / leave / ban / knock, and kick/unban as leave of another user."""
        if not is_valid_user_id(target):
            raise errors.invalid_param(f"Invalid user id {target!r}")
        room = await self.get_room(room_id)
        content: dict[str, Any] = {"membership": membership}
        if reason is not None:
            if not isinstance(reason, str):
                raise errors.bad_json("'reason' must be a string")
            content["reason"] = reason
        if membership in ("join", "invite", "knock"):
            profile = await account_rows.profile(self.db, target)
            if profile is not None:
                if profile[0] is not None:
                    content["displayname"] = profile[0]
                if profile[1] is not None:
                    content["avatar_url"] = profile[1]
        if extra:
            content.update(extra)
        current = room.member(target)
        if membership == "join" and current == "join" and target == requester.user_id:
            return room.state[("m.room.member", target)].event_id  # already joined: idempotent
        if membership == "leave" and target == requester.user_id and current in (None, "leave"):
            raise errors.forbidden("You are not in this room")
        if membership == "knock" and room.state_content("m.room.join_rules").get("join_rule") not in (
            "knock", "knock_restricted"
        ):
            raise errors.forbidden("This room does not accept knocks")
        event = self._build_event(room, requester.user_id, "m.room.member", content, target)
        if membership == "invite" and not target.endswith(":" + self.server_name):
            if not self.remote.federates:
                raise errors.forbidden("This hub does not federate: only local users can be invited")
            # The invitee's server countersigns first (invites v2), then the event is ours to place.
            event = await self.remote.remote_invite(room, event)
        await self._apply_and_enqueue(room, [event])
        return event.event_id

    async def leave_remote_invite(self, requester: Requester, room_id: str) -> None:
        """Decline an invite into a room hosted elsewhere (make_leave/send_leave via the inviter)."""
        invite = self.remote_invites.get((requester.user_id, room_id))
        if invite is None:
            raise errors.not_found(f"Unknown room {room_id}")
        if self.remote.federates:
            try:
                await self.remote.remote_membership(requester.user_id, room_id,
                                             [invite[1]["sender"].split(":", 1)[1]], "leave")
            except Exception as exc:  # the inviter may be gone: declining locally still counts
                log.info("could not tell the inviting server about the declined invite: %s", exc)
        await self.forget_remote_invite(requester.user_id, room_id)
        self.memberships.get(requester.user_id, {}).pop(room_id, None)

    async def join(self, requester: Requester, room_id_or_alias: str, via: list[str] | None = None) -> str:
        """Join a local room, or one hosted elsewhere (through the alias's servers, `via`, or the
        server that invited us)."""
        servers = list(via or [])
        if room_id_or_alias.startswith("#") and not room_id_or_alias.endswith(":" + self.server_name):
            if not self.remote.federates:
                raise errors.not_found(f"Room alias {room_id_or_alias} not found")
            room_id, alias_servers = await self.remote.resolve_remote_alias(room_id_or_alias)
            servers += alias_servers
        elif room_id_or_alias.startswith("!") and room_id_or_alias not in self._room_versions:
            room_id = room_id_or_alias
        else:
            room_id = await self.resolve_room(room_id_or_alias)
        if room_id in self._room_versions:
            member = self.membership_of(requester.user_id, room_id)
            if member is not None and member[0] == "join":
                return room_id
            try:  # a room we hold: our own join event, built on our copy of its state
                await self.update_membership(requester, room_id, requester.user_id, "join")
                return room_id
            except errors.MatrixError:
                if not servers or not self.remote.federates:
                    raise  # else: not allowed on our (possibly stale) copy; ask a resident server
        invite = self.remote_invites.get((requester.user_id, room_id))
        if invite is not None:
            servers.append(invite[1]["sender"].split(":", 1)[1])
        if ":" in room_id:  # room versions before 12 name their creating server
            servers.append(room_id.split(":", 1)[1])
        if not self.remote.federates or not servers:
            raise errors.not_found(f"Unknown room {room_id}")
        await self.remote.remote_membership(requester.user_id, room_id, list(dict.fromkeys(servers)), "join")
        return room_id

    # -- redaction --------------------------------------------------------------------------------

    async def redact(self, requester: Requester, room_id: str, event_id: str, reason: str | None,
                     txn_id: str | None) -> str:
        room = await self.get_room(room_id)
        found = await self.fetch_event(event_id)
        if found is None or found[0].room_id != room_id:
            raise errors.not_found("Event not found")
        target = found[0]
        if target.sender != requester.user_id:
            level = auth_rules.get_user_power_level(requester.user_id, room.state)
            if level < auth_rules.get_named_level("redact", room.state, 50):
                raise errors.forbidden("You may only redact your own events")
        content: dict[str, Any] = {}
        if reason is not None:
            if not isinstance(reason, str):
                raise errors.bad_json("'reason' must be a string")
            content["reason"] = reason
        if room.version.msc2174_redacts_in_content:
            content["redacts"] = event_id
        return await self.send_event(requester, room_id, "m.room.redaction", content, txn_id=txn_id)

    # -- aliases ----------------------------------------------------------------------------------

    async def resolve_alias_local(self, alias: str) -> str | None:
        cached = self._aliases.get(alias)
        if cached is not None:
            return cached
        row = await room_rows.alias_room(self.db, alias)
        if row is None:
            return None
        self._aliases[alias] = row[0]
        return row[0]

    async def resolve_room(self, room_id_or_alias: str) -> str:
        """A room id for an id or a (local) alias; M_NOT_FOUND if there is no such room."""
        if room_id_or_alias.startswith("#"):
            room_id = await self.resolve_alias_local(room_id_or_alias)
            if room_id is None:
                raise errors.not_found(f"Room alias {room_id_or_alias} not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise errors.invalid_param(f"Not a room id or alias: {room_id_or_alias!r}")
        if room_id_or_alias not in self._room_versions:
            raise errors.not_found(f"Unknown room {room_id_or_alias}")
        return room_id_or_alias

    def reserve_alias_namespace(self, localpart_prefix: str) -> None:
        """Reserve aliases whose localpart starts with `localpart_prefix` for the calling component
        (which passes reserved_ok / reserved_alias_ok) and hub admins, as an appservice's
        exclusive namespace is: an alias there is trusted to be the component's."""
        if localpart_prefix not in self.reserved_alias_prefixes:
            self.reserved_alias_prefixes.append(localpart_prefix)

    def _check_alias_namespace(self, requester: Requester, localpart: str) -> None:
        if requester.is_admin:
            return
        for prefix in self.reserved_alias_prefixes:
            if localpart.startswith(prefix):
                raise errors.exclusive(f"Aliases starting with #{prefix} are reserved for the hub")

    async def create_alias(self, requester: Requester, alias: str, room_id: str, *, reserved_ok: bool = False) -> None:
        try:
            localpart, server = split_id(alias, "#")
        except ValueError:
            raise errors.invalid_param(f"Invalid alias {alias!r}") from None
        if server != self.server_name:
            raise errors.invalid_param("Alias must be on this server")
        if not reserved_ok:
            self._check_alias_namespace(requester, localpart)
        if room_id not in self._room_versions:
            raise errors.not_found("Unknown room")
        if await self.resolve_alias_local(alias) is not None:
            raise errors.MatrixError(409, "M_UNKNOWN", "Room alias already exists")
        await self.db.write(lambda c: room_rows.insert_alias(c, alias, room_id, requester.user_id))
        self._aliases[alias] = room_id

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        row = await room_rows.alias_room(self.db, alias)
        if row is None:
            raise errors.not_found("Alias not found")
        self._check_alias_namespace(requester, alias[1:].split(":", 1)[0])
        if row[1] != requester.user_id and not requester.is_admin:
            room = await self.get_room(row[0])
            level = auth_rules.get_user_power_level(requester.user_id, room.state)
            if level < auth_rules.get_required_level("m.room.canonical_alias", True, room.state):
                raise errors.forbidden("You may not delete this alias")
        await self.db.write(lambda c: room_rows.delete_alias(c, alias))
        self._aliases.pop(alias, None)

    # -- reading state and history ----------------------------------------------------------------

    async def read_access(self, requester: Requester, room_id: str) -> ReadAccess:
        """Raise unless the user may read the room; what they may see of it (history visibility)."""
        room = await self.get_room(room_id)
        visibility = room.state_content("m.room.history_visibility").get("history_visibility")
        return await self.read_gate.access(requester.user_id, room_id, self.membership_of(requester.user_id, room_id),
                                           visibility if isinstance(visibility, str) else "shared")

    async def _readable_state(self, requester: Requester, room_id: str) -> dict[StateKey, Event]:
        """The state the user may read: the current one, or the one they left (if they could read it)."""
        upto = (await self.read_access(requester, room_id)).state_position()
        if upto is None:
            return (await self.get_room(room_id)).state
        return await self.state_at(room_id, upto)

    async def get_state(self, requester: Requester, room_id: str) -> list[dict[str, Any]]:
        return [self.serialize(ev) for ev in (await self._readable_state(requester, room_id)).values()]

    async def get_state_event(self, requester: Requester, room_id: str, event_type: str,
                              state_key: str) -> Event:
        ev = (await self._readable_state(requester, room_id)).get((event_type, state_key))
        if ev is None:
            raise errors.not_found("Event not found.")
        return ev

    async def state_at(self, room_id: str, position: int) -> dict[StateKey, Event]:
        """The room state after the event at `position` (walks the state-group delta chain)."""
        group = await event_rows.state_group_at(self.db, room_id, position)
        if group is None:
            return {}
        return await self.load_state_group(room_id, group)

    async def load_state_group(self, room_id: str, group: int) -> dict[StateKey, Event]:
        ids = await state_groups.state_ids(self.db, group)
        version = self._room_versions[room_id]
        out: dict[StateKey, Event] = {}
        if ids:
            rows = await event_rows.events_json(self.db, list(ids.values()))
            by_id = {eid: Event(event_json.load(j), eid, version) for eid, j in rows}
            for key, eid in ids.items():
                if eid in by_id:
                    out[key] = by_id[eid]
        return out

    async def get_event_for_client(self, requester: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        access = await self.read_access(requester, room_id)
        found = await self.fetch_event(event_id)
        if found is None or found[0].room_id != room_id or not access.event_visible(found[1], found[0]):
            raise errors.not_found("Event not found.")
        return self.serialize(found[0], requester)

    async def timeline(self, room_id: str, upto: int, limit: int, after: int | None = None,
                       forwards: bool = False) -> list[tuple[int, Event]]:
        """Events of a room in the window (after, upto], newest `limit` (or oldest if forwards)."""
        lower = after if after is not None else -(2**62)
        order = "ASC" if forwards else "DESC"
        rows = await event_rows.timeline_page(self.db, room_id, lower, upto, limit, order)
        return self.rows_to_events(rows)

    async def messages(self, requester: Requester, room_id: str, from_pos: int | None, direction: str,
                       limit: int, to_pos: int | None) -> dict[str, Any]:
        access = await self.read_access(requester, room_id)
        ceiling = self.stream.position if access.upto is None else access.upto
        if direction == "b":
            start = ceiling if from_pos is None else min(from_pos, ceiling)
            got = await self.timeline(room_id, start, limit, after=to_pos)
            if len(got) < limit and to_pos is None and self.remote.federates \
                    and await self.remote.backfill(room_id, limit - len(got)):
                got = await self.timeline(room_id, start, limit, after=to_pos)  # older history arrived
            end = got[-1][0] - 1 if got else None
        else:
            start = (-(2**62)) if from_pos is None else from_pos
            upper = ceiling if to_pos is None else min(to_pos, ceiling)
            got = await self.timeline(room_id, upper, limit, after=start, forwards=True)
            end = got[-1][0] if got else None
        body: dict[str, Any] = {
            "chunk": [self.serialize(ev, requester) for _, ev in access.visible(got)],
            "start": f"s{start}",
        }
        if end is not None and len(got) == limit:
            body["end"] = f"s{end}"
        return body

    def invite_state(self, room: RoomCache, invite: Event) -> list[dict[str, Any]]:
        stripped = [stripped_state(room.state[key]) for key in STRIPPED_STATE_TYPES if key in room.state]
        stripped.append(stripped_state(invite))
        return stripped

