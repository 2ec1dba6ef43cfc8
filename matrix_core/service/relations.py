"""Relations, threads and context: `/relations`, `/threads`, `/context`, the bundled aggregations
(`unsigned["m.relations"]`) every event-returning read adds, and the checks a relation must pass
before it is sent.

Bundles are added to events already in client form, a page at a time (`bundle`, `bundle_rooms`):
one index query for all the parents of the page, one fetch for the events the bundles show, and
none at all for a room that has never held a relation (`EventPersister.relation_rooms`, an
in-memory set), which is every room of a hub that only carries device readings. The rules (which
children count, which edit wins) are pure: matrix_core/relations.py. Every read goes through the
read gate (read_access.py): children the reader may not see are neither shown nor counted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import errors
from ..events import Event
from ..notifier import EventStream
from ..params import MAX_POSITION
from ..relations import (
    ANNOTATION,
    BUNDLED,
    RECURSION_DEPTH,
    THREAD,
    Aggregation,
    Child,
    Parent,
    aggregate,
    bundle_json,
    context_split,
    lazy_members,
    relation_of,
    thread_start_error,
)
from ..store import Database
from ..store import relations as relation_rows
from .accounts import Requester
from .event_persister import EventPersister
from .read_access import ReadAccess

if TYPE_CHECKING:
    from .room_reads import RoomReads

# Bundles inside bundles: a thread's latest event carries its own (its edits), one level down.
_MAX_BUNDLE_DEPTH = 1


def _visible_to(access: ReadAccess) -> Callable[[Child], bool]:
    return lambda child: access.visible_at(child.pos, child.type)


class Relations:
    def __init__(self, db: Database, stream: EventStream, persister: EventPersister, reads: RoomReads) -> None:
        self.db = db
        self.stream = stream
        self.persister = persister
        self.reads = reads

    async def load(self) -> None:
        """Which rooms hold relations (new ones are added as their rows are written)."""
        self.persister.relation_rooms.update(await relation_rows.rooms_with_relations(self.db))

    # -- bundled aggregations -------------------------------------------------------------------

    async def bundle(self, requester: Requester, room_id: str, events: list[dict[str, Any]],
                     access: ReadAccess | None = None) -> None:
        """Add `unsigned["m.relations"]` to the client-form events of one room that have children."""
        await self.bundle_rooms(requester, {room_id: events}, {room_id: access} if access is not None else {})

    async def bundle_rooms(self, requester: Requester, by_room: Mapping[str, list[dict[str, Any]]],
                           accesses: Mapping[str, ReadAccess] | None = None, depth: int = 0) -> None:
        """`bundle` for several rooms' events at once (a /sync answer): one query for them all."""
        relation_rooms = self.persister.relation_rooms
        wanted = {room_id: [ev for ev in events if "state_key" not in ev]
                  for room_id, events in by_room.items() if events and room_id in relation_rooms}
        pairs = [(room_id, ev["event_id"]) for room_id, events in wanted.items() for ev in events]
        if not pairs:
            return
        by_parent: dict[str, list[Child]] = {}
        for child in await relation_rows.children(self.db, pairs, BUNDLED):
            by_parent.setdefault(child.parent_id, []).append(child)
        if not by_parent:
            return
        found: list[tuple[str, dict[str, Any], Aggregation]] = []
        known = dict(accesses or {})
        for room_id, events in wanted.items():
            access: ReadAccess | None = known.get(room_id)
            for ev in events:
                kids = by_parent.get(ev["event_id"])
                if not kids:
                    continue
                if access is None:
                    try:
                        access = known[room_id] = await self.reads.read_access(requester, room_id)
                    except errors.MatrixError:
                        break  # cannot read the room now: no bundles for it
                agg = aggregate(Parent.from_client_event(ev), kids, requester.user_id, _visible_to(access))
                if not agg.is_empty():
                    found.append((room_id, ev, agg))
        if not found:
            return
        shown = await self._client_events([eid for _, _, agg in found for eid in agg.needed_events()], requester)
        if depth < _MAX_BUNDLE_DEPTH:
            latest: dict[str, list[dict[str, Any]]] = {}
            for room_id, _, agg in found:
                if agg.thread_latest in shown:
                    latest.setdefault(room_id, []).append(shown[agg.thread_latest])
            await self.bundle_rooms(requester, latest, known, depth + 1)
        for _, ev, agg in found:
            bundle = bundle_json(agg, shown)
            if bundle:
                ev.setdefault("unsigned", {}).setdefault("m.relations", {}).update(bundle)

    async def _client_events(self, event_ids: list[str], requester: Requester) -> dict[str, dict[str, Any]]:
        """Placed events by id, in client form (events held in memory are not read again)."""
        got = await self.reads.get_events_any(event_ids)
        return {eid: self.reads.serialize(ev, requester) for eid, (ev, outlier, rejected) in got.items()
                if not outlier and rejected is None}

    # -- /relations -----------------------------------------------------------------------------

    async def _visible_event(self, requester: Requester, room_id: str, event_id: str,
                             access: ReadAccess) -> tuple[Event, int]:
        found = await self.reads.fetch_event(event_id)
        if found is None or found[0].room_id != room_id or not access.event_visible(found[1], found[0]):
            raise errors.not_found("Event not found.")
        return found

    async def relations(self, requester: Requester, room_id: str, event_id: str, rel_type: str | None,
                        event_type: str | None, from_token: str | None, from_pos: int | None,
                        to_pos: int | None, limit: int, forwards: bool, recurse: bool | None) -> dict[str, Any]:
        """A page of the children of a parent the user may see (else 404, as for an unknown one),
        most recent first unless `forwards`; tokens are stream positions as /messages uses them."""
        try:
            access = await self.reads.read_access(requester, room_id)
        except errors.MatrixError as exc:
            if exc.errcode == "M_FORBIDDEN":  # not in the room: the parent is not visible to them
                raise errors.not_found("Event not found.") from None
            raise
        await self._visible_event(requester, room_id, event_id, access)
        ceiling = MAX_POSITION if access.upto is None else access.upto
        if forwards:
            after = -MAX_POSITION if from_pos is None else from_pos
            upto = min(ceiling, MAX_POSITION if to_pos is None else to_pos)
        else:
            upto = min(ceiling, MAX_POSITION if from_pos is None else from_pos)
            after = -MAX_POSITION if to_pos is None else to_pos
        depth = RECURSION_DEPTH if recurse else 1
        rows = await relation_rows.page(self.db, event_id, room_id, rel_type, event_type, depth, after, upto,
                                        limit, forwards)
        events = await self._client_events([row.event_id for row in rows], requester)
        chunk = [events[row.event_id] for row in rows
                 if row.event_id in events and access.visible_at(row.pos, row.type)]
        await self.bundle(requester, room_id, chunk, access)
        body: dict[str, Any] = {"chunk": chunk}
        if len(rows) == limit:
            body["next_batch"] = f"s{rows[-1].pos if forwards else rows[-1].pos - 1}"
        if from_token is not None:
            body["prev_batch"] = from_token
        if recurse is not None:
            body["recursion_depth"] = depth
        return body

    # -- /threads -------------------------------------------------------------------------------

    async def threads(self, requester: Requester, room_id: str, participated: bool, from_pos: int | None,
                      limit: int) -> dict[str, Any]:
        """The room's thread roots the user may see, most recently active first, each with its
        bundle; `participated`: only threads the user started or replied in."""
        access = await self.reads.read_access(requester, room_id)
        upto = MAX_POSITION if from_pos is None else from_pos
        roots = await relation_rows.thread_roots(self.db, room_id, upto, limit,
                                                 requester.user_id if participated else None)
        placed = {ev.event_id: (pos, ev) for pos, ev in self.reads.rows_to_events(
            await relation_rows.placed_events(self.db, [root for root, _ in roots]))}
        chunk = []
        for root_id, _ in roots:
            got = placed.get(root_id)
            if got is not None and got[1].room_id == room_id and access.event_visible(*got):
                chunk.append(self.reads.serialize(got[1], requester))
        await self.bundle(requester, room_id, chunk, access)
        body: dict[str, Any] = {"chunk": chunk}
        if len(roots) == limit:
            body["next_batch"] = f"s{roots[-1][1] - 1}"
        return body

    # -- /context -------------------------------------------------------------------------------

    async def context(self, requester: Requester, room_id: str, event_id: str, limit: int,
                      lazy_load_members: bool) -> dict[str, Any]:
        """The event, up to `limit` events around it (fewer before than after when odd), and the
        state at the last one returned; tokens to page from either end with /messages."""
        access = await self.reads.read_access(requester, room_id)
        event, pos = await self._visible_event(requester, room_id, event_id, access)
        n_before, n_after = context_split(limit)
        ceiling = self.stream.position if access.upto is None else access.upto
        before = await self.reads.timeline(room_id, pos - 1, n_before) if n_before else []
        after = await self.reads.timeline(room_id, ceiling, n_after, after=pos, forwards=True) if n_after else []
        last = after[-1][0] if after else pos
        shown_before = [self.reads.serialize(ev, requester) for _, ev in access.visible(before)]
        shown_after = [self.reads.serialize(ev, requester) for _, ev in access.visible(after)]
        shown = self.reads.serialize(event, requester)
        await self.bundle(requester, room_id, [shown, *shown_before, *shown_after], access)
        state = [self.reads.serialize(ev) for ev in (await self.reads.state_at(room_id, last)).values()]
        if lazy_load_members:
            state = lazy_members(state, {ev["sender"] for ev in (shown, *shown_before, *shown_after)})
        return {
            "start": f"s{before[-1][0] - 1 if before else pos - 1}",
            "end": f"s{last}",
            "event": shown,
            "events_before": shown_before,
            "events_after": shown_after,
            "state": state,
        }

    # -- sending ------------------------------------------------------------------------------

    async def check_send(self, room_id: str, event_type: str, content: dict[str, Any], sender: str) -> None:
        """The server's rules for a relation a local user sends (called only for content with an
        `m.relates_to`): the parent is in the room (or at least known as a parent), a thread
        does not start from a relation, and a reaction is not sent twice."""
        relation = relation_of(content)
        if relation is None:
            return
        got = (await self.reads.get_events_any([relation.parent_id])).get(relation.parent_id)
        parent = got[0] if got is not None and not got[1] and got[2] is None else None
        if parent is not None:
            if parent.room_id != room_id:
                raise errors.unknown("Relations must be in the same room")
        elif not await relation_rows.is_parent(self.db, relation.parent_id):
            raise errors.unknown("Cannot send a relation to an unknown event")
        if relation.rel_type == THREAD and parent is not None:
            reason = thread_start_error(parent.content)
            if reason is not None:
                raise errors.unknown(reason)
        elif relation.rel_type == ANNOTATION and relation.key is not None:
            if await relation_rows.has_annotation(self.db, relation.parent_id, sender, event_type, relation.key):
                raise errors.duplicate_annotation()
