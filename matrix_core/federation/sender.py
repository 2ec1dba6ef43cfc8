"""Outbound federation: per-destination queues of our events, retried with backoff.

A slow or dead server never blocks a local send: events are only appended here after their own
commit, and each destination drains in its own task. Progress per destination is persisted
(`federation_outbound.last_stream`), so after a restart the queue is rebuilt from the event table.
A destination in backoff is woken early when it is heard from (any authenticated request).

EDUs (typing, receipts) ride in the same transactions, queued per destination under a key: a
newer EDU with the same key (the same user's typing in a room) replaces the queued one and moves
to the back, so the queue stays in the order callers queued and bounded by what is current.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Hashable

from .. import errors
from ..clock import now_ms
from ..events import Event
from .client import federation_path
from ..identifiers import server_of
from ..store import federation as federation_store

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
MAX_QUEUED_EDUS = 1000  # per destination; the oldest goes first (a server down for long)
MIN_BACKOFF = 1.0
MAX_BACKOFF = 600.0


class Destination:
    def __init__(self, name: str, last_stream: int) -> None:
        self.name = name
        self.last_stream = last_stream
        self.queue: list[tuple[int, dict[str, Any]]] = []
        # key -> (EDU, run once a transaction carrying it is acknowledged)
        self.edus: dict[Hashable, tuple[dict[str, Any], Callable[[], None] | None]] = {}
        self.wake = asyncio.Event()
        self.backoff = 0.0
        self.task: asyncio.Task[None] | None = None
        # For the Status page (peers()): when a transaction last went through, the last failure.
        self.last_success_ms: int | None = None
        self.last_error = ""


class FederationSender:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self._destinations: dict[str, Destination] = {}
        self._txn_counter = now_ms()
        self._stopping = False
        # Events received from others that we, as the resident server, must pass on (send_join).
        self._forward: set[str] = set()
        self.started = False

    async def start(self) -> None:
        for name, last in await federation_store.outbound_positions(self.hs.db):
            dest = self._destination(name, last)
            await self._refill_from_store(dest)
        self.started = True  # FederationService.events_persisted passes commits on from now

    async def stop(self) -> None:
        self._stopping = True
        for dest in self._destinations.values():
            if dest.task is not None:
                dest.task.cancel()
        for dest in self._destinations.values():
            if dest.task is not None:
                try:
                    await dest.task
                except (asyncio.CancelledError, Exception):
                    pass

    def forward(self, event_id: str) -> None:
        """Pass a remote server's event (a join we accepted via send_join) on to the others."""
        self._forward.add(event_id)

    def wake(self, server_name: str) -> None:
        """We heard from `server_name`: retry its queue now instead of after the backoff."""
        dest = self._destinations.get(server_name)
        if dest is not None:
            dest.backoff = 0.0
            dest.wake.set()

    def queue_edu(self, destination: str, key: Hashable, edu: dict[str, Any],
                  after_sent: Callable[[], None] | None = None) -> None:
        """Send an EDU to `destination` with the next transaction (service/typing.EduQueue)."""
        if self._stopping or destination == self.hs.server_name:
            return
        dest = self._destination(destination)
        dest.edus.pop(key, None)
        dest.edus[key] = (edu, after_sent)
        while len(dest.edus) > MAX_QUEUED_EDUS:
            del dest.edus[next(iter(dest.edus))]
        dest.wake.set()

    def peers(self) -> list[dict[str, Any]]:
        """The servers this hub sends to, for the Status page: state "backing off" (the last
        transaction failed; retried after `backoff_s`), "reachable" (the last one went through) or
        "not contacted yet" (nothing sent since start), the last success (ms, None: never since
        start) and error, events and EDUs queued."""
        return [{"server_name": d.name, "state": "backing off" if d.backoff > 0 else
                 "reachable" if d.last_success_ms is not None else "not contacted yet",
                 "backoff_s": d.backoff, "last_success_ts": d.last_success_ms, "last_error": d.last_error,
                 "queued": len(d.queue) + len(d.edus)}
                for d in sorted(self._destinations.values(), key=lambda d: d.name)]

    def servers_in_room(self, room_id: str) -> set[str]:
        room = self.hs.rooms.loaded_room(room_id)
        if room is None:
            return set()
        return {server_of(user) for user in room.joined_users()}

    def _destination(self, name: str, last_stream: int = 0) -> Destination:
        dest = self._destinations.get(name)
        if dest is None:
            dest = self._destinations[name] = Destination(name, last_stream)
            dest.task = asyncio.get_running_loop().create_task(self._run(dest), name=f"federation-send-{name}")
        return dest

    def on_persisted(self, room_id: str, entries: list[tuple[int, Event]]) -> None:
        ours = self.hs.server_name
        for pos, ev in entries:
            if ev.origin_server() != ours and ev.event_id not in self._forward:
                continue
            self._forward.discard(ev.event_id)
            targets = self.servers_in_room(room_id)
            if ev.type == "m.room.member" and ev.state_key and ev.membership in ("invite", "leave", "ban"):
                targets.add(server_of(ev.state_key))  # the target hears of its own membership change
            destinations = targets - {ours, ev.origin_server()}
            if not destinations:
                continue  # a room no other server is in: its events are never signed
            pdu = self.hs.rooms.outgoing_pdu(ev)  # signed once, for every destination
            for server in destinations:
                dest = self._destination(server)
                dest.queue.append((pos, pdu))
                dest.wake.set()

    async def _refill_from_store(self, dest: Destination) -> None:
        """After a restart: our events the destination has not acknowledged, in rooms it is in."""
        rows = await federation_store.unsent_events(self.hs.db, dest.last_stream, self.hs.server_name, dest.name)
        rooms = self.hs.rooms
        # Every room holding events is known (its version loaded at start): the test only types it.
        dest.queue.extend((pos, rooms.outgoing_pdu(Event(pdu, event_id, version)))
                          for pos, event_id, room_id, pdu in rows
                          if (version := rooms.room_version(room_id)) is not None)
        if dest.queue:
            dest.wake.set()

    async def _run(self, dest: Destination) -> None:
        while not self._stopping:
            if not dest.queue and not dest.edus:
                dest.wake.clear()
                await dest.wake.wait()
                continue
            batch = dest.queue[:MAX_PDUS_PER_TXN]
            edu_keys = list(dest.edus)[:MAX_EDUS_PER_TXN]
            edus = [dest.edus[key] for key in edu_keys]
            self._txn_counter += 1
            txn_id = str(self._txn_counter)
            body: dict[str, Any] = {
                "origin": self.hs.server_name,
                "origin_server_ts": now_ms(),
                "pdus": [pdu for _, pdu in batch],
            }
            if edus:
                body["edus"] = [edu for edu, _ in edus]
            try:
                await self.hs.federation_client.request(dest.name, "PUT", federation_path("/_matrix/federation/v1/send/{t}", t=txn_id),
                                                        body=body)
            except Exception as exc:
                dest.backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, dest.backoff * 2))
                dest.last_error = str(exc)[:200] or type(exc).__name__
                log.info("sending %d PDUs and %d EDUs to %s failed (%s); retrying in %.0fs", len(batch),
                         len(edus), dest.name, exc, dest.backoff)
                dest.wake.clear()
                try:
                    await asyncio.wait_for(dest.wake.wait(), dest.backoff)
                except asyncio.TimeoutError:
                    pass
                continue
            dest.backoff = 0.0
            dest.last_success_ms = now_ms()
            del dest.queue[:len(batch)]
            for key, (edu, after_sent) in zip(edu_keys, edus):
                if dest.edus.get(key, (None,))[0] is edu:  # not replaced by a newer one meanwhile
                    del dest.edus[key]
                if after_sent is not None:
                    after_sent()
            if not batch:
                continue
            last = max(pos for pos, _ in batch)
            if last > dest.last_stream:
                dest.last_stream = last
                try:
                    await federation_store.set_outbound_position(self.hs.db, dest.name, last)
                except errors.StorageFull:  # saved with a later batch; a restart before resends (deduplicated)
                    pass

    async def ping(self, server_name: str) -> None:
        """An empty transaction: tells a server we are back (it then retries what it owes us)."""
        self._txn_counter += 1
        try:
            await self.hs.federation_client.request(
                server_name, "PUT", federation_path("/_matrix/federation/v1/send/{t}", t=str(self._txn_counter)),
                body={"origin": self.hs.server_name, "origin_server_ts": now_ms(), "pdus": []},
            )
        except Exception as exc:
            log.info("could not reach %s: %s", server_name, exc)
