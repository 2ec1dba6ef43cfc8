"""The MQTT broker: sockets at the edge, the homeserver behind, rooms as topics.

Each connection is a `ClientProtocol` (protocol.py) feeding a sans-I/O `Connection`; this module
holds what all connections share and needs the outside world for: persistent sessions in
SQLite, turning PUBLISH into room events through the core's send API (acknowledged only after
COMMIT), handing committed room events from the core's stream to the sessions the fan-out
(fanout.py, pure) picks, Last Will, keepalive and expiry timers. Listeners (listeners.py),
authentication (auth.py) and the topic -> room decisions (topic_rooms.py) are modules of their
own. See docs/mqtt.md.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

from matrix_core import errors
from matrix_core.canonical_json import encode_canonical_json
from matrix_core.events import Event
from matrix_core.homeserver import Homeserver
from matrix_core.log_limit import LogLimiter
from matrix_core.service.accounts import Requester, TokensRevoked
from matrix_core.store import mqtt as mqtt_store
from matrix_core.store.database import WriteFn

from . import persistence
from .auth import authenticate
from .connection import State
from .constants import MQTT_5, SHARED_SUBSCRIPTION_PREFIX, ReasonCode
from .deny import DenyRules
from .fanout import MEDIA_MSGTYPES, FanOut, OwnPublish
from .full_disk import HoldBack
from .listeners import Listeners
from matrix_core.device_media import MEDIA_KIND, INLINE_CONTENT_MAX, filename_for, generic_type, image_type, media_payload, media_url
from ..payload_mapping import mqtt_payload_to_content
from .messages import media_message_content, message_content, publish_content
from .packets import NO_PROPERTIES, Connect, Publish, Subscription
from .protocol import ClientProtocol
from .refusals import REFUSAL_LOG_INTERVAL, PublishRefused
from .routing import ALIAS_PREFIX, BINDING_TYPE, RETAINED_TYPE, TopicRules
from .session import Outgoing, SessionState
from .settings import BrokerSettings
from .subscriptions import SubscriptionIndex
from .topic_rooms import TopicRooms
from .topic_view import TopicView
from .topics import has_wildcards, topic_matches

log = logging.getLogger("frontends.mqtt")

NEVER_EXPIRES = 0xFFFFFFFF
TICK_SECONDS = 0.5
# A tick this much later than due means the event loop stalled (SIGSTOP, swap, a slow SD card
# blocking the process): the stall is not held against any client's keepalive.
STALL_SECONDS = 1.0
RULES_POLL_SECONDS = 0.5
CURSOR_SAVE_SECONDS = 5.0


class MqttBroker:
    name = "mqtt"

    def __init__(self, hs: Homeserver, settings: BrokerSettings) -> None:
        self.hs = hs
        self.settings = settings
        self.rules = TopicRules()
        self.deny = DenyRules(settings.deny_subscribe)
        self.index = SubscriptionIndex()
        self.sessions: dict[str, SessionState] = {}
        self.offline_since: dict[str, float] = {}  # session key -> monotonic time of disconnect
        self.restored: set[str] = set()  # sessions loaded from disk: replay history on resume
        self.online: dict[str, ClientProtocol] = {}
        self.clients: set[ClientProtocol] = set()
        self.per_address: dict[str, int] = {}  # remote address -> open connections
        # one line a minute per kind of refusal strangers can cause at will (matrix_core/log_limit.py)
        self.quiet = LogLimiter(60.0)
        self.refusal_log = LogLimiter(REFUSAL_LOG_INTERVAL)  # refused publishes: once per account, client, topic
        # event id -> our client's PUBLISH stored as that event, from the core's answer until
        # its commit's fan-out is done (fanout.OwnPublish)
        self._own: dict[str, OwnPublish] = {}
        # mxc URL -> bytes of payloads kept in the media repository, read back before a fan-out
        # that needs them (retained delivery, replay, events not published here); bounded
        self._blobs: dict[str, bytes] = {}
        self.fanout = FanOut(self.sessions, self.index, self.online, self.rules, self.deny, hs.rooms.is_joined,
                             self._own, self._blobs)
        # stream position -> sessions that got its QoS 0 message before its commit (_deliver_early)
        self._early: dict[int, set[str]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._unlisten_revoked: Callable[[], None] | None = None
        self._wills: dict[str, asyncio.TimerHandle] = {}
        self._bg: set[asyncio.Future[Any]] = set()
        self._stopping = asyncio.Event()  # set by stop(): publishes still queued stop waiting for the rate
        self.listeners = Listeners(settings, hs.server_name, lambda: ClientProtocol(self))
        self.ready_rooms: set[str] = set()  # rooms whose state the core has loaded
        self.dropped_slow = 0
        # The alias namespace the default rule routes by is the broker's (and hub admins'): nobody
        # else can point #mqtt/home/garage at their room and catch the first publish there.
        hs.rooms.reserve_alias_namespace(ALIAS_PREFIX)
        self.topic_rooms = TopicRooms(hs, self.rules, settings.room_levels, self.background)
        self.topic_view = TopicView(hs, self.topic_rooms)  # the MQTT page's topic tree
        # 3.1.1 clients closed for want of disk space: their CONNECTs wait (full_disk.py)
        self.held_back = HoldBack(errors.STORAGE_RETRY_MS / 1000)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        db = self.hs.db
        await self.topic_rooms.load()
        await self.topic_rooms.start_household()  # old rooms opened to it, missing members joined
        for row in await mqtt_store.load_sessions(db):
            key, session = row.key, persistence.session_of(row, self.settings.limits.max_queued)
            self.sessions[key] = session
            self.offline_since[key] = time.monotonic()
            self.restored.add(key)
            for sub in session.subscriptions.values():
                self.index.add(key, sub)
        self._unsubscribe = self.hs.stream.subscribe(self._on_stream)
        self.topic_view.start()
        self.hs.hub_ops.topic_tree = self.topic_view
        self._unlisten_revoked = self.hs.accounts.on_revoked(self._on_tokens_revoked)
        await self.listeners.start()
        self._tasks.append(asyncio.create_task(self._ticker(), name="mqtt-ticker"))

    @property
    def bound_ports(self) -> list[int]:
        return self.listeners.bound_ports

    def describe(self) -> str:
        return self.listeners.describe()

    async def stop(self) -> None:
        """Stop accepting, let publishes being stored finish, save sessions, close clients."""
        self._stopping.set()
        await self.listeners.stop_accepting()
        for task in self._tasks:
            task.cancel()
        for client in list(self.clients):
            await client.drain_publishes()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.hs.hub_ops.topic_tree = None
        self.topic_view.stop()
        if self._unlisten_revoked is not None:
            self._unlisten_revoked()
        for client in list(self.clients):
            client.close(ReasonCode.SERVER_SHUTTING_DOWN, publish_will=False)
        for handle in self._wills.values():
            handle.cancel()
        while self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        writes = []
        for key, session in self.sessions.items():
            if session.persistent:
                writes.append(self.hs.db.submit(persistence.save_session(key, session, disconnected=True)))
        if writes:
            await asyncio.gather(*writes, return_exceptions=True)
        await self.listeners.close()

    def background(self, coro: Any) -> "asyncio.Future[Any]":
        """Run a coroutine the broker waits for when it stops (publishes being stored, saves)."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: "asyncio.Future[Any]") -> None:
        self._bg.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and not isinstance(exc, (PublishRefused, errors.MatrixError)):
                log.error("MQTT background task failed: %r", exc)

    # -- authentication -------------------------------------------------------------------------

    async def authenticate(self, connect: Connect, peer: str) -> Requester | int:
        """The Matrix account behind a CONNECT, or the MQTT 5 reason code refusing it (auth.py)."""
        return await authenticate(self.hs.accounts, self.settings, connect, peer)

    def _on_tokens_revoked(self, revoked: TokensRevoked) -> None:
        """Logout (or logout all) of the token a client connected with ends its connection at
        once, as mosquitto does when a client's credentials go: MQTT 5 DISCONNECT 0x98
        Administrative action, 3.1.1 a plain close. Its will is not published (that would be a
        publish with the revoked token); a persistent session stays for valid credentials, and a
        CONNECT with the revoked token is refused like any unknown password. A client still
        being authenticated is closed too (its requester is set before its session opens)."""
        for client in list(self.clients):
            requester = client.requester
            if requester is not None and requester.access_token in revoked.tokens:
                log.info("MQTT client %r (%s): its access token was revoked, disconnecting", client.client_id,
                         client.peer)
                client.close(ReasonCode.ADMINISTRATIVE_ACTION, publish_will=False)

    # -- sessions -------------------------------------------------------------------------------

    async def open_session(self, client: "ClientProtocol", requester: Requester, connect: Connect
                           ) -> tuple[SessionState, bool, str] | int:
        """Find or create the session for a CONNECT; takes over an older connection. A reason
        code instead when the account may not keep one more persistent session."""
        client_id = connect.client_id
        if connect.protocol_level == MQTT_5:
            expiry = connect.properties.get("session_expiry_interval", 0)
        else:
            expiry = 0 if connect.clean_start else NEVER_EXPIRES
        key = persistence.session_key(requester.user_id, client_id)
        if expiry and self._over_session_quota(requester.user_id, key):
            return ReasonCode.QUOTA_EXCEEDED
        old = self.online.get(key)
        if old is not None and old is not client:
            old.close(ReasonCode.SESSION_TAKEN_OVER, publish_will=True)
        self._cancel_will(key)
        session = self.sessions.get(key)
        present = session is not None and not connect.clean_start
        if session is not None and connect.clean_start:
            self._drop_session(key)
            if session.persistent:
                await self.hs.db.write(persistence.delete_session(key))
            session = None
        if session is None:
            session = SessionState(client_id, requester.user_id, connect.protocol_level, expiry,
                                   self.settings.limits.max_queued, seen_upto=self.hs.stream.position)
            self.sessions[key] = session
        session.expiry_interval = expiry
        session.protocol_level = connect.protocol_level
        self.offline_since.pop(key, None)
        if key in self.restored:
            self.restored.discard(key)
            await self._replay(key, session)
        if session.persistent:
            await self.hs.db.write(persistence.save_session(key, session))
        self.online[key] = client
        return session, present, key

    def _over_session_quota(self, user_id: str, key: str) -> bool:
        """Would a new persistent session *key* take the account over its quota? Resuming or
        replacing one of its persistent sessions never does. (A scan, on CONNECT only.)"""
        limit = self.settings.max_sessions_per_account
        existing = self.sessions.get(key)
        if not limit or (existing is not None and existing.persistent):
            return False
        kept = sum(1 for session in self.sessions.values() if session.persistent and session.user_id == user_id)
        return kept >= limit

    def _drop_session(self, key: str) -> None:
        session = self.sessions.pop(key, None)
        self.offline_since.pop(key, None)
        self.restored.discard(key)
        if session is not None:
            for topic_filter in session.subscriptions:
                self.index.remove(key, topic_filter)

    def session_closed(self, client: "ClientProtocol") -> None:
        key = client.key
        if key is None or self.online.get(key) is not client:
            return
        del self.online[key]
        session = self.sessions.get(key)
        if session is None:
            return
        if not session.persistent:
            self._drop_session(key)
            return
        session.forget_qos0()
        self.offline_since[key] = time.monotonic()
        self.background(self.hs.db.write(persistence.save_session(key, session, disconnected=True)))

    async def _replay(self, key: str, session: SessionState) -> None:
        """After a restart: queue the QoS 1/2 messages the session had not acknowledged, read
        back from the rooms' history (the history is the message store)."""
        upto = self.hs.stream.position
        rooms = self.hs.rooms
        wall_ms, now = time.time() * 1000, time.monotonic()
        found: list[tuple[int, Event]] = []
        for room_id in rooms.joined_room_ids(session.user_id):
            found += await rooms.timeline(room_id, upto, self.settings.limits.max_queued,
                                          after=session.seen_upto, forwards=True)
        found.sort(key=lambda item: item[0])
        await self._load_blobs([event for _, event in found[: self.settings.limits.max_queued]])
        replayed: list[Outgoing] = []
        for pos, event in found[: self.settings.limits.max_queued]:
            for target_key, message in self.fanout.messages_for(pos, event, wall_ms, now, only=key):
                if message.qos:
                    replayed.append(message)
        session.queue = deque(replayed + list(session.queue))

    # -- wills ----------------------------------------------------------------------------------

    def schedule_will(self, client: "ClientProtocol") -> None:
        connect = client.conn.connect
        if connect is None or connect.will is None or client.requester is None or client.key is None:
            return
        will = connect.will
        delay = will.properties.get("will_delay_interval", 0) if will.properties else 0
        session = self.sessions.get(client.key)
        if session is not None and session.persistent and session.expiry_interval != NEVER_EXPIRES:
            delay = min(delay, session.expiry_interval)
        elif session is None or not session.persistent:
            delay = 0
        publish = Publish(will.topic, will.payload, will.qos, will.retain, False, None,
                          will.properties or NO_PROPERTIES)
        requester = client.requester
        if delay <= 0:
            self.background(self._publish_will(requester, publish, client.key))
            return
        key = client.key
        loop = asyncio.get_running_loop()
        self._wills[key] = loop.call_later(
            delay, lambda: (self._wills.pop(key, None), self.background(self._publish_will(requester, publish, key)))
        )

    def _cancel_will(self, key: str) -> None:
        handle = self._wills.pop(key, None)
        if handle is not None:
            handle.cancel()

    async def _publish_will(self, requester: Requester, publish: Publish, key: str) -> None:
        props = {k: v for k, v in publish.properties.items() if k != "will_delay_interval"}
        publish = Publish(publish.topic, publish.payload, publish.qos, publish.retain, False, None,
                          props or NO_PROPERTIES)
        try:
            await self.store_publish(requester, publish, key)
        except (PublishRefused, errors.MatrixError) as exc:
            if not isinstance(exc, errors.StorageFull):  # a full disk: counted in the store's log line
                log.info("will of %s on %r not published: %s", requester.user_id, publish.topic, exc)


    # -- publish: client -> room ----------------------------------------------------------------

    async def room_for_topic(self, requester: Requester, topic: str) -> str:
        """The room a publish to *topic* goes to, made if the default rule says so (topic_rooms.py)."""
        return await self.topic_rooms.room_for_topic(requester, topic)

    def prepare(self, requester: Requester, publish: Publish, room_id: str) -> tuple[str, dict[str, Any], str | None]:
        """(event type, content, state key) for a PUBLISH."""
        props = publish.properties
        if props and props.get("payload_format_indicator") == 1:
            try:
                publish.payload.decode("utf-8")
            except UnicodeDecodeError:
                raise PublishRefused(ReasonCode.PAYLOAD_FORMAT_INVALID, "payload is not UTF-8") from None
        mqtt = publish_content(publish.topic, publish.payload, publish.qos, props)
        if publish.retain:
            return RETAINED_TYPE, (mqtt if publish.payload else {}), publish.topic
        return "m.room.message", message_content(mqtt), None

    # -- images and large payloads: the media repository (docs/mqtt.md) ----------------------

    def _image_type(self, publish: Publish) -> str | None:
        declared = publish.properties.get("content_type") if publish.properties else None
        topics = self.settings.image_topics
        sniff = bool(topics) and any(topic_matches(f, publish.topic) for f in topics)
        return image_type(publish.payload, declared, sniff)

    def needs_media(self, publish: Publish) -> bool:
        """Whether a PUBLISH is stored in the media repository: a picture, or a payload whose
        `mqtt` object would not fit an event. Small payloads answer from their length alone
        (even escaped 6 bytes a byte they fit): the hot path never encodes twice."""
        payload = publish.payload
        if not payload:
            return False
        if (self.settings.image_topics or publish.properties) and self._image_type(publish) is not None:
            return True
        if len(payload) * 6 + 4 * len(publish.topic) + 1024 <= INLINE_CONTENT_MAX:
            return False
        mqtt = publish_content(publish.topic, payload, publish.qos, publish.properties)
        return len(encode_canonical_json(mqtt)) > INLINE_CONTENT_MAX

    async def prepare_media(self, requester: Requester, publish: Publish) -> tuple[str, dict[str, Any], str | None]:
        """`prepare` for a publish `needs_media` picked: the bytes stored first (durably: the
        repository writes before it answers), then the event that refers to them. A refusal
        (over size or quota: MatrixError) stores no event."""
        self.prepare(requester, publish, "")  # the checks prepare makes (UTF-8 indicator)
        image = self._image_type(publish)
        payload = publish.payload
        if image is not None:
            mimetype = image
        else:
            declared = publish.properties.get("content_type") if publish.properties else None
            mimetype = generic_type(mqtt_payload_to_content(payload, declared)["kind"])
        url = await self.hs.media.store_bytes(requester.user_id, payload, mimetype,
                                              filename_for(publish.topic, mimetype))
        self._remember_blob(url, payload)
        mqtt = publish_content(publish.topic, payload, publish.qos, publish.properties,
                               media_payload(url, mimetype, len(payload)))
        if publish.retain:
            return RETAINED_TYPE, mqtt, publish.topic
        return "m.room.message", media_message_content(mqtt, payload if image is not None else None), None

    _BLOB_CACHE_BYTES = 4 * 1024 * 1024

    def _remember_blob(self, url: str, data: bytes) -> None:
        blobs = self._blobs
        blobs[url] = data
        total = sum(len(v) for v in blobs.values())
        while total > self._BLOB_CACHE_BYTES and len(blobs) > 1:
            oldest = next(iter(blobs))
            total -= len(blobs.pop(oldest))

    async def _load_blob(self, url: str) -> None:
        if url in self._blobs:
            return
        found = await self.hs.media.read_bytes(url)
        if found is not None:
            self._remember_blob(url, found[0])

    async def _load_blobs(self, events: "list[Event]") -> None:
        """Read back the media payloads of these events (a fan-out then finds them in the cache)."""
        for event in events:
            url = _media_url_of(event)
            if url is not None:
                await self._load_blob(url)

    async def _fan_out_media(self, pos: int, event: Event, url: str) -> None:
        """An event whose payload is in the media repository and was not published here (the
        bytes are not at hand): read them, then fan out as `_on_stream` would."""
        await self._load_blob(url)
        if url in self._blobs:
            self._on_stream([(pos, event)], media_ready=True)

    async def store_publish(self, requester: Requester, publish: Publish, key: str | None) -> None:
        """Store one PUBLISH as a room event (used for wills; clients go through their pipeline)."""
        room_id = await self.room_for_topic(requester, publish.topic)
        await self.hs.rooms.get_room(room_id)
        if self.needs_media(publish):
            event_type, content, state_key = await self.prepare_media(requester, publish)
        else:
            event_type, content, state_key = self.prepare(requester, publish, room_id)
        await self.wait_rate(requester.user_id)
        await self.send(requester, room_id, event_type, content, state_key, publish, key)

    async def wait_rate(self, user_id: str) -> None:
        """The per-user message rate applies to MQTT too: over it, the publisher is slowed down
        (TCP backpressure) instead of losing messages. The rate is the core's (the send then
        skips it: rate_limit=False).

        Not once the broker stops: what is queued then is stored at once. Paced, a backlog read
        before SIGTERM (fuzzing left 300 connections' worth at 50/s) kept the hub stopping for
        20 s and more, past the unit's TimeoutStopSec=15s, and systemd killed it mid-save."""
        check = self.hs.rooms.check_send_rate
        stopping = self._stopping
        while not stopping.is_set():
            try:
                check(user_id)
                return
            except errors.MatrixError as exc:
                try:
                    await asyncio.wait_for(stopping.wait(), exc.extra.get("retry_after_ms", 100) / 1000)
                except asyncio.TimeoutError:
                    pass


    def send_batch_nowait(self, requester: Requester, room_id: str,
                          items: list[tuple[str, dict[str, Any], str | None, Publish]],
                          key: str | None, delay: float = 0.0,
                          deliver_early: bool = False,
                          extras: "list[WriteFn | None] | None" = None) -> "list[asyncio.Future[Any]] | None":
        """The hot path of `send` for publishes read together for one room (retained ones too):
        no coroutine or task per message, and one write for all of them. Per item a future (the
        shared one, or a failed one for an item refused alone); None when the core cannot take
        them synchronously (then `send` each). `deliver_early`: QoS 0 publishes waiting `delay`
        for a shared commit go to online subscribers at once (`_deliver_early`).

        Each accepted publish is registered under the event id the core gives back for it, so
        the fan-out of its event reuses its bytes and knows its session (No Local), until the
        commit (and the fan-out it brings) is done."""
        placed: list[list[tuple[int, Event]]] | None = [] if deliver_early else None
        fut, outcomes = self.hs.rooms.send_events_nowait(requester, room_id, [item[:3] for item in items], delay,
                                                         placed.append if placed is not None else None, extras,
                                                         rate_limit=False)  # admitted (wait_rate, _try_start)
        if not outcomes:
            return None
        own = self._own
        session_key = key or ""
        registered: list[str] = []
        futures: list[asyncio.Future[Any]] = []
        for item, outcome in zip(items, outcomes):
            if isinstance(outcome, str):
                assert fut is not None
                own[outcome] = OwnPublish(item[3], session_key)
                registered.append(outcome)
                futures.append(fut)
                continue
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(outcome)
            futures.append(failed)
        early = self._deliver_early(placed[0]) if placed else []
        if fut is not None:
            def forget(_: Any) -> None:  # after COMMIT and after the fan-out that needed them
                for event_id in registered:
                    own.pop(event_id, None)
                for pos in early:  # the commit failed, or its fan-out is done
                    self._early.pop(pos, None)
                self._bg.discard(fut)

            self._bg.add(fut)
            fut.add_done_callback(forget)
        return futures

    async def send(self, requester: Requester, room_id: str, event_type: str, content: dict[str, Any],
                   state_key: str | None, publish: Publish, key: str | None, also: "WriteFn | None" = None) -> None:
        """One publish, the awaiting way (a will; a room not in memory): the room is loaded, then
        the publish goes the way of `send_batch_nowait`; returns once committed."""
        items = [(event_type, content, state_key, publish)]
        extras: "list[WriteFn | None] | None" = [also] if also is not None else None
        while True:
            await self.hs.rooms.get_room(room_id)
            futures = self.send_batch_nowait(requester, room_id, items, key, extras=extras)
            if futures is not None:
                break
        await futures[0]

    # -- fan-out: room -> subscribers -----------------------------------------------------------

    def _deliver_early(self, entries: list[tuple[int, Event]]) -> list[int]:
        """QoS 0 publishes waiting to share a commit (`qos0_commit_delay`) go to the subscribers
        online now, as a plain broker would: the wait saves SD-card writes without delaying a
        motion sensor's message to the automation listening for it. Only QoS 0 messages to
        connected clients (the only ones a QoS 0 publish makes: nothing is queued for offline
        sessions); Matrix clients, CoAP observers and clients connecting later get the event
        after its commit, and `_on_stream` skips the sessions served here. Returns the
        positions recorded. A crash before the commit loses the stored copy, not the delivery:
        at most once, as QoS 0 allows."""
        now = time.monotonic()
        wall_ms = time.time() * 1000
        messages_for = self.fanout.messages_for
        touched: set[ClientProtocol] = set()
        recorded: list[int] = []
        for pos, event in entries:
            served: set[str] = set()
            for key, message in messages_for(pos, event, wall_ms, now):
                client = self.online.get(key)
                if message.qos or client is None or client.conn.state is not State.CONNECTED:
                    continue
                if not client.conn.deliver(message, now):
                    self.dropped_slow += 1
                touched.add(client)
                served.add(key)
            if served:
                self._early[pos] = served
                recorded.append(pos)
        for client in touched:
            client.flush_out()
        return recorded

    def _on_stream(self, entries: list[tuple[int, Event]], media_ready: bool = False) -> None:
        now = time.monotonic()
        wall_ms = time.time() * 1000
        messages_for = self.fanout.messages_for
        touched: set[ClientProtocol] = set()
        own = self._own
        for pos, event in entries:
            if event.type == BINDING_TYPE:
                self.topic_rooms.on_binding(event)
            if not media_ready and event.event_id not in own:
                url = _media_url_of(event)  # a few dict lookups; only media events read anything
                if url is not None and url not in self._blobs:
                    self.background(self._fan_out_media(pos, event, url))
                    continue
            served = self._early.pop(pos, None) if self._early else None
            for key, message in messages_for(pos, event, wall_ms, now):
                if served is not None and key in served:
                    continue
                client = self.online.get(key)
                session = self.sessions.get(key)
                if session is None:
                    continue
                if client is not None and client.conn.state is State.CONNECTED:
                    if not client.conn.deliver(message, now):
                        self.dropped_slow += 1
                    touched.add(client)
                elif session.persistent and message.qos and key not in self.restored:
                    session.enqueue(message)
        last = entries[-1][0]
        restored = self.restored
        for key, session in self.sessions.items():
            # A session restored from disk keeps its stored cursor until it resumes: its replay
            # reads everything after it from history, including what arrives meanwhile.
            if session.seen_upto < last and key not in restored:
                session.seen_upto = last
        for client in touched:
            client.flush_out()

    # -- subscribe ------------------------------------------------------------------------------

    async def retained_for(self, session: SessionState, key: str, sub: Subscription) -> list[Outgoing]:
        """Retained messages (room state) matching a new subscription, from joined rooms only."""
        out: list[Outgoing] = []
        rooms = self.hs.rooms
        wall_ms = time.time() * 1000
        topic_filter = sub.topic_filter
        if not has_wildcards(topic_filter) and not topic_filter.startswith(SHARED_SUBSCRIPTION_PREFIX):
            # One topic: at most one retained message, in the one room the topic goes to (the
            # fan-out keeps only that room's anyway). Looked up, not scanned: Home Assistant
            # subscribes to each entity's state topic, 1,000 filters in one SUBSCRIBE, and a scan
            # of every joined room's state per filter took 7 s for 1,000 entities (0.2 s in
            # mosquitto; bench/home_assistant_startup.py).
            room_id = self.rules.resolve(topic_filter)
            if room_id is None or not rooms.is_joined(session.user_id, room_id):
                return out
            room = await rooms.get_room(room_id)
            event = room.state.get((RETAINED_TYPE, topic_filter))
            if event is None:
                return out
            await self._load_blobs([event])
            return self.fanout.retained(session, sub, room_id, {(RETAINED_TYPE, topic_filter): event}, wall_ms,
                                        time.monotonic())
        for room_id in rooms.joined_room_ids(session.user_id):
            room = await rooms.get_room(room_id)
            await self._load_blobs([event for (etype, state_key), event in list(room.state.items())
                                    if etype == RETAINED_TYPE and topic_matches(sub.topic_filter, state_key)])
            out += self.fanout.retained(session, sub, room_id, room.state, wall_ms, time.monotonic())
        return out

    # -- timers ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        """Keepalive, session expiry, cursor saves, admin rule changes: one timer for all."""
        last_rules = 0.0
        last_cursor = 0.0
        saved_cursors: dict[str, int] = {}
        overdue: set[ClientProtocol] = set()
        while True:
            slept_at = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            try:
                stalled = now - slept_at - TICK_SECONDS
                if stalled > STALL_SECONDS:
                    log.warning("MQTT broker: the event loop stalled %.1f s; keepalive deadlines moved by as much",
                                stalled)
                    for client in self.clients:
                        client.conn.excuse(stalled, now)
                # Read before judging: a client past its deadline is closed at the next tick if it
                # still is, once the loop has read what sat in its socket (after a stall, timers
                # can run before the reads the stall held back).
                connect_timeout = self.settings.connect_timeout
                expired = {client for client in self.clients
                           if client.conn.keepalive_expired(now) or client.conn.connect_overdue(now, connect_timeout)}
                for client in expired & overdue:
                    if client.conn.state is State.AWAIT_CONNECT:
                        self.quiet.log(log, logging.INFO, "connect-timeout", "MQTT connection from %s closed: no CONNECT within "
                                                "%.0f s (mqtt_connect_timeout_s)", client.peer, connect_timeout)
                        client.close(ReasonCode.MAXIMUM_CONNECT_TIME, publish_will=False)
                        continue
                    log.info("MQTT client %r: keepalive expired", client.client_id)
                    client.close(ReasonCode.KEEP_ALIVE_TIMEOUT, publish_will=True)
                overdue = expired - overdue
                for key, since in list(self.offline_since.items()):
                    session = self.sessions.get(key)
                    if session is None or session.expiry_interval == NEVER_EXPIRES:
                        continue
                    if now - since >= session.expiry_interval:
                        self._drop_session(key)
                        self.background(self.hs.db.write(persistence.delete_session(key)))
                if now - last_rules >= RULES_POLL_SECONDS:
                    last_rules = now
                    await self.topic_rooms.poll_admin_rules()
                if now - last_cursor >= CURSOR_SAVE_SECONDS:
                    last_cursor = now
                    for key, client in list(self.online.items()):
                        session = self.sessions.get(key)
                        if session is not None and session.persistent:
                            cursor = session.cursor()
                            if saved_cursors.get(key) != cursor:
                                saved_cursors[key] = cursor
                                self.background(self.hs.db.write(persistence.save_cursor(key, cursor)))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("MQTT ticker failed")




def _media_url_of(event: Event) -> str | None:
    """The mxc URL of an MQTT payload an event keeps in the media repository, else None."""
    etype = event.type
    if etype == "m.room.message":
        content = event.content
        msgtype = content.get("msgtype")
        if type(msgtype) is not str or msgtype not in MEDIA_MSGTYPES:  # an MQTT message, a text: no
            return None
        mqtt = content.get("mqtt")
    elif etype == RETAINED_TYPE:
        mqtt = event.content
    else:
        return None
    payload = mqtt.get("payload") if isinstance(mqtt, dict) else None
    return media_url(payload) if type(payload) is dict and payload.get("kind") == MEDIA_KIND else None
