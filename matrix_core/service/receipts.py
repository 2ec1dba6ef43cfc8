"""Read receipts and read markers: POST /receipt and /read_markers, `m.receipt` in /sync, the
read positions push-rule counts start from, and receipts over federation.

Receipts are persisted (store/receipts.py) before the request is answered; the "receipts" sync
stream's position is the newest committed receipt's `stream_id` (so it survives a restart). The
read marker (`m.fully_read`) is not a receipt but room account data, written through the account
data service (`hs.account_data.set_room_account_data`).

Our users' public receipts (`m.read`) go to the other servers in the room as `m.receipt` EDUs,
durably: store/receipts.py's outbound rows are written with the receipt and moved once a
transaction carrying it is acknowledged, and a restart resends what is not. Private receipts
(`m.read.private`) never leave the hub, and /sync shows them only to their owner.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from .. import errors
from ..clock import now_ms
from ..ephemeral import (FULLY_READ, READ, READ_PRIVATE, UNTHREADED, Receipt, event_id as check_event_id,
                         receipt_edu, receipt_events)
from ..identifiers import server_of
from ..store import receipts as receipt_rows
from .accounts import Requester
from .sync_sources import SyncContext, SyncOutput, SyncSource
from .typing import EduQueue

if TYPE_CHECKING:
    from ..store import Database
    from .rooms import Rooms

log = logging.getLogger(__name__)

MAX_CACHED_POSITIONS = 10_000


class RoomAccountData(Protocol):
    """The account data service's one call the read marker needs (service/account_data.py)."""

    async def set_room_account_data(self, user_id: str, room_id: str, data_type: str,
                                    content: dict[str, Any]) -> None: ...


class Receipts:
    def __init__(self, db: Database, rooms: Rooms, server_name: str, notify: Callable[[], None],
                 account_data: RoomAccountData) -> None:
        self.db = db
        self.rooms = rooms
        self.server_name = server_name
        self._notify = notify
        self._account_data = account_data
        self._position = 0  # the newest committed receipt's stream id
        self._next = 0  # the last stream id handed out (writes may still be queued)
        self._positions: dict[tuple[str, str], dict[str, int]] = {}  # read_positions' cache
        self._acked: dict[str, int] = {}  # destination -> acknowledged position not yet written
        self._ack_task: asyncio.Task[None] | None = None
        self.federation: EduQueue | None = None  # set by the federation front end at its start
        self.sync_source = ReceiptsSource(self)
        # told the receipts just committed (application services' ephemeral push)
        self.listeners: list[Callable[[list[Receipt]], None]] = []

    async def load(self) -> None:
        self._position = self._next = await receipt_rows.max_stream(self.db)

    async def stop(self) -> None:
        """Write the last acknowledgements before the database closes."""
        if self._ack_task is not None:
            await self._ack_task

    @property
    def position(self) -> int:
        return self._position

    # -- the client API ---------------------------------------------------------------------------

    async def client_receipt(self, requester: Requester, room_id: str, kind: str, event_id: str,
                             thread_id: str | None) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId} (the arguments checked by the
        handler). m.fully_read is the read marker, as the spec says."""
        position = await self._visible_event(requester, room_id, event_id)
        if kind == FULLY_READ:
            await self._set_read_marker(requester.user_id, room_id, event_id)
            return
        await self._store([(Receipt(room_id, kind, requester.user_id, event_id, now_ms(), thread_id), position)])

    async def read_markers(self, requester: Requester, room_id: str, markers: dict[str, str]) -> None:
        """POST /rooms/{roomId}/read_markers: every named event is checked before anything is kept."""
        positions = {kind: await self._visible_event(requester, room_id, eid) for kind, eid in markers.items()}
        receipts = [(Receipt(room_id, kind, requester.user_id, markers[kind], now_ms(), None), positions[kind])
                    for kind in (READ, READ_PRIVATE) if kind in markers]
        if receipts:
            await self._store(receipts)
        if FULLY_READ in markers:
            await self._set_read_marker(requester.user_id, room_id, markers[FULLY_READ])

    async def _visible_event(self, requester: Requester, room_id: str, event_id: str) -> int:
        """The stream position of an event of the room the user (joined) may see; M_NOT_FOUND
        for one that is not there or not visible to them."""
        check_event_id(event_id)
        if not self.rooms.is_joined(requester.user_id, room_id):
            raise errors.forbidden("You are not in this room")
        found = await self.rooms.fetch_event(event_id)
        if found is None or found[0].room_id != room_id:
            raise errors.not_found("Event not found.")
        access = await self.rooms.read_access(requester, room_id)
        if not access.event_visible(found[1], found[0]):
            raise errors.not_found("Event not found.")
        return found[1]

    async def _set_read_marker(self, user_id: str, room_id: str, event_id: str) -> None:
        await self._account_data.set_room_account_data(user_id, room_id, FULLY_READ, {"event_id": event_id})

    # -- reads for push rules -------------------------------------------------------------------------

    async def read_positions(self, user_id: str, room_id: str) -> dict[str, int]:
        """Thread ("main", a thread root's event id, or "unthreaded") -> the stream position of the
        event the user's latest m.read / m.read.private receipt in that thread points at."""
        key = (user_id, room_id)
        cached = self._positions.get(key)
        if cached is not None:
            return dict(cached)
        position = self._position
        rows = await receipt_rows.read_positions(self.db, user_id, room_id)
        found = {thread or UNTHREADED: pos for thread, pos in rows}
        if position == self._position:  # no receipt committed meanwhile: the answer is current
            if len(self._positions) >= MAX_CACHED_POSITIONS:
                self._positions.clear()
            self._positions[key] = found
        return dict(found)

    # -- writes -----------------------------------------------------------------------------------

    def _servers_of(self, room_id: str) -> set[str]:
        room = self.rooms.loaded_room(room_id)
        if room is None:
            return set()
        return {server_of(user) for user in room.joined_users()} - {self.server_name}

    async def _store(self, receipts: Sequence[tuple[Receipt, int | None]]) -> None:
        """Keep receipts (each with its event's position, None if not held here); durable before
        this returns. Our public ones are queued for the room's other servers after the commit."""
        planned: list[tuple[Receipt, int | None, int, set[str]]] = []
        for receipt, event_stream in receipts:
            self._next += 1
            ours = receipt.receipt_type == READ and server_of(receipt.user_id) == self.server_name
            planned.append((receipt, event_stream, self._next, self._servers_of(receipt.room_id) if ours else set()))

        def write(conn: Any) -> list[bool]:
            return [receipt_rows.upsert(conn, r, event_stream, stream_id, servers)
                    for r, event_stream, stream_id, servers in planned]

        stored = await self.db.write(write)
        kept = [plan for plan, ok in zip(planned, stored) if ok]
        if not kept:
            return
        self._position = max(self._position, max(stream_id for _, _, stream_id, _ in kept))
        for r, _, _, _ in kept:
            self._positions.pop((r.user_id, r.room_id), None)
        self._notify()
        for listener in self.listeners:
            listener([r for r, _, _, _ in kept])
        for r, _, stream_id, servers in kept:
            for server in servers:
                self._send(server, r, stream_id)

    # -- federation -----------------------------------------------------------------------------------

    def _send(self, server: str, receipt: Receipt, stream_id: int) -> None:
        if self.federation is None:
            return
        key = ("m.receipt", receipt.room_id, receipt.user_id, receipt.thread_id)
        self.federation.queue_edu(server, key, receipt_edu(receipt), lambda: self._sent(server, stream_id))

    def _sent(self, server: str, stream_id: int) -> None:
        """A transaction carrying our receipts up to `stream_id` reached `server` (EDUs are queued
        and sent in stream order): remember it, written in the background, coalesced."""
        if stream_id > self._acked.get(server, 0):
            self._acked[server] = stream_id
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(self._write_acks())

    async def _write_acks(self) -> None:
        while self._acked:
            server, acked = self._acked.popitem()
            try:
                await receipt_rows.set_acked(self.db, server, acked)
            except Exception as exc:  # resent after a restart: receipts are idempotent
                log.info("could not record receipts sent to %s: %s", server, exc)

    async def attach_federation(self, federation: EduQueue) -> None:
        """Federation starts: queue what each server is still owed since the last run."""
        self.federation = federation
        for server, acked in await receipt_rows.outbound(self.db):
            for receipt, stream_id in await receipt_rows.ours_after(self.db, acked, self.server_name):
                if server_of(receipt.user_id) != self.server_name or self.rooms.room_version(receipt.room_id) is None:
                    continue
                room = await self.rooms.get_room(receipt.room_id)
                if any(server_of(user) == server for user in room.joined_users()):
                    self._send(server, receipt, stream_id)

    async def remote_receipts(self, origin: str, receipts: list[Receipt],
                              dropped: Callable[[str], None]) -> None:
        """An `m.receipt` EDU's receipts from `origin`: each user must be of that server and joined
        to the room; the others are `dropped(reason)`. Kept before this returns."""
        keep: list[tuple[Receipt, int | None]] = []
        for receipt in receipts:
            if server_of(receipt.user_id) != origin:
                dropped(f"{receipt.user_id} is not a user of {origin}")
                continue
            if self.rooms.room_version(receipt.room_id) is None:
                dropped(f"unknown room {receipt.room_id}")
                continue
            room = await self.rooms.get_room(receipt.room_id)
            if room.member(receipt.user_id) != "join":
                dropped(f"{receipt.user_id} is not in {receipt.room_id}")
                continue
            found = await self.rooms.fetch_event(receipt.event_id)
            if found is not None and found[0].room_id != receipt.room_id:
                dropped(f"{receipt.event_id} is not an event of {receipt.room_id}")
                continue
            keep.append((receipt, found[1] if found is not None else None))
        if keep:
            await self._store(keep)


class ReceiptsSource(SyncSource):
    """/sync's `m.receipt` in joined rooms' `ephemeral`: receipts that changed since the token (all
    held ones in an initial sync); others' private receipts are never shown."""

    stream = "receipts"

    def __init__(self, receipts: Receipts) -> None:
        self.receipts = receipts

    def position(self) -> int:
        return self.receipts.position

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        db = self.receipts.db
        joined = set(ctx.joined_rooms)
        if since == 0:
            rows = await receipt_rows.in_rooms(db, ctx.joined_rooms, upto)
        else:
            rows = [row for row in await receipt_rows.between(db, since, upto) if row[0].room_id in joined]
        events = receipt_events([r for r, _ in rows], ctx.requester.user_id)
        for room_id, event in events.items():
            out.add_room(room_id, "ephemeral", [event])

