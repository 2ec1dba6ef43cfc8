"""One MQTT connection as a state machine, with no I/O (in the style of h11).

Bytes go in with `receive_data(data, now)` and come back as events for the broker (a CONNECT to
authenticate, a PUBLISH to store, a SUBSCRIBE to check, ...); the broker answers through methods
(`accept`, `ack_publish`, `send_suback`, `deliver`, ...) that queue bytes, collected with
`data_to_send()`. Everything the protocol alone decides is decided here: CONNECT first and once,
packet identifiers, QoS 2 handshakes in both directions, topic aliases, receive maximum, the
keepalive deadline, and which violations end the connection with which reason code. Whatever
needs the homeserver (credentials, rooms, permissions) is the broker's.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import Any, Union

from .codec import Decoder, InvalidTopicFilter, InvalidTopicName, MQTTCodecError, UnsupportedProtocolVersion, encode
from .constants import MQTT_3_1_1, MQTT_5, ReasonCode, connack_return_code_v311
from .packets import (
    NO_PROPERTIES,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from .session import InFlight, Outgoing, SessionState


@dataclass(frozen=True, slots=True)
class Limits:
    """What the broker allows one connection (advertised to MQTT 5 clients in CONNACK)."""

    max_packet_size: int = 65536
    receive_maximum: int = 256  # incoming QoS 1/2 publishes not yet acknowledged
    max_inflight: int = 20  # outgoing QoS 1/2 publishes not yet acknowledged
    topic_alias_maximum: int = 64
    max_queued: int = 1000
    max_keepalive: int = 65535  # a longer (or no) keepalive is cut to this (MQTT 5 Server Keep Alive)


class State(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    AUTHENTICATING = "authenticating"  # CONNECT received, the broker is checking it
    CONNECTED = "connected"
    CLOSED = "closed"


# -- events for the broker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    packet: Connect


@dataclass(frozen=True, slots=True)
class PublishReceived:
    """A new application message (topic alias resolved, never a QoS 2 retransmission). For QoS
    1/2 the broker must call `ack_publish` once the message is durable."""

    packet: Publish


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    packet: Subscribe


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    packet: Unsubscribe


@dataclass(frozen=True, slots=True)
class Delivered:
    """An outgoing QoS 1/2 message was acknowledged by the client (QoS 0: written)."""

    message: Outgoing


@dataclass(frozen=True, slots=True)
class Qos2Released:
    """PUBREL for an incoming QoS 2 message: its packet id may be reused. For a persistent
    session the broker calls `complete_qos2` once the id's removal is durable: PUBCOMP lets the
    client reuse the id, and an id still on disk after a crash would swallow its next message."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    packet: Disconnect


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The connection is over: a DISCONNECT with `reason_code` was queued (MQTT 5 only)."""

    reason_code: int
    message: str


Event = Union[ConnectReceived, PublishReceived, SubscribeReceived, UnsubscribeReceived, Delivered,
              Qos2Released, DisconnectReceived, ProtocolViolation]

_PUBACK_V311 = struct.Struct(">BBH")


class Connection:
    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.state = State.AWAIT_CONNECT
        self.level: int | None = None
        self.decoder = Decoder(max_packet_size=limits.max_packet_size)
        self.session: SessionState | None = None
        self.connect: Connect | None = None
        self.keepalive = 0
        self.opened = now  # a CONNECT is due within the broker's connect timeout from here
        self.last_received = now
        self._out = bytearray()
        self._stash: list[Any] = []  # packets that arrived behind CONNECT, before the answer
        self._aliases: dict[int, str] = {}
        self._pending_in: dict[int, int] = {}  # incoming packet id -> qos, not yet acknowledged
        self._releasing: set[int] = set()  # PUBREL in, PUBCOMP waiting for the broker (persistent)
        self.send_window = limits.max_inflight
        self.client_max_packet = 0  # 0: no limit from the client
        self.request_problem_info = True
        self._bad_filters: dict[int, tuple[int, ...]] = {}
        self.write_blocked = False  # the transport's buffer is full: queue, do not encode more
        self._out_alias_max = 0  # the client's Topic Alias Maximum: aliases we may use towards it
        self._out_aliases: dict[str, int] = {}

    # -- bytes in and out -----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _send(self, packet: Any) -> None:
        self._out += encode(packet, self.level)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self.last_received = now
        events: list[Event] = []
        while True:
            try:
                packets = self.decoder.feed(data)
            except (InvalidTopicName, InvalidTopicFilter) as exc:
                for pkt in exc.decoded:
                    self._handle(pkt, events, now)
                    if self.state is State.CLOSED:
                        return events
                self._handle_bad_topic(exc, events)
                if self.state is State.CLOSED:
                    return events
                data = b""
                continue
            except UnsupportedProtocolVersion as exc:
                # CONNACK 0x01 in the 3.1.1 form, which every client version can read, then close.
                if exc.protocol_name in ("MQTT", "MQIsdp"):
                    self._out += b"\x20\x02\x00\x01"
                return self._fail(exc.reason_code, exc.message, events, send_disconnect=False)
            except MQTTCodecError as exc:
                for pkt in exc.decoded:
                    self._handle(pkt, events, now)
                    if self.state is State.CLOSED:
                        return events
                return self._fail(exc.reason_code, exc.message or str(exc), events)
            for pkt in packets:
                self._handle(pkt, events, now)
                if self.state is State.CLOSED:
                    break
            return events

    # -- incoming packets -----------------------------------------------------------------------

    def _handle(self, pkt: Any, events: list[Event], now: float) -> None:
        kind = type(pkt)
        if self.state is State.AUTHENTICATING:
            self._stash.append(pkt)
            return
        if kind is Connect:
            if self.state is not State.AWAIT_CONNECT:
                self._fail(ReasonCode.PROTOCOL_ERROR, "second CONNECT", events)
                return
            self._on_connect(pkt, events)
            return
        if self.state is not State.CONNECTED:
            self._fail(ReasonCode.PROTOCOL_ERROR, "packet before CONNECT", events)
            return
        if kind is Publish:
            self._on_publish(pkt, events)
        elif kind is PubAck:
            assert self.session is not None
            msg = self.session.puback(pkt.packet_id)
            if msg is not None:
                events.append(Delivered(msg))
                self.flush(now)
        elif kind is PubRec:
            assert self.session is not None
            if pkt.reason_code >= 0x80:
                msg = self.session.drop_inflight(pkt.packet_id)
                if msg is not None:
                    events.append(Delivered(msg))
                    self.flush(now)
            elif self.session.pubrec(pkt.packet_id):
                self._send(PubRel(pkt.packet_id))
            else:
                self._send(PubRel(pkt.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.level == MQTT_5 else 0))
        elif kind is PubComp:
            assert self.session is not None
            msg = self.session.pubcomp(pkt.packet_id)
            if msg is not None:
                events.append(Delivered(msg))
                self.flush(now)
        elif kind is PubRel:
            assert self.session is not None
            pid = pkt.packet_id
            if pid in self._releasing:
                return  # a repeated PUBREL: its PUBCOMP follows
            if pid in self.session.incoming_qos2:
                self.session.incoming_qos2.discard(pid)
                self._pending_in.pop(pid, None)
                if self.session.persistent:
                    self._releasing.add(pid)
                else:
                    self._send(PubComp(pid))
                events.append(Qos2Released(pid))
            else:
                self._send(PubComp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.level == MQTT_5 else 0))
        elif kind is Subscribe:
            events.append(SubscribeReceived(pkt))
        elif kind is Unsubscribe:
            events.append(UnsubscribeReceived(pkt))
        elif kind is PingReq:
            self._out += b"\xd0\x00"
        elif kind is Disconnect:
            self._on_disconnect(pkt, events)
        else:  # CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH: not for a server
            self._fail(ReasonCode.PROTOCOL_ERROR, f"unexpected {kind.__name__} from a client", events)

    def _on_connect(self, pkt: Connect, events: list[Event]) -> None:
        self.level = pkt.protocol_level
        self.connect = pkt
        self.keepalive = pkt.keepalive
        props = pkt.properties
        if props:
            self.send_window = min(self.limits.max_inflight, props.get("receive_maximum", 65535))
            self.client_max_packet = props.get("maximum_packet_size", 0)
            self.request_problem_info = bool(props.get("request_problem_information", 1))
            self._out_alias_max = props.get("topic_alias_maximum", 0)
            if "authentication_method" in props:
                # Enhanced authentication is not offered: refuse clearly (MQTT 5 3.1.2.11.9).
                self._send(ConnAck(reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD))
                self._close()
                events.append(ProtocolViolation(ReasonCode.BAD_AUTHENTICATION_METHOD, "AUTH not supported"))
                return
        self.state = State.AUTHENTICATING
        events.append(ConnectReceived(pkt))

    def _on_publish(self, pkt: Publish, events: list[Event]) -> None:
        props = pkt.properties
        if props and "topic_alias" in props:
            alias = props["topic_alias"]
            if alias > self.limits.topic_alias_maximum or self.level != MQTT_5:
                self._fail(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range", events)
                return
            topic = pkt.topic
            if topic:
                self._aliases[alias] = topic
            else:
                topic = self._aliases.get(alias, "")
                if not topic:
                    self._fail(ReasonCode.PROTOCOL_ERROR, f"unknown topic alias {alias}", events)
                    return
            rest = {k: v for k, v in props.items() if k != "topic_alias"}
            pkt = replace(pkt, topic=topic, properties=rest or NO_PROPERTIES)
        qos = pkt.qos
        if qos:
            pid = pkt.packet_id
            assert pid is not None and self.session is not None
            if qos == 2 and pid in self.session.incoming_qos2:
                if pid not in self._pending_in:
                    self._send(PubRec(pid))  # a retransmission of a stored message
                return
            if pid in self._pending_in:
                if self._pending_in[pid] == 2 or pkt.dup:
                    return  # still being stored; its acknowledgement follows
            elif (self.level == MQTT_5 and len(self._pending_in) + len(self.session.incoming_qos2)
                  >= self.limits.receive_maximum):
                self._fail(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded", events)
                return
            self._pending_in[pid] = qos
        events.append(PublishReceived(pkt))

    def _on_disconnect(self, pkt: Disconnect, events: list[Event]) -> None:
        expiry = pkt.properties.get("session_expiry_interval") if pkt.properties else None
        if expiry is not None and self.session is not None:
            if self.session.expiry_interval == 0 and expiry != 0:
                self._fail(ReasonCode.PROTOCOL_ERROR, "session expiry set after a 0 interval", events)
                return
            self.session.expiry_interval = expiry
        self._close()
        events.append(DisconnectReceived(pkt))

    def _handle_bad_topic(self, exc: MQTTCodecError, events: list[Event]) -> None:
        pkt = exc.packet
        if type(pkt) is Subscribe and self.state is State.CONNECTED:
            bad = set(getattr(exc, "invalid", ()))
            if self.level == MQTT_5:
                codes = tuple(0x8F if i in bad else -1 for i in range(len(pkt.subscriptions)))
                events.append(SubscribeReceived(pkt))
                self._bad_filters[pkt.packet_id] = codes
                return
        elif type(pkt) is Unsubscribe and self.state is State.CONNECTED and self.level == MQTT_5:
            events.append(UnsubscribeReceived(pkt))
            return
        self._fail(exc.reason_code, exc.message or str(exc), events)

    def invalid_filters(self, packet_id: int) -> tuple[int, ...]:
        """For a SUBSCRIBE with bad filters (MQTT 5): 0x8F at their index, -1 elsewhere."""
        return self._bad_filters.pop(packet_id, ())

    # -- the broker's answers -------------------------------------------------------------------

    def accept(self, session: SessionState, session_present: bool, now: float,
               properties: dict[str, Any] | None = None) -> list[Event]:
        """CONNACK success; resend what the session had in flight; handle packets that arrived
        behind the CONNECT. Returns the events those packets produce."""
        assert self.state is State.AUTHENTICATING
        self.session = session
        self.state = State.CONNECTED
        props: dict[str, Any] = {}
        if self.level == MQTT_5:
            props = {
                "receive_maximum": self.limits.receive_maximum,
                "maximum_packet_size": self.limits.max_packet_size,
                "topic_alias_maximum": self.limits.topic_alias_maximum,
            }
            if self.limits.max_keepalive < 65535 and (self.keepalive == 0 or self.keepalive > self.limits.max_keepalive):
                self.keepalive = self.limits.max_keepalive
                props["server_keep_alive"] = self.keepalive
            props.update(properties or {})
        self._send(ConnAck(session_present, 0, props or NO_PROPERTIES))
        for entry in list(session.inflight.values()):
            if entry.released:
                self._send(PubRel(entry.packet_id))
            else:
                self._send_publish(entry.message, entry.packet_id, dup=True)
        events: list[Event] = []
        self.flush(now, events)
        stash, self._stash = self._stash, []
        for pkt in stash:
            self._handle(pkt, events, now)
            if self.state is State.CLOSED:
                break
        return events

    def refuse(self, reason_code: int) -> None:
        """CONNACK failure (an MQTT 5 reason code; mapped for 3.1.1), then closed. Nothing if the
        connection closed meanwhile (the client hung up while its credentials were checked)."""
        if self.state is not State.AUTHENTICATING:
            return
        code = reason_code if self.level == MQTT_5 else connack_return_code_v311(reason_code)
        self._send(ConnAck(False, code))
        self._close()

    def ack_publish(self, packet_id: int, qos: int, reason_code: int = 0, close_v311: bool = False) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2), sent once the message is durable (or refused).

        3.1.1 has no negative acknowledgement: a refused message is acknowledged and dropped, as
        mosquitto does (closing instead makes paho resend it at every reconnect: a loop), unless
        `close_v311` (the disk is full: the client's resend is wanted once there is room)."""
        if self.state is not State.CONNECTED:
            return
        if self.level == MQTT_3_1_1 and reason_code:
            if close_v311:
                self._fail(reason_code, "publish refused", [])
                return
            self._pending_in.pop(packet_id, None)  # QoS 2: not kept, its PUBREL gets a PUBCOMP all the same
            self._out += _PUBACK_V311.pack(0x40 if qos == 1 else 0x50, 2, packet_id)
            return
        if qos == 1:
            self._pending_in.pop(packet_id, None)
            if self.level == MQTT_3_1_1 or not reason_code:
                self._out += _PUBACK_V311.pack(0x40, 2, packet_id)
            else:
                self._send(PubAck(packet_id, reason_code))
        else:
            assert self.session is not None
            if reason_code:
                self._pending_in.pop(packet_id, None)
                self._send(PubRec(packet_id, reason_code))
            else:
                self.session.incoming_qos2.add(packet_id)
                self._pending_in.pop(packet_id, None)
                self._out += _PUBACK_V311.pack(0x50, 2, packet_id)

    def complete_qos2(self, packet_id: int) -> None:
        """PUBCOMP for a persistent session's PUBREL, once the packet id's removal is durable."""
        if packet_id in self._releasing:
            self._releasing.discard(packet_id)
            if self.state is State.CONNECTED:
                self._send(PubComp(packet_id))

    def send_suback(self, packet_id: int, codes: list[int], reason: str = "") -> None:
        """SUBACK; in 5.0 *reason* goes out as the reason string (if the client wants them)."""
        if self.state is State.CONNECTED:
            props = {"reason_string": reason[:200]} if self.level == MQTT_5 and reason and self.request_problem_info else NO_PROPERTIES
            self._send(SubAck(packet_id, tuple(codes), props))

    def send_unsuback(self, packet_id: int, codes: list[int]) -> None:
        if self.state is State.CONNECTED:
            self._send(UnsubAck(packet_id, tuple(codes) if self.level == MQTT_5 else ()))

    def deliver(self, message: Outgoing, now: float, events: list[Event] | None = None) -> bool:
        """Queue a message for this client and send what the in-flight window allows."""
        assert self.session is not None
        if not self.session.enqueue(message):
            return False
        self.flush(now, events)
        return True

    def flush(self, now: float, events: list[Event] | None = None) -> None:
        if self.state is not State.CONNECTED or self.session is None or self.write_blocked:
            return
        for item in self.session.take_sendable(self.send_window, now):
            if isinstance(item, InFlight):
                self._send_publish(item.message, item.packet_id, dup=False, now=now)
            else:
                self._send_publish(item, None, dup=False, now=now)
                if events is not None and item.position:
                    events.append(Delivered(item))

    def _send_publish(self, msg: Outgoing, packet_id: int | None, dup: bool, now: float | None = None) -> None:
        props = msg.properties
        if msg.expires_at is not None and now is not None and self.level == MQTT_5:
            props = dict(props)
            props["message_expiry_interval"] = max(0, int(msg.expires_at - now))
        topic = msg.topic
        if self.level != MQTT_5:
            props = NO_PROPERTIES
        elif self._out_alias_max:
            alias = self._out_aliases.get(topic)
            if alias is not None:
                topic = ""
            elif len(self._out_aliases) < self._out_alias_max:
                alias = self._out_aliases[topic] = len(self._out_aliases) + 1
            if alias is not None:
                props = dict(props)
                props["topic_alias"] = alias
        data = encode(Publish(topic, msg.payload, msg.qos, msg.retain, dup, packet_id, props), self.level)
        if self.client_max_packet and len(data) > self.client_max_packet:
            # The client cannot take it (MQTT 5 3.1.2.11.4): discard as if delivered.
            if packet_id is not None and self.session is not None:
                self.session.inflight.pop(packet_id, None)
            return
        self._out += data

    def close(self, reason_code: int = ReasonCode.NORMAL_DISCONNECTION) -> None:
        """Server-side disconnect: a DISCONNECT with the reason (MQTT 5 only), then closed."""
        if self.state is State.CONNECTED and self.level == MQTT_5:
            self._send(Disconnect(reason_code))
        self._close()

    # -- timing ---------------------------------------------------------------------------------

    def keepalive_expired(self, now: float) -> bool:
        """1.5 times the keepalive without any packet (MQTT 3.1.2.10 / 5 3.1.2.10)."""
        if self.keepalive == 0 or self.state is State.CLOSED:
            return False
        return now - self.last_received > 1.5 * self.keepalive

    def connect_overdue(self, now: float, timeout: float) -> bool:
        """No CONNECT *timeout* seconds after the connection opened (partial bytes do not count:
        a slow drip must not hold a socket open)."""
        return self.state is State.AWAIT_CONNECT and now - self.opened > timeout

    def excuse(self, seconds: float, now: float) -> None:
        """*seconds* of silence were the server's own (its event loop stalled, the client's
        packets waited unread in the socket buffer): they do not count against the client."""
        self.last_received = min(now, self.last_received + seconds)
        self.opened = min(now, self.opened + seconds)

    @property
    def pending_incoming(self) -> int:
        return len(self._pending_in)

    # -- failure --------------------------------------------------------------------------------

    def _fail(self, reason_code: int, message: str, events: list[Event], send_disconnect: bool = True) -> list[Event]:
        if send_disconnect and self.state is State.CONNECTED and self.level == MQTT_5:
            props = {"reason_string": message[:200]} if self.request_problem_info and message else NO_PROPERTIES
            try:
                self._send(Disconnect(reason_code, props))
            except ValueError:
                self._send(Disconnect(ReasonCode.PROTOCOL_ERROR))
        self._close()
        events.append(ProtocolViolation(reason_code, message))
        return events

    def _close(self) -> None:
        self.state = State.CLOSED
        self._stash = []
