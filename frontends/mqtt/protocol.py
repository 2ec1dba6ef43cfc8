"""One MQTT connection: bytes in, the sans-I/O `Connection` state machine, bytes out.

`ClientProtocol` is the asyncio edge of one TCP, TLS or WebSocket connection (websocket.py hands
it a stand-in transport). It owns what is per connection: the CONNECT handshake's outcome, the
publish pipeline (publishes read together go to the core as one write; acknowledgements leave in
order once committed), backpressure, QoS 2 completion, SUBSCRIBE/UNSUBSCRIBE. What is shared by
all connections (sessions, rooms, fan-out, wills, timers) it asks of its `MqttBroker`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from matrix_core import errors
from matrix_core.service.accounts import Requester
from matrix_core.store.database import WriteFn

from . import persistence
from .connection import (
    ConnectReceived,
    Connection,
    Delivered,
    DisconnectReceived,
    ProtocolViolation,
    PublishReceived,
    Qos2Released,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
)
from .constants import MQTT_5, SUBACK_V311_FAILURE, ReasonCode
from .packets import Connect, Publish, Subscription
from .refusals import ERROR_REASONS, PublishRefused, log_refusal
from .session import SessionState

if TYPE_CHECKING:
    from .broker import MqttBroker

log = logging.getLogger("frontends.mqtt")

# Publishes started per pass of the event loop before the rest of a read waits for the next pass.
PUBLISHES_PER_PASS = 50


class ClientProtocol(asyncio.Protocol):
    """One TCP (or TLS) connection: bytes to the Connection state machine and back."""

    def __init__(self, broker: "MqttBroker") -> None:
        self.broker = broker
        self.conn = Connection(broker.settings.limits, time.monotonic())
        self.transport: asyncio.Transport | None = None
        self.requester: Requester | None = None
        self.key: str | None = None
        self.client_id = ""
        self.peer = ""
        # (packet id, QoS, its future, topic): acknowledged in order; the topic names a refusal in the log
        self._acks: deque[tuple[int, int, asyncio.Future[Any] | None, str]] = deque()
        self._waiting: deque[Publish] = deque()
        self._feeder: asyncio.Future[Any] | None = None
        self._paused = False
        self._write_paused = False
        self._closed = False
        self._will_done = False
        self._flush_soon = False
        self._backlog: deque[Any] = deque()  # events of a big read not handled yet (_handle)
        self._backlog_scheduled = False
        # Publishes of one socket read to one room, started together (see _start_batch):
        # (event type, content, state key, publish).
        self._batch: list[tuple[str, dict[str, Any], str | None, Publish]] = []
        self._batch_room: str | None = None

    # -- transport callbacks --------------------------------------------------------------------

    _counted = False  # counted in broker.per_address (not refused at once)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        broker = self.broker
        cap = broker.settings.max_connections_per_address
        open_now = broker.per_address.get(self.peer, 0)
        if cap and open_now >= cap:
            broker.quiet.log(log, logging.WARNING, "per-address-cap", "MQTT connection from %s refused: %d open from that address "
                                      "(mqtt_max_connections_per_address)", self.peer, open_now)
            self.conn.close()
            self._closed = True
            transport.close()
            return
        broker.per_address[self.peer] = open_now + 1
        self._counted = True
        broker.clients.add(self)

    def data_received(self, data: bytes) -> None:
        events = self.conn.receive_data(data, time.monotonic())
        if events:
            if self._backlog:  # still working through an earlier read: these go after it
                self._backlog.extend(events)
                self._check_pressure()
            else:
                self._handle(events)
        self.flush_out()

    def _schedule_backlog(self) -> None:
        if self._backlog and not self._backlog_scheduled:
            self._backlog_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume_backlog)

    def _resume_backlog(self) -> None:
        """The next slice of a big read, unless as many publishes as a client may have in flight
        are still being stored: parsed packets wait (small), events are built only as the
        writer keeps up (each is kilobytes until committed). _on_stored resumes it."""
        self._backlog_scheduled = False
        if len(self._acks) >= self.broker.settings.limits.receive_maximum:
            self._held_back()
            return
        events = list(self._backlog)
        self._backlog.clear()
        self._handle(events)
        self._check_pressure()
        self.flush_out()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._counted:
            return  # refused in connection_made: nothing else was set up
        self._counted = False
        per_address = self.broker.per_address
        left = per_address.get(self.peer, 1) - 1
        if left > 0:
            per_address[self.peer] = left
        else:
            per_address.pop(self.peer, None)
        self.broker.clients.discard(self)
        if self.conn.state is not State.CLOSED:
            self.conn.close()
            self._lost(publish_will=True)
        else:
            self._lost(publish_will=not self._will_done)

    def pause_writing(self) -> None:
        """A slow consumer: its messages wait in the (bounded) session queue meanwhile."""
        self._write_paused = True
        self.conn.write_blocked = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.conn.write_blocked = False
        self.conn.flush(time.monotonic())
        self.flush_out()

    # -- helpers --------------------------------------------------------------------------------

    def flush_out(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)
        if self.conn.state is State.CLOSED and self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def close(self, reason_code: int, publish_will: bool) -> None:
        """Server-side close (takeover, keepalive, shutdown)."""
        if self.conn.state is State.CLOSED:
            return
        self.conn.close(reason_code)
        self._will_done = not publish_will
        self._lost(publish_will)
        self.flush_out()

    _lost_done = False

    def _lost(self, publish_will: bool) -> None:
        if self._lost_done:
            return
        self._lost_done = True
        self._will_done = True
        if publish_will:
            self.broker.schedule_will(self)
        self.broker.session_closed(self)

    async def drain_publishes(self) -> None:
        if self._feeder is not None and not self._feeder.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._feeder), 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        pending = [fut for _, _, fut, _ in self._acks if fut is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- events from the state machine ----------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        started = 0
        for index, event in enumerate(events):
            kind = type(event)
            if kind is PublishReceived:
                self._on_publish(event.packet)
                started += 1
                if started == PUBLISHES_PER_PASS and index + 1 < len(events):
                    # A big read is worked through in slices, one per pass of the event loop:
                    # the first slice's COMMIT and PUBACKs go out while the next is signed, so
                    # the client refills its window instead of waiting for the whole read.
                    self._start_batch()
                    self._backlog.extend(events[index + 1:])
                    self._schedule_backlog()
                    return
                continue
            self._start_batch()  # whatever came before this event is under way first
            if kind is Delivered:
                pass
            elif kind is ConnectReceived:
                self.client_id = event.packet.client_id
                self.broker.background(self._on_connect(event.packet))
            elif kind is SubscribeReceived:
                self.broker.background(self._on_subscribe(event.packet))
            elif kind is UnsubscribeReceived:
                self._on_unsubscribe(event.packet)
            elif kind is Qos2Released:
                self._qos2_released(event.packet_id)
            elif kind is DisconnectReceived:
                reason = event.packet.reason_code
                self._will_done = reason != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
                self._lost(publish_will=not self._will_done)
            elif kind is ProtocolViolation:
                log.info("MQTT client %r (%s) disconnected: 0x%02X %s", self.client_id, self.peer,
                         event.reason_code, event.message)
                self._lost(publish_will=True)
        self._start_batch()

    async def _on_connect(self, connect: Connect) -> None:
        broker = self.broker
        try:
            if not connect.client_id:
                if not connect.clean_start and connect.protocol_level != MQTT_5:
                    self.conn.refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
                    return
                assigned = "auto-" + secrets.token_hex(8)
                connect = Connect(assigned, connect.clean_start, connect.keepalive, connect.username,
                                  connect.password, connect.will, connect.protocol_level, connect.properties)
                self.conn.connect = connect
                self.client_id = assigned
            else:
                assigned = None
            result = await broker.authenticate(connect, self.peer)
            if isinstance(result, int):
                log.info("MQTT CONNECT refused for %r from %s: 0x%02X", connect.username, self.peer, result)
                self.conn.refuse(result)
                return
            if connect.will is not None and connect.will.topic.startswith("$"):
                self.conn.refuse(ReasonCode.NOT_AUTHORIZED)
                return
            self.requester = result
            if self._closed:
                return
            if connect.protocol_level != MQTT_5 and broker.held_back.holds(
                    (result.user_id, connect.client_id), time.monotonic(), broker.hs.db.storage.full):
                self.conn.refuse(ReasonCode.SERVER_UNAVAILABLE)  # 3.1.1: 0x03, until the disk has room
                return
            opened = await broker.open_session(self, result, connect)
            if isinstance(opened, int):
                broker.quiet.log(log, logging.INFO, "session-quota", "MQTT CONNECT of %r by %s refused: 0x%02X, over "
                                          "mqtt_max_sessions_per_account persistent sessions", connect.client_id,
                                          result.user_id, opened)
                self.conn.refuse(opened)
                return
            session, present, key = opened
            self.key = key
            if self._closed or self.conn.state is not State.AUTHENTICATING:
                broker.session_closed(self)
                return
            props: dict[str, Any] = {}
            if assigned is not None and connect.protocol_level == MQTT_5:
                props["assigned_client_identifier"] = assigned
            events = self.conn.accept(session, present, time.monotonic(), props)
            if events:
                self._handle(events)
        except errors.StorageFull:  # its session could not be saved; the store logs the full disk
            if self.conn.state is State.AUTHENTICATING:
                self.conn.refuse(ReasonCode.QUOTA_EXCEEDED)  # 3.1.1: 0x03 Server unavailable
        except Exception:
            log.exception("MQTT CONNECT handling failed")
            if self.conn.state is State.AUTHENTICATING:
                self.conn.refuse(ReasonCode.SERVER_UNAVAILABLE)
        finally:
            self.flush_out()

    # -- publish pipeline -----------------------------------------------------------------------

    def _on_publish(self, publish: Publish) -> None:
        """Start storing in arrival order. The build/sign step runs at once when the room is
        known (so many publishes share one group commit); acknowledgements go out in order."""
        if self._waiting or not self._try_start(publish):
            self._start_batch()
            self._waiting.append(publish)
            if self._feeder is None or self._feeder.done():
                self._feeder = self.broker.background(self._feed())
        self._check_pressure()

    def _try_start(self, publish: Publish) -> bool:
        """Start one publish synchronously if nothing needs awaiting first."""
        broker = self.broker
        topic = publish.topic
        if topic.startswith("$"):
            self._refused(publish, ReasonCode.NOT_AUTHORIZED, "topics starting with $ are reserved")
            return True
        room_id = broker.rules.resolve(topic)
        if room_id is None or room_id not in broker.ready_rooms:
            return False
        if broker.needs_media(publish):  # the bytes go to the media repository first: awaited
            return False
        assert self.requester is not None
        try:
            broker.hs.rooms.check_send_rate(self.requester.user_id)
        except errors.MatrixError:
            return False
        self._start(publish, room_id)
        return True

    def _qos2_record(self, publish: Publish) -> "WriteFn | None":
        """For a QoS 2 publish of a persistent session, the write of its packet id, committed
        in the same transaction as its event: after a crash the DUP resend is recognised
        (PUBREC, not stored again), and an id is never kept for a message that was not stored."""
        key = self.key
        if publish.qos != 2 or not key:
            return None
        session = self.broker.sessions.get(key)
        if session is None or not session.persistent:
            return None
        packet_id = publish.packet_id or 0
        return persistence.add_incoming_qos2(key, packet_id)

    def _start(self, publish: Publish, room_id: str,
               prepared: tuple[str, dict[str, Any], str | None] | None = None) -> None:
        """`prepared`: the event a publish kept in the media repository becomes (`_feed`)."""
        assert self.requester is not None
        try:
            event_type, content, state_key = prepared or self.broker.prepare(self.requester, publish, room_id)
        except PublishRefused as exc:
            self._refused(publish, exc.reason_code, str(exc))
            return
        if self._batch_room != room_id:
            self._start_batch()
            self._batch_room = room_id
        self._batch.append((event_type, content, state_key, publish))

    def _start_batch(self) -> None:
        """Send the gathered publishes as one write; their acknowledgements stay in order."""
        if not self._batch:
            return
        items, room_id = self._batch, self._batch_room
        self._batch, self._batch_room = [], None
        assert self.requester is not None and room_id is not None
        broker = self.broker
        top_qos = max(item[3].qos for item in items)
        delay = broker.settings.qos0_commit_delay if top_qos == 0 and not self._would_wait_on(len(items)) else 0.0
        # Delivered before the commit only if no QoS 1/2 publish of this client is still being
        # stored: its subscribers get this client's messages in the order it sent them.
        early = delay > 0 and not any(qos for _, qos, _, _ in self._acks)
        extras = [self._qos2_record(item[3]) for item in items] if top_qos == 2 else None
        futures = broker.send_batch_nowait(self.requester, room_id, items, self.key, delay, early, extras)
        if futures is None:  # the room left memory meanwhile: one at a time, the awaiting way
            futures = [broker.background(broker.send(self.requester, room_id, event_type, content, state_key,
                                                     publish, self.key, self._qos2_record(publish)))
                       for event_type, content, state_key, publish in items]
        for item, fut in zip(items, futures):
            publish = item[3]
            self._acks.append((publish.packet_id or 0, publish.qos, fut, publish.topic))
        for fut in dict.fromkeys(futures):
            fut.add_done_callback(self._on_stored)

    def _refused(self, publish: Publish, reason_code: int, message: str = "refused") -> None:
        self._start_batch()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_exception(PublishRefused(reason_code, message))
        self._acks.append((publish.packet_id or 0, publish.qos, done, publish.topic))
        self._on_stored(done)

    def _refused_for_space(self, publish: Publish) -> None:
        self._start_batch()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_exception(errors.storage_full(self.broker.hs.db.admin_contact))
        self._acks.append((publish.packet_id or 0, publish.qos, done, publish.topic))
        self._on_stored(done)

    async def _feed(self) -> None:
        """The slow path: room creation, room loading or rate limiting, still in order."""
        broker = self.broker
        assert self.requester is not None
        while self._waiting:
            publish = self._waiting[0]
            try:
                room_id = await broker.room_for_topic(self.requester, publish.topic)
                await broker.hs.rooms.get_room(room_id)
                broker.ready_rooms.add(room_id)
                await broker.wait_rate(self.requester.user_id)
                prepared = await broker.prepare_media(self.requester, publish) if broker.needs_media(publish) else None
            except PublishRefused as exc:
                self._waiting.popleft()
                self._refused(publish, exc.reason_code, str(exc))
                continue
            except errors.MatrixError as exc:
                self._waiting.popleft()
                if isinstance(exc, errors.StorageFull):  # its room could not be made: as if its write failed
                    self._refused_for_space(publish)
                    continue
                self._refused(publish, ERROR_REASONS.get(exc.errcode, ReasonCode.UNSPECIFIED_ERROR), str(exc))
                continue
            self._start(publish, room_id, prepared)
            self._start_batch()
            self._waiting.popleft()
            self._check_pressure()

    def _on_stored(self, _: Any) -> None:
        acks = self._acks
        conn = self.conn
        while acks and acks[0][2] is not None and acks[0][2].done():
            packet_id, qos, fut, topic = acks.popleft()
            exc = fut.exception() if fut is not None else None
            if exc is None:
                if qos:
                    conn.ack_publish(packet_id, qos)
                continue
            if isinstance(exc, PublishRefused):
                reason = exc.reason_code
            elif isinstance(exc, errors.MatrixError):
                reason = ERROR_REASONS.get(exc.errcode, ReasonCode.UNSPECIFIED_ERROR)
            else:
                log.error("MQTT publish failed: %r", exc)
                reason = ReasonCode.UNSPECIFIED_ERROR
            full = isinstance(exc, errors.StorageFull)  # counted and logged once a minute by the store
            if not full:  # a full disk is counted and logged once a minute by the store
                log_refusal(self.broker.refusal_log, self.requester.user_id if self.requester else "?",
                            self.client_id, topic, qos, reason, exc)
            if full and qos and conn.level != MQTT_5 and conn.state is State.CONNECTED and self.requester:
                self.broker.held_back.refused((self.requester.user_id, self.client_id), time.monotonic())
            if qos:
                # 3.1.1 has no negative acknowledgement: a refused message is acknowledged and dropped
                # (as mosquitto does; closing would make the client resend it forever), except when
                # the disk is full: closed, and the client's resend is stored once there is room.
                conn.ack_publish(packet_id, qos, reason, close_v311=full)
                if conn.state is State.CLOSED:
                    self._lost(publish_will=True)
        self._check_pressure()
        if self._backlog and len(acks) < self.broker.settings.limits.receive_maximum // 2:
            self._schedule_backlog()
        if not self._flush_soon:  # one write for all acknowledgements of a group commit
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon = False
        self.flush_out()

    def _check_pressure(self) -> None:
        """Stop reading a client whose publishes pile up (3.1.1 has no receive maximum)."""
        if self.transport is None or self._closed:
            return
        backlog = len(self._acks) + len(self._waiting) + len(self._backlog)
        limit = self.broker.settings.limits.receive_maximum
        if not self._paused and backlog >= limit:
            self._paused = True
            self.transport.pause_reading()
            self._held_back()
        elif self._paused and backlog < limit // 2:
            self._paused = False
            self.transport.resume_reading()

    def _would_wait_on(self, adding: int) -> bool:
        """Is (or, with `adding` more publishes pending, will) this client be held back until its
        publishes are stored? Then its QoS 0 writes must not wait to share a commit: a write
        handed over after `_held_back` asked for a commit (the last batch of a read, publishes
        that waited for the message rate) would otherwise hold the client for the whole delay."""
        return self._paused or len(self._acks) + adding >= self.broker.settings.limits.receive_maximum

    def _held_back(self) -> None:
        """This client waits for its publishes to be stored: QoS 0 ones waiting to share a
        commit must not hold it back (a flood would crawl at receive_maximum per delay)."""
        if self.broker.settings.qos0_commit_delay:
            self.broker.hs.db.commit_soon()

    def _qos2_released(self, packet_id: int) -> None:
        """A persistent session's released packet id leaves the disk before PUBCOMP goes out
        (the Connection holds PUBCOMP back for those)."""
        key = self.key
        session = self.broker.sessions.get(key) if key else None
        if key is not None and session is not None and session.persistent:
            removed = self.broker.background(self.broker.hs.db.write(
                persistence.remove_incoming_qos2(key, packet_id)))

            def complete(_: Any) -> None:
                self.conn.complete_qos2(packet_id)
                self.flush_out()

            removed.add_done_callback(complete)
        else:
            self.conn.complete_qos2(packet_id)  # nothing held back; harmless either way

    # -- subscribe ------------------------------------------------------------------------------

    async def _on_subscribe(self, packet: Any) -> None:
        broker = self.broker
        key = self.key
        session = broker.sessions.get(key) if key else None
        if session is None or key is None:
            return
        invalid = self.conn.invalid_filters(packet.packet_id)
        sid = packet.properties.get("subscription_identifier", [None])[0] if packet.properties else None
        codes: list[int] = []
        new_subs: list[tuple[Subscription, bool]] = []
        reason = ""
        before = dict(session.subscriptions), dict(session.subscription_ids)
        for i, sub in enumerate(packet.subscriptions):
            if invalid and invalid[i] >= 0:
                codes.append(invalid[i])
                continue
            if broker.deny and broker.deny.refuses(sub.topic_filter):
                log.info("MQTT client %r: subscription to %r refused by mqtt_deny_subscribe", self.client_id,
                         sub.topic_filter)
                codes.append(ReasonCode.NOT_AUTHORIZED if self.conn.level == MQTT_5 else SUBACK_V311_FAILURE)
                reason = "subscription refused by the broker's mqtt_deny_subscribe rules"
                continue
            existed = sub.topic_filter in session.subscriptions
            if existed:
                broker.index.remove(key, sub.topic_filter)
            session.subscriptions[sub.topic_filter] = sub
            if sid:
                session.subscription_ids[sub.topic_filter] = sid
            else:
                session.subscription_ids.pop(sub.topic_filter, None)
            broker.index.add(key, sub)
            codes.append(sub.qos)
            new_subs.append((sub, existed))
        try:
            if session.persistent:
                try:
                    await broker.hs.db.write(persistence.save_session(key, session))
                except errors.StorageFull:  # not durable, so not granted: the session stays as it was
                    self._undo_subscribe(key, session, new_subs, *before)
                    failed = ReasonCode.QUOTA_EXCEEDED if self.conn.level == MQTT_5 else SUBACK_V311_FAILURE
                    codes, new_subs = [code if code >= 0x80 else failed for code in codes], []
                    reason = "the hub's storage is full"
            self.conn.send_suback(packet.packet_id, codes, reason)
            self.flush_out()
            now = time.monotonic()
            for sub, existed in new_subs:
                if sub.retain_handling == 2 or (sub.retain_handling == 1 and existed):
                    continue
                for message in await broker.retained_for(session, key, sub):
                    if self.conn.state is State.CONNECTED:
                        self.conn.deliver(message, now)
            self.flush_out()
        except Exception:
            log.exception("MQTT SUBSCRIBE handling failed")

    def _undo_subscribe(self, key: str, session: SessionState, new_subs: list[tuple[Subscription, bool]],
                        subscriptions: dict[str, Subscription], ids: dict[str, int]) -> None:
        index = self.broker.index
        for sub, _ in new_subs:
            index.remove(key, sub.topic_filter)
            if sub.topic_filter in subscriptions:
                index.add(key, subscriptions[sub.topic_filter])
        session.subscriptions.clear()
        session.subscriptions.update(subscriptions)
        session.subscription_ids.clear()
        session.subscription_ids.update(ids)

    def _on_unsubscribe(self, packet: Any) -> None:
        broker = self.broker
        key = self.key
        session = broker.sessions.get(key) if key else None
        if session is None or key is None:
            return
        codes: list[int] = []
        for topic_filter in packet.topic_filters:
            if topic_filter in session.subscriptions:
                del session.subscriptions[topic_filter]
                session.subscription_ids.pop(topic_filter, None)
                broker.index.remove(key, topic_filter)
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        if session.persistent:
            async def save_then_ack() -> None:
                await broker.hs.db.write(persistence.save_session(key, session))
                self.conn.send_unsuback(packet.packet_id, codes)
                self.flush_out()
            broker.background(save_then_ack())
        else:
            self.conn.send_unsuback(packet.packet_id, codes)
