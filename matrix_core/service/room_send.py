"""Sending events into a room as a local user: the path every front end's message takes (HTTP PUT,
CoAP POST, MQTT PUBLISH), idempotent per transaction id, and the batch form a high-rate front end
uses. Redaction is a send too."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from .. import auth_rules, errors
from ..events import Event
from ..ratelimit import RateLimiter
from ..store import Database
from ..store import events as event_rows
from ..store.database import WriteFn
from ..store.events import EventRows
from .accounts import Requester
from .event_builder import EventBuilder
from .event_persister import EventPersister
from .room_reads import RoomReads
from .room_registry import RoomRegistry

# Transaction ids remembered for idempotent PUT /send (loaded at start-up from the newest events).
# Like Synapse's time-bounded cache: a retry older than this many sends is treated as new
# (clients retry within seconds; ~250 bytes each, so an old hub's start-up stays small).
TXN_MEMORY = 4096


class SentTransactions:
    """Transaction ids of recent sends: a retried PUT gets the first send's event id, and the
    sending device sees its transaction id on its own events (serialize)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.txns: OrderedDict[str, str] = OrderedDict()  # "user|device|txn id" -> event id
        self._txn_of_event: dict[str, dict[str, str]] = {}  # event id -> device -> txn id

    async def load(self) -> None:
        for txn_key, event_id in await event_rows.recent_txns(self.db, TXN_MEMORY):
            self.txns[txn_key] = event_id

    def transaction_id(self, event_id: str, device_id: str | None) -> str | None:
        """The transaction id the sending device gave the event (its own echo carries it)."""
        return self._txn_of_event.get(event_id, {}).get(device_id)  # type: ignore[arg-type]

    def remember(self, txn_key: str, event_id: str, device_id: str | None, txn_id: str) -> None:
        self.txns[txn_key] = event_id
        self._txn_of_event.setdefault(event_id, {})[device_id] = txn_id  # type: ignore[index]
        while len(self.txns) > TXN_MEMORY:
            self.txns.popitem(last=False)
        if len(self._txn_of_event) > TXN_MEMORY:
            self._txn_of_event.clear()


class RoomSending:
    def __init__(self, registry: RoomRegistry, builder: EventBuilder, persister: EventPersister,
                 txns: SentTransactions, reads: RoomReads, limiter: RateLimiter) -> None:
        self.limiter = limiter  # the per-user message rate, for every front end
        self.registry = registry
        self.builder = builder
        self.persister = persister
        self._txns = txns.txns
        self._sent = txns
        self.reads = reads
        # The relation rules (service/relations.py Relations.check_send): only content with an
        # `m.relates_to` pays for them (room id, event type, content, sender).
        self.check_relation: Callable[[str, str, dict[str, Any], str], Awaitable[None]] | None = None

    async def send_event(self, requester: Requester, room_id: str, event_type: str, content: Any,
                         txn_id: str | None = None, state_key: str | None = None,
                         also: WriteFn | None = None, rate_limit: bool = True) -> str:
        """Send a message or state event as the requester; returns the event id once durable.

        `also`: a front end's own write committed in the same transaction as the event (MQTT
        records a QoS 2 packet id with its message: a crash cannot keep one without the other).
        `rate_limit`: False when the caller already took the send's token (`Rooms.check_send_rate`:
        MQTT slows a publisher down before it builds anything) or it is the hub's own send."""
        if rate_limit:
            self.limiter.check(requester.user_id)
        if not isinstance(content, dict):
            raise errors.bad_json("Event content must be a JSON object")
        txn_key = f"{requester.user_id}|{requester.device_id}|{txn_id}" if txn_id is not None else None
        if txn_key is not None and txn_key in self._txns:
            return self._txns[txn_key]
        room = await self.registry.get_room(room_id)
        if txn_key is not None and txn_key in self._txns:  # a retry raced us while loading
            return self._txns[txn_key]
        if "m.relates_to" in content and self.check_relation is not None:
            await self.check_relation(room_id, event_type, content, requester.user_id)
            if txn_key is not None and txn_key in self._txns:
                return self._txns[txn_key]
        event = self.builder.build_requested(room, requester, event_type, content, state_key)
        if txn_key is not None:
            self._sent.remember(txn_key, event.event_id, requester.device_id, txn_id)  # type: ignore[arg-type]
        try:
            await self.persister.apply_and_enqueue(room, [event], txn_key, also=also)
        except BaseException:
            if txn_key is not None:
                self._txns.pop(txn_key, None)
            raise
        return event.event_id

    def send_events_nowait(self, requester: Requester, room_id: str,
                           items: list[tuple[str, dict[str, Any], str | None]], delay: float = 0.0,
                           on_placed: Callable[[list[tuple[int, Event]]], None] | None = None,
                           extras: "list[WriteFn | None] | None" = None, rate_limit: bool = True,
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
        as that item's event, and only if the item is accepted (like `send_event`'s `also`).
        `rate_limit`: as for `send_event`, per item (an item over the rate is refused alone)."""
        room = self.registry.rooms.get(room_id)
        if room is None:
            return None, []
        outcomes: list[Any] = []
        events: list[Event] = []
        rows = EventRows()
        build = self.builder.build_requested
        persister = self.persister
        check = self.limiter.check if rate_limit else None
        user_id = requester.user_id
        for i, (event_type, content, state_key) in enumerate(items):
            try:
                if check is not None:
                    check(user_id)
                event = build(room, requester, event_type, content, state_key)
            except errors.MatrixError as exc:
                outcomes.append(exc)
                continue
            persister.apply(room, [event], rows)  # the next event builds on this one
            extra = extras[i] if extras is not None else None
            if extra is not None:
                rows.also.append(extra)
            events.append(event)
            outcomes.append(event.event_id)
        if not events:
            return None, outcomes
        persister.update_room_row(rows, room, latest_is_sole_extremity=True)
        fut = persister.submit(room, rows, delay)
        if on_placed is not None:
            on_placed(rows.notify)
        return fut, outcomes

    async def redact(self, requester: Requester, room_id: str, event_id: str, reason: str | None,
                     txn_id: str | None) -> str:
        self.limiter.check(requester.user_id)
        room = await self.registry.get_room(room_id)
        found = await self.reads.fetch_event(event_id)
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
        return await self.send_event(requester, room_id, "m.room.redaction", content, txn_id=txn_id,
                                     rate_limit=False)
