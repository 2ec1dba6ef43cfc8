"""The state of one MQTT session, which outlives its network connections.

A session (clean session 0 in 3.1.1, a session expiry interval in 5.0) keeps its subscriptions,
the outgoing QoS 1/2 messages in flight or queued, and the incoming QoS 2 packet ids awaiting
PUBREL. Pure data and rules, no I/O, no clock of its own (times are passed in): the broker
decides what to persist. Every message routed to a session carries the stream position of the
room event it came from, so the session can say up to where it has handled the stream
(`cursor`): after a restart the broker replays the room history from there instead of keeping
copies of messages.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .packets import NO_PROPERTIES, Properties, Subscription

MAX_PACKET_ID = 65535


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message on its way to one subscriber (properties already final for that subscriber)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    properties: Properties = NO_PROPERTIES
    position: int = 0  # stream position of the room event (0: not from the stream)
    expires_at: float | None = None  # monotonic deadline from the message expiry interval


@dataclass(slots=True)
class InFlight:
    """An outgoing QoS 1/2 PUBLISH sent and not yet completed."""

    message: Outgoing
    packet_id: int
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP


@dataclass(slots=True)
class SessionState:
    client_id: str
    user_id: str
    protocol_level: int = 4
    expiry_interval: int = 0  # seconds after disconnect; 0xFFFFFFFF: never expires
    max_queued: int = 1000
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    subscription_ids: dict[str, int] = field(default_factory=dict)
    inflight: dict[int, InFlight] = field(default_factory=dict)  # insertion order = send order
    queue: deque[Outgoing] = field(default_factory=deque)
    incoming_qos2: set[int] = field(default_factory=set)
    seen_upto: int = 0  # every stream event at or below this was routed to the session
    dropped: int = 0  # messages dropped because the queue was full or they expired
    _next_id: int = 1

    @property
    def persistent(self) -> bool:
        return self.expiry_interval > 0

    # -- outgoing -------------------------------------------------------------------------------

    def enqueue(self, message: Outgoing) -> bool:
        """Queue a message for sending; False (and counted) when the queue is full."""
        if len(self.queue) >= self.max_queued:
            self.dropped += 1
            return False
        self.queue.append(message)
        return True

    def next_packet_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            pid = self._next_id
            self._next_id = pid + 1 if pid < MAX_PACKET_ID else 1
            if pid not in self.inflight:
                return pid
        raise RuntimeError("no free packet identifier")  # cannot happen: inflight is bounded

    def take_sendable(self, window: int, now: float) -> list[InFlight | Outgoing]:
        """Messages to send now: QoS 0 ones as Outgoing, QoS 1/2 ones as new InFlight entries,
        as long as fewer than `window` QoS 1/2 messages are in flight. Expired ones are dropped."""
        out: list[InFlight | Outgoing] = []
        queue = self.queue
        while queue:
            msg = queue[0]
            if msg.qos and len(self.inflight) >= window:
                break
            queue.popleft()
            if msg.expires_at is not None and msg.expires_at <= now:
                self.dropped += 1
                continue
            if msg.qos == 0:
                out.append(msg)
            else:
                pid = self.next_packet_id()
                entry = InFlight(msg, pid)
                self.inflight[pid] = entry
                out.append(entry)
        return out

    def puback(self, packet_id: int) -> Outgoing | None:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.message.qos != 1:
            return None
        del self.inflight[packet_id]
        return entry.message

    def pubrec(self, packet_id: int) -> bool:
        """QoS 2 step one done; True if a PUBREL should be sent."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.message.qos != 2:
            return False
        entry.released = True
        return True

    def pubcomp(self, packet_id: int) -> Outgoing | None:
        entry = self.inflight.get(packet_id)
        if entry is None or not entry.released:
            return None
        del self.inflight[packet_id]
        return entry.message

    def drop_inflight(self, packet_id: int) -> Outgoing | None:
        """A PUBREC with an error reason (MQTT 5) ends the exchange."""
        entry = self.inflight.pop(packet_id, None)
        return entry.message if entry else None

    def cursor(self) -> int:
        """Stream position up to which every QoS 1/2 message of this session is delivered."""
        low = self.seen_upto
        for entry in self.inflight.values():
            if entry.message.position and entry.message.position - 1 < low:
                low = entry.message.position - 1
        for msg in self.queue:
            if msg.qos and msg.position and msg.position - 1 < low:
                low = msg.position - 1
        return low

    def forget_qos0(self) -> None:
        """A session going offline keeps only QoS 1/2 messages (like mosquitto's default)."""
        if any(m.qos == 0 for m in self.queue):
            self.queue = deque(m for m in self.queue if m.qos)
