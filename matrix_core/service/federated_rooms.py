"""Rooms shared with other servers: placing their events (with the state before each, resolving
forks), the state after an event, and invites from other servers into rooms not held here.
Federation's inbound handler (matrix_core/federation/) calls these; the events it fetched but did
not place go through EventPersister.enqueue_outliers/enqueue_rejected."""
from __future__ import annotations

import asyncio
from typing import Any

from .. import errors
from ..event_hashing import compute_event_id
from ..events import Event
from ..notifier import EventStream
from ..room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from ..store import Database
from ..store import events as event_rows, rooms as room_rows
from ..store.events import EventRows
from .event_builder import MAX_PREV_EVENTS
from .event_persister import EventPersister
from .room_cache import MAX_STATE_CHAIN, RoomCache, StateKey
from .room_reads import RoomReads
from .room_registry import RoomRegistry

RemoteInvite = tuple[RoomVersion, dict[str, Any], list[dict[str, Any]]]  # version, invite PDU, stripped state


class FederatedRooms:
    def __init__(self, db: Database, stream: EventStream, registry: RoomRegistry, persister: EventPersister,
                 reads: RoomReads) -> None:
        self.db = db
        self.stream = stream
        self.registry = registry
        self.persister = persister
        self.reads = reads
        # (user_id, room_id) -> invite, for rooms on other servers that we are not in.
        self.remote_invites: dict[tuple[str, str], RemoteInvite] = {}

    async def load(self) -> None:
        """After the registry: an invite into a room we hold also is a room event."""
        for user_id, room_id, version, invite_pdu, invite_state, pos in await room_rows.remote_invites(self.db):
            self.remote_invites[(user_id, room_id)] = (KNOWN_ROOM_VERSIONS[version], invite_pdu, invite_state)
            if room_id not in self.registry.versions:
                self.registry.memberships.setdefault(user_id, {})[room_id] = ("invite", pos)

    async def state_after(self, room: RoomCache, event_id: str) -> tuple[dict[StateKey, Event], int | None] | None:
        """The state after a stored, placed (non-outlier) event, and its group; None if unknown."""
        if room.extremities == [event_id] and room.state_group is not None:
            return dict(room.state), room.state_group
        recent = self.persister.recent_state(event_id)
        if recent is not None:
            return dict(recent[0]), recent[1]
        group = await event_rows.state_group_after(self.db, event_id)
        if group is None:
            return None
        return await self.reads.load_state_group(room.room_id, group), group

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
                found = await self.reads.get_events_any(exc.event_ids)
                if not found:
                    raise errors.MatrixError(500, "M_UNKNOWN", f"cannot resolve state: missing {len(exc.event_ids)}")
                for event_id, (ev, _, rejected_reason) in found.items():
                    events[event_id] = ev
                    if rejected_reason:
                        rejected.add(event_id)
        else:
            raise errors.MatrixError(500, "M_UNKNOWN", "state resolution did not converge")
        return {key: events[eid] for key, eid in resolved.items()}

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
        pos = position if position is not None else self.persister.alloc_position(backfilled)
        # A delta may only extend a group whose chain length we know (the room's current one).
        chain = room.state_chain if before_group == room.state_group else MAX_STATE_CHAIN
        if before_group is None:
            before_group, chain = self.persister.new_group(rows, room.room_id, state_before, None, 0, {})
        after_group = before_group
        if ev.is_state:
            key = (ev.type, ev.state_key or "")
            after_group, _ = self.persister.new_group(rows, room.room_id, state_after, before_group, chain, {key: ev})
        rows.add_event(pos, ev, after_group, before_group, None, announce=not (soft_failed or backfilled),
                       rejected="soft_failed" if soft_failed else None)
        self.persister.cache_event(ev)
        if not soft_failed:
            self.persister.remember_state_after(ev.event_id, state_after, after_group)
        if new_current is not None:
            old = room.state
            for key, cur in new_current.items():
                if key not in old or old[key].event_id != cur.event_id:
                    rows.current.append((room.room_id, key[0], key[1], cur.event_id, cur.membership))
                    self.persister.note_member(rows, cur, pos)
            for key in old:
                if key not in new_current:
                    rows.current_deleted.append((room.room_id, key[0], key[1]))
            current_group = after_group
            if new_current is not state_after:
                current_group, _ = self.persister.new_group(rows, room.room_id, new_current, None, 0, {})
            room.state = dict(new_current)
            room.state_group = current_group
            room.state_chain = 0 if current_group != after_group else chain + (1 if ev.is_state else 0)
            room.extremities = new_extremities[-MAX_PREV_EVENTS:]
            room.depth = max(room.depth, ev.depth)
            self.persister.update_room_row(rows, room, latest_is_sole_extremity=room.extremities == [ev.event_id])
        return self.persister.submit(room, rows)

    async def remember_remote_invite(self, user_id: str, room_id: str, version: RoomVersion,
                                     pdu: dict[str, Any], invite_state: list[dict[str, Any]]) -> None:
        """An invite from another server into a room we are not in: kept until joined or left."""
        pos = self.persister.alloc_position(False)
        stripped = list(invite_state) + [{"type": "m.room.member", "state_key": user_id,
                                          "content": pdu.get("content", {}), "sender": pdu.get("sender")}]
        await self.db.write(lambda conn: room_rows.put_remote_invite(
            conn, user_id, room_id, version.identifier, pdu, stripped, pos))
        self.remote_invites[(user_id, room_id)] = (version, pdu, stripped)
        if room_id in self.registry.versions:
            return  # a room we already know: the invite also arrives as a room event
        self.registry.memberships.setdefault(user_id, {})[room_id] = ("invite", pos)
        invite = Event(pdu, compute_event_id(pdu, version), version)
        self.stream.advance([(pos, invite)])

    async def forget_remote_invite(self, user_id: str, room_id: str) -> None:
        if self.remote_invites.pop((user_id, room_id), None) is None:
            return
        await self.db.write(lambda conn: room_rows.delete_remote_invite(conn, user_id, room_id))
