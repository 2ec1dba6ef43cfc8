"""An uplink: the hub as an MQTT client of a bigger broker (`[[mqtt_bridge]]`, settings and topic
mapping in bridge.py, pure).

Why our own small asyncio client on the broker's sans-I/O codec rather than paho in a thread:
* `out` messages come from the rooms' history (the store), read on the event loop; the position
  may only move once the remote acknowledged, so the client's acks must be awaitable here, not
  callbacks on another thread hopping back with call_soon_threadsafe;
* a hostile or broken remote is bounded by the same codec limits as local clients (largest
  packet, no stray packet types): a malformed packet ends the connection with one log line;
* a flood cannot pile up: messages from the remote are stored one after another under the local
  account's message rate and the socket is not read meanwhile (TCP backpressure), so the remote
  is slowed down, never the hub's own clients, and nothing queues in memory;
* no thread to stop cleanly at shut-down; reconnect with backoff is a plain loop.

Out: from the saved position, MQTT messages (and retained messages, and Matrix clients' messages
in topic rooms, as the broker delivers them) are read in stream order, mapped (bridge.outbound),
published with up to `INFLIGHT` unacknowledged, and the position is saved once all of a batch is
acknowledged. Nothing is kept in memory while the remote is down: it is all in the rooms, and the
uplink catches up in order when the remote is back (at least once: a batch cut by a disconnect is
sent again).

In: remote PUBLISHes on in/both rules are stored like local publishes of `local_account`, marked
with the bridge's name (bridge.VIA_KEY) so `out` never sends them back. The remote's echo of what
we published (an MQTT 3.1.1 broker sends a subscriber its own messages) is recognised: MQTT 5 asks
for No Local; under 3.1.1 what was just sent on a both-topic is remembered for a while and its
echo dropped.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from matrix_core import errors
from matrix_core.events import Event
from matrix_core.log_limit import LogLimiter
from matrix_core.service.accounts import Requester
from matrix_core.store import mqtt_bridge as store

from .bridge import VIA_KEY, BridgeSettings, backoff, inbound, outbound, remote_subscriptions
from .codec import Decoder, MQTTCodecError, encode
from .constants import MQTT_5
from .messages import matrix_event_payload, parse_mqtt
from .packets import (NO_PROPERTIES, ConnAck, Connect, Disconnect, PingReq, PingResp, PubAck, PubComp, Publish,
                      PubRec, PubRel, SubAck, Subscribe, Subscription)
from .refusals import PublishRefused
from .routing import MESSAGE_MSGTYPE, RETAINED_TYPE

if TYPE_CHECKING:
    from .broker import MqttBroker

log = logging.getLogger("frontends.mqtt.uplink")

BATCH = 500  # events read from the history per step
INFLIGHT = 100  # QoS 1/2 publishes awaiting their ack (fewer if the MQTT 5 remote says so)
CONNECT_TIMEOUT = 10.0
SAVE_EVERY = 1.0  # seconds between position saves while forwarding (SD-card writes)
ECHO_SECONDS = 30.0
ECHO_MAX = 10_000
MAX_PACKET = 1 << 20  # bytes; a bigger packet from the remote ends the connection
_V5_PROPS = ("payload_format_indicator", "content_type", "response_topic", "correlation_data", "user_property")


class UplinkError(Exception):
    """The connection must end (refused, malformed, protocol violation, timeout)."""


class Uplink:
    """One `[[mqtt_bridge]]`: a gateway Frontend started after the broker."""

    def __init__(self, broker: "MqttBroker", settings: BridgeSettings) -> None:
        self.broker = broker
        self.hs = broker.hs
        self.settings = settings
        self.name = f"mqtt-bridge:{settings.name}"
        self.position = 0
        self.state = "starting"
        self._stored = ("", "")  # (state, detail) last written for `status`
        self.quiet = LogLimiter(60.0)
        self._task: asyncio.Task[None] | None = None
        self._requester: Requester | None = None
        self._wake = asyncio.Event()
        self._unsubscribe: Any = None
        self._echo: deque[tuple[float, str, bytes]] = deque()  # (when, remote topic, payload) sent on both-topics
        self._echo_count: dict[tuple[str, bytes], int] = {}
        self._saved = 0
        self._conn: _Connection | None = None

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.local_account:
            user_id = self.hs.accounts.local_user_id(s.local_account)
            if not await self.hs.accounts.user_exists(user_id):
                raise UplinkError(f"mqtt_bridge {s.name}: local_account {s.local_account!r} does not exist "
                                  f"(create it with `matrix-gateway user add {s.local_account}`)")
            self._requester = Requester(user_id, f"mqtt-bridge:{s.name}", False, "")
        saved = await store.load_position(self.hs.db, s.name)
        if saved is None:  # a new bridge forwards from now on, not the whole history
            saved = self.hs.stream.position
            await self.hs.db.write(store.save_position(s.name, saved))
        self.position = self._saved = saved
        self._unsubscribe = self.hs.stream.subscribe(lambda entries: self._wake.set())
        self._task = asyncio.create_task(self._run(), name=self.name)

    def describe(self) -> str:
        return ""

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._save_position()
        await self._set_state("stopped", "")

    async def _set_state(self, state: str, detail: str) -> None:
        """Keep the state for `status` (in the database: status reads it, not the hub). Retrying
        the same way every second is not a change: a down remote costs no SD-card writes."""
        self.state = state
        if state == "connecting" and self._stored[0] == "retrying":
            return  # the stored state stays "retrying" with its last error
        if (state, detail) == self._stored:
            return
        self._stored = (state, detail)
        try:
            await self.hs.db.write(store.save_state(self.settings.name, state, detail))
        except Exception as exc:  # a full disk: the state is for `status` only
            log.debug("bridge %s: state not saved: %r", self.settings.name, exc)

    async def _save_position(self) -> None:
        if self.position != self._saved:
            await self.hs.db.write(store.save_position(self.settings.name, self.position))
            self._saved = self.position

    # -- connection loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        attempt = 0
        turn = 0
        while True:
            host, port = s.addresses[turn % len(s.addresses)]
            turn += 1
            await self._set_state("connecting", f"{host}:{port}")
            try:
                conn = _Connection(self, host, port)
                self._conn = conn
                try:
                    await conn.run()
                finally:
                    self._conn = None
                    if conn.connected:
                        attempt = 0
                detail = "connection closed by the remote"
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, UplinkError, ssl.SSLError, MQTTCodecError) as exc:
                detail = str(exc) or type(exc).__name__
            except Exception as exc:
                log.exception("bridge %s failed", s.name)
                detail = repr(exc)
            try:
                await self._save_position()
            except Exception:
                pass
            delay = backoff(attempt, cap=float(s.restart_timeout))
            attempt += 1
            self.quiet.log(log, logging.WARNING, f"down:{s.name}", "MQTT bridge %s: %s:%d: %s; retrying in %.0f s",
                           s.name, host, port, detail, delay)
            await self._set_state("retrying", f"{host}:{port}: {detail}")
            await asyncio.sleep(delay)

    # -- out: history -> remote ---------------------------------------------------------------------

    def outgoing(self, event: Event, protocol_level: int) -> Publish | None:
        """The PUBLISH (packet id not set) a committed event becomes on the remote, or None."""
        s = self.settings
        content = event.content
        etype = event.type
        retain = False
        props: dict[str, Any] = {}
        if etype == "m.room.message" and content.get("msgtype") == MESSAGE_MSGTYPE:
            if content.get(VIA_KEY) == s.name:
                return None
            parsed = parse_mqtt(content.get("mqtt"))
            if parsed is None or self.broker.rules.resolve(parsed[0]) != event.room_id:
                return None
            topic, payload, _, props = parsed
        elif etype == RETAINED_TYPE and event.is_state:
            topic = event.state_key or ""
            if self.broker.rules.resolve(topic) != event.room_id:
                return None
            retain = True
            if not content:
                if self._requester is not None and event.sender == self._requester.user_id:
                    return None  # a clear the remote sent us
                payload = b""
            else:
                if content.get(VIA_KEY) == s.name:
                    return None
                parsed = parse_mqtt(content)
                if parsed is None or parsed[0] != topic:
                    return None
                _, payload, _, props = parsed
        elif etype == "m.room.message":
            if content.get(VIA_KEY) == s.name:
                return None
            found = self.broker.rules.topic_of_room(event.room_id)
            if found is None:
                return None
            topic = found
            payload = matrix_event_payload(event.event_id, event.sender, event.type, content, event.origin_server_ts)
            props = {"content_type": "application/json"}
        else:
            return None
        mapped = outbound(s.topics, topic)
        if mapped is None:
            return None
        remote_topic, qos = mapped
        if protocol_level == MQTT_5:
            kept = {k: props[k] for k in _V5_PROPS if k in props}
        else:
            kept = {}
        return Publish(remote_topic, payload, qos, retain, False, None, kept or NO_PROPERTIES)

    def remember_sent(self, publish: Publish) -> None:
        """Under 3.1.1, a both-topic's message the remote will echo back to our subscription."""
        if inbound(self.settings.topics, publish.topic) is None:
            return
        now = time.monotonic()
        key = (publish.topic, publish.payload)
        self._echo.append((now, publish.topic, publish.payload))
        self._echo_count[key] = self._echo_count.get(key, 0) + 1
        self._expire_echo(now)

    def _expire_echo(self, now: float) -> None:
        echo = self._echo
        while echo and (now - echo[0][0] > ECHO_SECONDS or len(echo) > ECHO_MAX):
            _, topic, payload = echo.popleft()
            key = (topic, payload)
            left = self._echo_count.get(key, 0) - 1
            if left > 0:
                self._echo_count[key] = left
            else:
                self._echo_count.pop(key, None)

    def is_echo(self, publish: Publish) -> bool:
        key = (publish.topic, publish.payload)
        left = self._echo_count.get(key, 0)
        if not left:
            return False
        if left > 1:
            self._echo_count[key] = left - 1
        else:
            del self._echo_count[key]
        return True

    # -- in: remote -> rooms ----------------------------------------------------------------------

    async def store_inbound(self, publish: Publish) -> None:
        """Store a remote PUBLISH as the local account's (dropped with one log line if refused)."""
        requester = self._requester
        local_topic = inbound(self.settings.topics, publish.topic)
        if requester is None or local_topic is None:
            self.quiet.log(log, logging.INFO, f"unasked:{self.settings.name}",
                           "MQTT bridge %s: dropped a message on %r, which no in/both topic rule takes",
                           self.settings.name, publish.topic)
            return
        props = {k: v for k, v in publish.properties.items() if k in _V5_PROPS} if publish.properties else {}
        local = Publish(local_topic, publish.payload, publish.qos, publish.retain, False, None, props or NO_PROPERTIES)
        broker = self.broker
        try:
            room_id = await broker.room_for_topic(requester, local_topic)
            await self.hs.rooms.get_room(room_id)
            event_type, content, state_key = broker.prepare(requester, local, room_id)
            if event_type == RETAINED_TYPE:
                if content:
                    content = {**content, VIA_KEY: self.settings.name}
            else:
                content = {**content, VIA_KEY: self.settings.name}
            await broker.wait_rate(requester.user_id)
            await broker.send(requester, room_id, event_type, content, state_key, local, None)
        except (PublishRefused, errors.MatrixError) as exc:
            self.quiet.log(log, logging.WARNING, f"refused:{self.settings.name}:{local_topic}",
                           "MQTT bridge %s: a message from the remote on %r was not stored as %s: %s",
                           self.settings.name, local_topic, requester.user_id, exc)


class _Connection:
    """One TCP (or TLS) connection to the remote: CONNECT, SUBSCRIBE, then reading, forwarding
    and keepalive side by side until one of them ends it."""

    def __init__(self, uplink: Uplink, host: str, port: int) -> None:
        self.up = uplink
        self.host = host
        self.port = port
        self.level = uplink.settings.protocol_level
        self.connected = False
        self.decoder = Decoder(MAX_PACKET, self.level)
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.next_pid = 0
        self.inflight = INFLIGHT
        self.window: asyncio.Semaphore | None = None
        self.received_at = time.monotonic()
        self.incoming_qos2: set[int] = set()
        self.pending: deque[Any] = deque()  # packets read but not handled yet
        self.suback: asyncio.Future[SubAck] | None = None

    def _ssl(self) -> ssl.SSLContext | None:
        s = self.up.settings
        if not s.tls_ca_file:
            return None
        ctx = ssl.create_default_context(cafile=s.tls_ca_file)
        if s.tls_insecure:
            ctx.check_hostname = False
        return ctx

    def send(self, packet: Any) -> None:
        assert self.writer is not None
        self.writer.write(encode(packet, self.level))

    async def read_packets(self) -> list[Any]:
        assert self.reader is not None
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise UplinkError("connection closed by the remote")
            self.received_at = time.monotonic()
            try:
                packets = self.decoder.feed(data)
            except MQTTCodecError as exc:
                raise UplinkError(f"malformed packet from the remote, connection cut: {exc}") from None
            if packets:
                return packets

    async def run(self) -> None:
        s = self.up.settings
        ctx = self._ssl()
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ctx, server_hostname=self.host if ctx else None,
                                    limit=MAX_PACKET), CONNECT_TIMEOUT)
        try:
            await self._handshake()
            self.connected = True
            log.info("MQTT bridge %s: connected to %s:%d (MQTT %s)", s.name, self.host, self.port,
                     "5" if self.level == MQTT_5 else "3.1.1")
            await self.up._set_state("connected", f"{self.host}:{self.port}")
            tasks = [asyncio.create_task(self._reading()), asyncio.create_task(self._forwarding()),
                     asyncio.create_task(self._keepalive())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        except asyncio.CancelledError:
            if self.connected:
                try:
                    self.send(Disconnect())
                except Exception:
                    pass
            raise
        finally:
            for fut in self.acks.values():
                if not fut.done():
                    fut.cancel()
            writer = self.writer
            if writer is not None:
                writer.close()

    async def _handshake(self) -> None:
        s = self.up.settings
        props: dict[str, Any] = {}
        if self.level == MQTT_5:
            props = {"maximum_packet_size": MAX_PACKET, "receive_maximum": 64}
        self.send(Connect(s.client_id, True, s.keepalive, s.remote_username,
                          s.remote_password.encode() if s.remote_password is not None else None, None, self.level,
                          props or NO_PROPERTIES))
        packets = await asyncio.wait_for(self.read_packets(), CONNECT_TIMEOUT)
        connack = packets[0]
        if not isinstance(connack, ConnAck):
            raise UplinkError(f"expected CONNACK, got {type(connack).__name__}")
        if connack.reason_code:
            raise UplinkError(f"refused by the remote (CONNACK code 0x{connack.reason_code:02x})")
        self.inflight = min(INFLIGHT, connack.properties.get("receive_maximum", INFLIGHT)) \
            if self.level == MQTT_5 else INFLIGHT
        self.window = asyncio.Semaphore(self.inflight)
        self.pending.extend(packets[1:])
        subs = remote_subscriptions(s.topics)
        if subs:
            pid = self._pid()
            self.send(Subscribe(pid, tuple(Subscription(f, qos, no_local=self.level == MQTT_5,
                                                        retain_as_published=self.level == MQTT_5)
                                           for f, qos in subs)))
            while True:
                found = None
                while self.pending:
                    packet = self.pending.popleft()
                    if isinstance(packet, SubAck) and packet.packet_id == pid:
                        found = packet
                        break
                    await self._handle(packet)
                if found is not None:
                    break
                self.pending.extend(await asyncio.wait_for(self.read_packets(), CONNECT_TIMEOUT))
            refused = [f for (f, _), code in zip(subs, found.reason_codes) if code >= 0x80]
            if refused:
                log.warning("MQTT bridge %s: the remote refused the subscription to %s", s.name, ", ".join(refused))

    def _pid(self) -> int:
        for _ in range(65535):
            self.next_pid = self.next_pid % 65535 + 1
            if self.next_pid not in self.acks:
                return self.next_pid
        raise UplinkError("no free packet id")

    async def _reading(self) -> None:
        while True:
            while self.pending:
                await self._handle(self.pending.popleft())
            self.pending.extend(await self.read_packets())

    async def _handle(self, packet: Any) -> None:
        if isinstance(packet, Publish):
            await self._inbound(packet)
        elif isinstance(packet, (PubAck, PubComp)):
            fut = self.acks.pop(packet.packet_id, None)
            if fut is None:
                raise UplinkError(f"{type(packet).__name__} for unknown packet id {packet.packet_id}")
            if packet.reason_code >= 0x80:
                log.warning("MQTT bridge %s: the remote refused a message (reason 0x%02x); it is not resent",
                            self.up.settings.name, packet.reason_code)
            if not fut.done():
                fut.set_result(None)
        elif isinstance(packet, PubRec):
            if packet.packet_id not in self.acks:
                raise UplinkError(f"PUBREC for unknown packet id {packet.packet_id}")
            if packet.reason_code >= 0x80:
                fut = self.acks.pop(packet.packet_id)
                if not fut.done():
                    fut.set_result(None)
            else:
                self.send(PubRel(packet.packet_id))
        elif isinstance(packet, PubRel):
            self.incoming_qos2.discard(packet.packet_id)
            self.send(PubComp(packet.packet_id))
        elif isinstance(packet, (PingResp, SubAck)):
            pass
        elif isinstance(packet, Disconnect):
            raise UplinkError(f"the remote disconnected (reason 0x{packet.reason_code:02x})")
        else:
            raise UplinkError(f"unexpected {type(packet).__name__} from the remote, connection cut")

    async def _inbound(self, publish: Publish) -> None:
        up = self.up
        if publish.qos == 2 and publish.packet_id in self.incoming_qos2:
            self.send(PubRec(publish.packet_id))  # a resend: stored already
            return
        if self.level != MQTT_5 and up.is_echo(publish):
            pass
        else:
            await up.store_inbound(publish)
            # the socket was not read while storing (paced by the account's rate): not the remote's silence
            self.received_at = time.monotonic()
        if publish.qos == 1:
            self.send(PubAck(publish.packet_id or 0))
        elif publish.qos == 2:
            self.incoming_qos2.add(publish.packet_id or 0)
            self.send(PubRec(publish.packet_id or 0))

    async def _keepalive(self) -> None:
        keepalive = self.up.settings.keepalive
        while True:
            await asyncio.sleep(keepalive / 2)
            if time.monotonic() - self.received_at > keepalive * 1.5:
                raise UplinkError("the remote stopped answering (keepalive)")
            self.send(PingReq())

    async def _forwarding(self) -> None:
        up = self.up
        hs = up.hs
        assert self.writer is not None and self.window is not None
        last_save = time.monotonic()
        while True:
            upto = hs.stream.position
            if up.position >= upto:
                await up._save_position()
                up._wake.clear()
                if hs.stream.position <= up.position:
                    await up._wake.wait()
                continue
            rows = await store.messages_after(hs.db, up.position, upto, BATCH)
            waits: list[asyncio.Future[None]] = []
            for pos, event in hs.rooms.rows_to_events(rows):
                publish = up.outgoing(event, self.level)
                if publish is None:
                    continue
                if publish.qos:
                    await self.window.acquire()
                    pid = self._pid()
                    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    fut.add_done_callback(lambda _f: self.window.release() if self.window else None)
                    self.acks[pid] = fut
                    waits.append(fut)
                    publish = Publish(publish.topic, publish.payload, publish.qos, publish.retain, False, pid,
                                      publish.properties)
                if self.level != MQTT_5:
                    up.remember_sent(publish)
                self.send(publish)
                if self.writer.transport.get_write_buffer_size() > 256 * 1024:
                    await self.writer.drain()
            await self.writer.drain()
            if waits:
                await asyncio.gather(*waits)
            up.position = rows[-1][0] if len(rows) == BATCH else upto
            now = time.monotonic()
            if now - last_save >= SAVE_EVERY:
                last_save = now
                await up._save_position()
