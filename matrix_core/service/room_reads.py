"""Reading rooms: events by id, state (current or at a position), timelines and /messages pages,
and events as clients and other servers get them. Every client read asks the read gate
(read_access.py) first and shows only what it allows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import errors
from ..client_format import STRIPPED_STATE_TYPES, client_event, stripped_state
from ..event_hashing import sign_if_ours
from ..events import Event
from ..notifier import EventStream
from ..signing import SigningKey
from ..store import Database, event_json
from ..store import events as event_rows, state_groups
from .accounts import Requester
from .event_persister import EventPersister
from .read_access import ReadAccess, ReadGate
from .remote_rooms import NO_FEDERATION, RemoteRooms
from .room_cache import RoomCache, StateKey
from .room_registry import RoomRegistry

if TYPE_CHECKING:
    from .relations import Relations
    from .room_send import SentTransactions


class RoomReads:
    relations: Relations  # bundled aggregations (set by Rooms, which builds it from this object)

    def __init__(self, db: Database, stream: EventStream, registry: RoomRegistry, persister: EventPersister,
                 txns: SentTransactions, read_gate: ReadGate, server_name: str, signing_key: SigningKey,
                 clock: Callable[[], int]) -> None:
        self.db = db
        self.stream = stream
        self.registry = registry
        self.persister = persister
        self.txns = txns
        self.read_gate = read_gate
        self.server_name = server_name
        self.signing_key = signing_key
        self.clock = clock
        self.remote: RemoteRooms = NO_FEDERATION  # fetches older history (Rooms.attach_federation)

    # -- events ---------------------------------------------------------------------------------

    async def fetch_event(self, event_id: str) -> tuple[Event, int] | None:
        """An accepted, non-outlier event and its stream position, or None."""
        row = await event_rows.accepted_event(self.db, event_id)
        if row is None:
            return None
        version = self.registry.versions[row[0]]
        return Event(event_json.load(row[1]), event_id, version), row[2]

    async def get_events_any(self, event_ids: Iterable[str]) -> dict[str, tuple[Event, bool, str | None]]:
        """Known events, outliers and rejected ones included: id -> (event, is_outlier, rejected).

        Memory first: events placed or fetched moments ago may not be committed yet, and federation
        asks about the previous PDU of a transaction while its write is still queued."""
        out: dict[str, tuple[Event, bool, str | None]] = {}
        ids = []
        placed_cache, outlier_cache = self.persister.event_cache, self.persister.outlier_cache
        for event_id in dict.fromkeys(event_ids):
            placed = placed_cache.get(event_id)
            if placed is not None:
                out[event_id] = (placed, False, None)
                continue
            outlier = outlier_cache.get(event_id)
            if outlier is not None:
                out[event_id] = (outlier, True, None)
                continue
            ids.append(event_id)
        versions = self.registry.versions
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for event_id, room_id, pdu_json, is_outlier, rejected in await event_rows.events_any(self.db, chunk):
                version = versions.get(room_id)
                if version is not None:
                    out[event_id] = (Event(event_json.load(pdu_json), event_id, version), bool(is_outlier), rejected)
        return out

    def rows_to_events(self, rows: list[tuple[Any, ...]]) -> list[tuple[int, Event]]:
        """(stream_ordering, event_id, room_id, json) rows -> (position, Event)."""
        out = []
        cache, versions = self.persister.event_cache, self.registry.versions
        for pos, event_id, room_id, pdu_json in rows:
            cached = cache.get(event_id)
            if cached is None:
                cached = Event(event_json.load(pdu_json), event_id, versions[room_id])
            out.append((pos, cached))
        return out

    def serialize(self, event: Event, requester: Requester | None = None) -> dict[str, Any]:
        redaction = self.persister.redaction_of(event.event_id)
        txn = None
        if requester is not None and event.sender == requester.user_id:
            txn = self.txns.transaction_id(event.event_id, requester.device_id)
        return client_event(event, self.clock(), redaction=redaction, transaction_id=txn)

    def outgoing_pdu(self, event: Event) -> dict[str, Any]:
        """The event's pdu as another server gets it: events built here are stored unsigned and
        signed on their way out (event_hashing.hash_and_encode_new_event says why)."""
        return sign_if_ours(event.pdu, event.room_version, self.server_name, self.signing_key)

    def outgoing_pdus(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        return [self.outgoing_pdu(ev) for ev in events]

    def invite_state(self, room: RoomCache, invite: Event) -> list[dict[str, Any]]:
        stripped = [stripped_state(room.state[key]) for key in STRIPPED_STATE_TYPES if key in room.state]
        stripped.append(stripped_state(invite))
        return stripped

    # -- state ----------------------------------------------------------------------------------

    async def read_access(self, requester: Requester, room_id: str) -> ReadAccess:
        """Raise unless the user may read the room; what they may see of it (history visibility)."""
        room = await self.registry.get_room(room_id)
        visibility = room.state_content("m.room.history_visibility").get("history_visibility")
        return await self.read_gate.access(requester.user_id, room_id,
                                           self.registry.membership_of(requester.user_id, room_id),
                                           visibility if isinstance(visibility, str) else "shared")

    async def _readable_state(self, requester: Requester, room_id: str) -> dict[StateKey, Event]:
        """The state the user may read: the current one, or the one they left (if they could read it)."""
        upto = (await self.read_access(requester, room_id)).state_position()
        if upto is None:
            return (await self.registry.get_room(room_id)).state
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
        version = self.registry.versions[room_id]
        out: dict[StateKey, Event] = {}
        if ids:
            rows = await event_rows.events_json(self.db, list(ids.values()))
            by_id = {eid: Event(event_json.load(j), eid, version) for eid, j in rows}
            for key, eid in ids.items():
                if eid in by_id:
                    out[key] = by_id[eid]
        return out

    # -- history ----------------------------------------------------------------------------------

    async def get_event_for_client(self, requester: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        access = await self.read_access(requester, room_id)
        found = await self.fetch_event(event_id)
        if found is None or found[0].room_id != room_id or not access.event_visible(found[1], found[0]):
            raise errors.not_found("Event not found.")
        event = self.serialize(found[0], requester)
        await self.relations.bundle(requester, room_id, [event], access)
        return event

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
        chunk = [self.serialize(ev, requester) for _, ev in access.visible(got)]
        await self.relations.bundle(requester, room_id, chunk, access)
        body: dict[str, Any] = {"chunk": chunk, "start": f"s{start}"}
        if end is not None and len(got) == limit:
            body["end"] = f"s{end}"
        return body
