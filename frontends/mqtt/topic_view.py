"""The MQTT page's live topic tree (`GET /_gateway/admin/v1/mqtt/topics`): each topic seen, its
last payload (as short text) and when, fed by the core's event stream like the broker's fan-out.

Nothing new is stored: retained messages are room state and messages are room history, both
already kept. This is a bounded in-memory index over them (a Pi Zero has 512 MB): at most
`MAX_TOPICS` topics, the least recently updated forgotten first, each value cut short
(messages.topic_entry; about 300 bytes a topic, ~600 KB at the cap). It is filled lazily, on the first request (an
admin opening the page), from the retained messages of the broker's rooms and the MQTT messages
of the last `SEED_POSITIONS` stream positions; from then on the stream keeps it current (and
until then the broker's hot path pays nothing for it).

Readers long-poll: `changes(since)` answers the topics updated after a sequence number, and
`wait(since, timeout)` returns as soon as there is one (so the page updates within milliseconds
of a publish and costs nothing while nothing changes).
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from matrix_core.events import Event
from matrix_core.store import mqtt_bridge as bridge_store

from .messages import topic_entry
from .routing import RETAINED_TYPE

if TYPE_CHECKING:
    from matrix_core.homeserver import Homeserver

    from .topic_rooms import TopicRooms

log = logging.getLogger("frontends.mqtt")

MAX_TOPICS = 2000
SEED_POSITIONS = 5000
SEED_ROOMS = 200


@dataclass(frozen=True, slots=True)
class TopicValue:
    topic: str
    value: str  # the payload as short text
    ts: int  # origin_server_ts of the event, ms
    room_id: str
    retained: bool
    seq: int  # this view's update counter when it was set


class TopicView:
    """The bounded topic -> last value index, kept current from the event stream."""

    def __init__(self, hs: Homeserver, topic_rooms: TopicRooms, max_topics: int = MAX_TOPICS) -> None:
        self.hs = hs
        self.topic_rooms = topic_rooms
        self.max_topics = max_topics
        self._topics: OrderedDict[str, TopicValue] = OrderedDict()  # least recently updated first
        self._seq = 0
        self.forgotten = 0  # topics dropped at the cap
        self._changed = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._seeded: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._changed.set()  # waiting readers answer now

    # -- keeping it current -------------------------------------------------------------------

    def _set(self, topic: str, value: str, ts: int, room_id: str, retained: bool) -> None:
        old = self._topics.pop(topic, None)
        if old is not None and old.ts > ts:  # a seed older than what the stream brought
            self._topics[topic] = old
            return
        self._seq += 1
        self._topics[topic] = TopicValue(topic, value, ts, room_id, retained, self._seq)
        while len(self._topics) > self.max_topics:
            self._topics.popitem(last=False)
            self.forgotten += 1
        self._changed.set()

    def _on_stream(self, entries: list[tuple[int, Event]]) -> None:
        for _, event in entries:
            etype = event.type
            if etype != "m.room.message" and etype != RETAINED_TYPE:
                continue
            found = topic_entry(etype, event.content, event.state_key)
            if found is not None:
                self._set(found[0], found[1], event.origin_server_ts, event.room_id, found[2])

    async def _seed(self) -> None:
        """The retained messages of the broker's rooms, then recent messages from history."""
        rooms = {room_id for _, room_id in self.topic_rooms.default_rooms.values() if room_id}
        rooms |= {rule.room_id for rule in self.topic_rooms.rules.rules}
        for room_id in sorted(rooms)[:SEED_ROOMS]:
            try:
                room = await self.hs.rooms.get_room(room_id)
            except Exception:  # a room gone or not joinable: nothing to show from it
                continue
            for (etype, state_key), event in list(room.state.items()):
                if etype == RETAINED_TYPE:
                    found = topic_entry(etype, event.content, state_key)
                    if found is not None and found[1]:
                        self._set(found[0], found[1], event.origin_server_ts, room_id, True)
        upto = self.hs.stream.position
        rows = await bridge_store.messages_after(self.hs.db, max(0, upto - SEED_POSITIONS), upto, SEED_POSITIONS)
        for _, event in self.hs.rooms.rows_to_events(rows):  # the stored form, read as the uplink reads it
            found = topic_entry(event.type, event.content, event.state_key)
            if found is not None:
                self._set(found[0], found[1], event.origin_server_ts, event.room_id, found[2])

    async def ready(self) -> None:
        """On the first request: follow the stream from now on (not before: a hub whose MQTT page
        is never opened pays nothing per message), then read what is already kept."""
        if self._seeded is None and self._running:
            self._unsubscribe = self.hs.stream.subscribe(self._on_stream)
            self._seeded = asyncio.ensure_future(self._seed())
        if self._seeded is None:
            return
        try:
            await asyncio.shield(self._seeded)
        except Exception:
            log.exception("MQTT topic view: reading the retained and recent messages failed")

    # -- reading ------------------------------------------------------------------------------

    def changes(self, since: int, limit: int) -> tuple[list[dict[str, Any]], int, bool]:
        """(topics updated after `since`, most recent first, at most `limit`; the position to ask
        from next; truncated: more topics than that, or some forgotten at the cap)."""
        out: list[dict[str, Any]] = []
        truncated = bool(self.forgotten) and since == 0
        for value in reversed(self._topics.values()):
            if value.seq <= since:
                break
            if len(out) >= limit:
                truncated = True
                break
            out.append({"topic": value.topic, "value": value.value, "ts": value.ts, "room_id": value.room_id,
                        "retained": value.retained})
        return out, self._seq, truncated

    async def wait(self, since: int, timeout: float) -> None:
        """Until a topic is updated after `since`, or `timeout` seconds."""
        while self._seq <= since and self._running:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                return
