"""The MQTT broker: sockets at the edge, the homeserver behind, rooms as topics.

Each TCP connection is an asyncio Protocol feeding a sans-I/O `Connection`; this module only
does what needs the outside world: authenticating CONNECT with Matrix credentials, turning
PUBLISH into room events through `Rooms.send_event` (acknowledged only after COMMIT), routing
committed room events from the core's stream to matching subscriptions of users joined to the
room, persistent sessions in SQLite, keepalive, Last Will. See docs/mqtt.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from matrix_core import errors
from matrix_core.events import Event
from matrix_core.homeserver import Homeserver
from matrix_core.service.accounts import Requester, TokensRevoked
from matrix_core.store.database import WriteFn

from . import store, tls, websocket
from .connection import (
    ConnectReceived,
    Connection,
    Delivered,
    DisconnectReceived,
    Limits,
    ProtocolViolation,
    PublishReceived,
    Qos2Released,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
)
from .constants import MQTT_5, SUBACK_V311_FAILURE, ReasonCode
from .deny import DenyRules
from .full_disk import HoldBack
from .messages import matrix_event_payload, message_content, parse_mqtt, publish_content
from .packets import NO_PROPERTIES, Connect, Publish, Subscription
from .routing import (
    ALIAS_PREFIX,
    BINDING_TYPE,
    MESSAGE_MSGTYPE,
    RETAINED_TYPE,
    TopicRules,
    alias_localpart,
    default_binding,
    effective_bindings,
)
from .session import Outgoing, SessionState
from .subscriptions import SubscriptionIndex
from .topics import is_valid_topic_filter, parse_shared_subscription, topic_matches

log = logging.getLogger("bridges.mqtt")

NEVER_EXPIRES = 0xFFFFFFFF
TICK_SECONDS = 0.5
# A tick this much later than due means the event loop stalled (SIGSTOP, swap, a slow SD card
# blocking the process): the stall is not held against any client's keepalive.
STALL_SECONDS = 1.0
RULES_POLL_SECONDS = 0.5
CURSOR_SAVE_SECONDS = 5.0

_ERROR_REASONS = {
    "M_FORBIDDEN": ReasonCode.NOT_AUTHORIZED,
    "M_NOT_FOUND": ReasonCode.NOT_AUTHORIZED,
    "M_TOO_LARGE": ReasonCode.QUOTA_EXCEEDED,
    "M_BAD_JSON": ReasonCode.PAYLOAD_FORMAT_INVALID,
    "M_RESOURCE_LIMIT_EXCEEDED": ReasonCode.QUOTA_EXCEEDED,  # max_rooms_per_user; a full disk (full_disk.py)
}


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls_enabled: bool = False
    tls_port: int = 8883
    tls_cert: str = ""  # PEM files; both empty: a self-signed pair in data_dir (bridges/mqtt/tls.py)
    tls_key: str = ""
    ws_enabled: bool = False
    ws_port: int = 8083
    ws_path: str = "/mqtt"
    wss_enabled: bool = False  # WebSockets over TLS, with the mqtts certificate
    wss_port: int = 8084
    deny_subscribe: tuple[str, ...] = ()
    data_dir: str = ""
    allow_anonymous: bool = False
    anonymous_user: str = "mqtt-guest"
    room_levels: int = 2
    limits: Limits = Limits()
    # Seconds a batch of QoS 0 publishes may wait for later writes to share its commit (SD-card
    # writes); 0: commit at once, like every acknowledged write.
    qos0_commit_delay: float = 0.0
    connect_timeout: float = 10.0  # seconds from accept to CONNECT; then the socket is closed
    max_connections_per_address: int = 100  # open connections per remote address; 0: no cap
    max_sessions_per_account: int = 100  # persistent sessions one account may keep; 0: no cap


class _Quiet:
    """At most one log line per period for something strangers can cause at will (connections
    refused or timed out): the next line counts those not logged."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._next = 0.0
        self._unlogged = 0

    def log(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._unlogged += 1
            return
        self._next = now + self.period
        if self._unlogged:
            message += " (%d more not logged in the last %.0f s)"
            args = (*args, self._unlogged, self.period)
        self._unlogged = 0
        log.log(level, message, *args)


class PublishRefused(Exception):
    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


# Publishes started per pass of the event loop before the rest of a read waits for the next pass.
PUBLISHES_PER_PASS = 50


class _Own:
    """A PUBLISH being stored by a client of ours: matched to its event by content identity, so
    fan-out reuses the exact bytes and honours No Local without decoding anything."""

    __slots__ = ("content", "publish", "session_key")

    def __init__(self, content: dict[str, Any], publish: Publish, session_key: str) -> None:
        self.content = content
        self.publish = publish
        self.session_key = session_key


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
        self.quiet_refusals = _Quiet()
        self.quiet_timeouts = _Quiet()
        self.quiet_quota = _Quiet()
        self._own: dict[int, _Own] = {}
        # stream position -> sessions that got its QoS 0 message before its commit (_deliver_early)
        self._early: dict[int, set[str]] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._unlisten_revoked: Callable[[], None] | None = None
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._wills: dict[str, asyncio.TimerHandle] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()  # set by stop(): publishes still queued stop waiting for the rate
        self.bound_ports: list[int] = []
        self.listeners: list[str] = []  # "name=url" items for the ready line
        self._ws_runner: web.AppRunner | None = None
        self._ws_sites: list[web.TCPSite] = []
        self.ready_rooms: set[str] = set()  # rooms whose state the core has loaded
        self.dropped_slow = 0
        # The alias namespace the default rule routes by is the broker's (and hub admins'): nobody
        # else can point #mqtt/home/garage at their room and catch the first publish there.
        hs.rooms.reserve_alias_namespace(ALIAS_PREFIX)
        self.admins: set[str] = set()  # hub admins, polled with the admin rules
        # alias -> (owner, room id) of the default rooms the broker made (None: being created)
        self.default_rooms: dict[str, tuple[str, str | None]] = {}
        self._creating: set[str] = set()  # aliases of default rooms being created now
        self._trusted: dict[str, str] = {}  # alias -> room id checked by _check_default_alias
        self._logged_untrusted: set[str] = set()
        # (room id, topic filter) -> sender of each room's binding in force, counted or not: whether
        # it counts (routing.binding_authority) is worked out again when admins or owners change.
        self._bindings: dict[tuple[str, str], str] = {}
        self._logged_ignored: set[tuple[str, str, str]] = set()
        # 3.1.1 clients closed for want of disk space: their CONNECTs wait (full_disk.py)
        self.held_back = HoldBack(errors.STORAGE_RETRY_MS / 1000)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        db = self.hs.db
        rules = await store.load_rules(db)
        self.admins = await self.hs.accounts.admin_user_ids()
        self.default_rooms = await store.load_default_rooms(db)
        for alias, (owner, room_id) in list(self.default_rooms.items()):
            if room_id is None:  # the hub stopped while creating it: made, or not
                found = await self.hs.rooms.resolve_alias_local(alias)
                if found is None:
                    del self.default_rooms[alias]
                    await db.write(lambda c: store.forget_default_room(c, alias))  # awaited: alias is current
                else:
                    self.default_rooms[alias] = (owner, found)
                    await db.write(lambda c: store.set_default_room(c, alias, found))
        for room_id, state_key, content, sender in await store.load_room_bindings(db, BINDING_TYPE):
            if content and _valid_binding(state_key):
                self._bindings[(room_id, state_key)] = sender
        self.rules.replace(rules)
        self._apply_bindings()
        for key, (session, _) in (await store.load_sessions(db, self.settings.limits.max_queued)).items():
            self.sessions[key] = session
            self.offline_since[key] = time.monotonic()
            self.restored.add(key)
            for sub in session.subscriptions.values():
                self.index.add(key, sub)
        self._unsubscribe = self.hs.stream.subscribe(self._on_stream)
        self._unlisten_revoked = self.hs.accounts.on_revoked(self._on_tokens_revoked)
        await self._listen()
        self._tasks.append(asyncio.create_task(self._ticker(), name="mqtt-ticker"))

    async def _listen(self) -> None:
        """TCP always; TLS and WebSocket only when configured (security by default)."""
        settings = self.settings
        host = settings.host
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientProtocol(self), host, settings.port, reuse_address=True)
        self._servers.append(server)
        self._bound("mqtt", "mqtt", server.sockets[0].getsockname()[1])
        context = None
        if settings.tls_enabled or settings.wss_enabled:
            cert, key = await tls.certificate_paths(Path(settings.data_dir) if settings.data_dir else None,
                                                    self.hs.server_name,
                                                    settings.tls_cert, settings.tls_key)
            context = tls.server_context(cert, key)
        if settings.tls_enabled:
            secure = await loop.create_server(lambda: ClientProtocol(self), host, settings.tls_port, ssl=context,
                                              reuse_address=True)
            self._servers.append(secure)
            self._bound("mqtts", "mqtts", secure.sockets[0].getsockname()[1])
        if settings.ws_enabled or settings.wss_enabled:
            self._ws_runner = web.AppRunner(websocket.make_app(self, settings.ws_path), access_log=None,
                                            handle_signals=False, shutdown_timeout=2.0)
            await self._ws_runner.setup()
        if settings.ws_enabled:
            await self._ws_listen("mqtt-ws", "ws", settings.ws_port, None)
        if settings.wss_enabled:
            await self._ws_listen("mqtt-wss", "wss", settings.wss_port, context)

    async def _ws_listen(self, name: str, scheme: str, port: int, context: "ssl.SSLContext | None") -> None:
        assert self._ws_runner is not None
        site = web.TCPSite(self._ws_runner, self.settings.host, port, reuse_address=True, ssl_context=context)
        await site.start()
        self._ws_sites.append(site)
        sockets = getattr(site._server, "sockets", None) or []
        self._bound(name, scheme, sockets[0].getsockname()[1] if sockets else port, self.settings.ws_path)

    def _bound(self, name: str, scheme: str, port: int, path: str = "") -> None:
        self.bound_ports.append(port)
        self.listeners.append(f"{name}={scheme}://{self.settings.host}:{port}{path}")

    def describe(self) -> str:
        return " ".join(self.listeners)

    async def stop(self) -> None:
        """Stop accepting, let publishes being stored finish, save sessions, close clients."""
        self._stopping.set()
        for server in self._servers:
            server.close()
        for site in self._ws_sites:
            await site.stop()  # stop accepting; open WebSockets close with their clients below
        for task in self._tasks:
            task.cancel()
        for client in list(self.clients):
            await client.drain_publishes()
        if self._unsubscribe is not None:
            self._unsubscribe()
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
                writes.append(self.hs.db.submit(lambda c, k=key, s=session: store.save_session(c, k, s, store.now_ms())))
        if writes:
            await asyncio.gather(*writes, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        if self._ws_runner is not None:
            await self._ws_runner.cleanup()

    def background(self, coro: Any) -> "asyncio.Future[Any]":
        """Run a coroutine the broker waits for when it stops (publishes being stored, saves)."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: "asyncio.Future[Any]") -> None:
        self._bg.discard(task)  # type: ignore[arg-type]
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and not isinstance(exc, (PublishRefused, errors.MatrixError)):
                log.error("MQTT background task failed: %r", exc)

    # -- authentication -------------------------------------------------------------------------

    async def authenticate(self, connect: Connect, peer: str) -> Requester | int:
        """The Matrix account behind a CONNECT, or the MQTT 5 reason code refusing it."""
        accounts = self.hs.accounts
        if connect.username is None:
            if not self.settings.allow_anonymous or connect.password is not None:
                return ReasonCode.NOT_AUTHORIZED
            user_id = accounts.local_user_id(self.settings.anonymous_user)
            if not await accounts.user_exists(user_id):
                log.warning("anonymous MQTT client refused: account %s does not exist", user_id)
                return ReasonCode.NOT_AUTHORIZED
            return Requester(user_id, f"mqtt:{connect.client_id}", False, "")
        if connect.password is None:
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD
        try:
            password = connect.password.decode("utf-8")
        except UnicodeDecodeError:
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD
        user_id = accounts.local_user_id(connect.username)
        try:
            requester = await accounts.authenticate(password)
        except errors.MatrixError:
            requester = None
        if requester is not None:
            if requester.user_id == user_id:
                return requester
        try:
            found = await accounts.check_credentials(connect.username, password, peer)
        except errors.MatrixError as err:
            if err.errcode != "M_LIMIT_EXCEEDED":
                raise
            # The core's login throttle: "try later", not "wrong password" (a client may drop
            # a password it was told is wrong). MQTT 3.1.1 has no such code: Server unavailable.
            return ReasonCode.QUOTA_EXCEEDED
        if found is None:
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD
        return Requester(found, f"mqtt:{connect.client_id}", False, "")

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
        key = store.session_key(requester.user_id, client_id)
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
                await self.hs.db.write(lambda c: store.delete_session(c, key))
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
            await self.hs.db.write(lambda c: store.save_session(c, key, session, None))
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
        self.background(self.hs.db.write(lambda c: store.save_session(c, key, session, store.now_ms())))

    async def _replay(self, key: str, session: SessionState) -> None:
        """After a restart: queue the QoS 1/2 messages the session had not acknowledged, read
        back from the rooms' history (the history is the message store)."""
        upto = self.hs.stream.position
        rooms = self.hs.rooms
        found: list[tuple[int, Event]] = []
        for room_id in rooms.joined_room_ids(session.user_id):
            found += await rooms.timeline(room_id, upto, self.settings.limits.max_queued,
                                          after=session.seen_upto, forwards=True)
        found.sort(key=lambda item: item[0])
        replayed: list[Outgoing] = []
        for pos, event in found[: self.settings.limits.max_queued]:
            for target_key, message in self._messages_for(pos, event, only=key):
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
        if topic.startswith("$"):
            raise PublishRefused(ReasonCode.NOT_AUTHORIZED, "topics starting with $ are reserved")
        room_id = self.rules.resolve(topic)
        if room_id is not None:
            return room_id
        return await self._default_room(requester, topic)

    async def _default_room(self, requester: Requester, topic: str) -> str:
        """The default rule: the room named by the topic's first levels, found by its alias or
        created with the publisher as its creator (and a binding for its topic filter)."""
        key, topic_filter = default_binding(topic, self.settings.room_levels)
        lock = self._room_locks.setdefault(key, asyncio.Lock())
        async with lock:
            room_id = self.rules.resolve(topic)
            if room_id is not None:
                return room_id
            local = alias_localpart(key)
            alias = f"#{local}:{self.hs.server_name}"
            rooms = self.hs.rooms
            room_id = await rooms.resolve_alias_local(alias)
            if room_id is None:
                room_id = await self._create_default_room(requester, key, topic_filter, local, alias)
            else:
                await self._check_default_alias(alias, room_id)
            self._room_locks.pop(key, None)
            return room_id

    async def _create_default_room(self, requester: Requester, key: str, topic_filter: str, local: str,
                                   alias: str) -> str:
        """The publisher's new room for a topic tree, under the broker's reserved alias; the
        publisher owns the tree (docs/mqtt.md). The claim is written first, so an alias made just
        before a crash is still recognised as the broker's."""
        owner = requester.user_id
        if not requester.is_admin and owner in self.admins:  # a password login: its admin flag is not on it
            requester = dataclasses.replace(requester, is_admin=True)
        db = self.hs.db
        self._creating.add(alias)
        try:
            await db.write(lambda c: store.claim_default_room(c, alias, owner))
            self.default_rooms[alias] = (owner, None)
            result = await self.hs.rooms.create_room(requester, {
                "preset": "private_chat",
                "room_alias_name": local,
                "name": f"MQTT {key}",
                "topic": f"MQTT topic filter {topic_filter}",
                "initial_state": [{"type": BINDING_TYPE, "state_key": topic_filter,
                                   "content": {"topic_filter": topic_filter}}],
            }, reserved_alias_ok=True, rate_limit=False)  # the broker's room: the publish is what counts
        except BaseException:
            self.default_rooms.pop(alias, None)
            await db.write(lambda c: store.forget_default_room(c, alias))
            raise
        finally:
            self._creating.discard(alias)
        room_id: str = result["room_id"]
        self.default_rooms[alias] = (owner, room_id)
        self._trusted[alias] = room_id
        await db.write(lambda c: store.set_default_room(c, alias, room_id))
        self._bindings[(room_id, topic_filter)] = owner  # its binding event may still be on its way
        self._apply_bindings()
        log.info("created room %s (%s) for MQTT topics %s", room_id, alias, topic_filter)
        return room_id

    async def _check_default_alias(self, alias: str, room_id: str) -> None:
        """Route by a #mqtt/... alias only if the broker made it (or a hub admin did): one made
        by anyone else (before the namespace was reserved, or written into the database behind
        the hub's back) would collect other users' first publishes in its maker's room."""
        if self._trusted.get(alias) == room_id:
            return
        entry = self.default_rooms.get(alias)
        if entry is not None and entry[1] == room_id:
            self._trusted[alias] = room_id
            return
        creator = await store.alias_creator(self.hs.db, alias)
        if creator is not None and creator in self.admins:
            if entry is not None:  # an admin pointed the alias elsewhere: the old owner's tree is gone
                self.default_rooms.pop(alias, None)
                await self.hs.db.write(lambda c: store.forget_default_room(c, alias))
                self._apply_bindings()
            self._trusted[alias] = room_id
            return
        if alias not in self._logged_untrusted:
            self._logged_untrusted.add(alias)
            log.warning("MQTT: not routing to %s (%s): the alias was made by %s, not by the broker or a hub admin; "
                        "a hub admin can delete it (DELETE /_matrix/client/v3/directory/room/...)",
                        alias, room_id, creator)
        raise PublishRefused(ReasonCode.NOT_AUTHORIZED, f"{alias} was not made by the broker")

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

    async def store_publish(self, requester: Requester, publish: Publish, key: str | None) -> str:
        """Store one PUBLISH as a room event (used for wills; clients go through their pipeline)."""
        room_id = await self.room_for_topic(requester, publish.topic)
        await self.hs.rooms.get_room(room_id)
        event_type, content, state_key = self.prepare(requester, publish, room_id)
        await self.wait_rate(requester.user_id)
        return await self.send(requester, room_id, event_type, content, state_key, publish, key)

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
        for a shared commit go to online subscribers at once (`_deliver_early`)."""
        owns = [_Own(content, publish, key or "") for _, content, _, publish in items]
        for own in owns:
            self._own[id(own.content)] = own
        early: list[int] = []
        on_placed = (lambda entries: early.extend(self._deliver_early(entries))) if deliver_early else None
        fut, outcomes = self.hs.rooms.send_events_nowait(requester, room_id, [item[:3] for item in items], delay,
                                                         on_placed, extras, rate_limit=False)  # admitted
        if not outcomes:
            for own in owns:
                del self._own[id(own.content)]
            return None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for own, outcome in zip(owns, outcomes):
            if isinstance(outcome, str):
                assert fut is not None
                futures.append(fut)
                continue
            del self._own[id(own.content)]
            failed: asyncio.Future[Any] = loop.create_future()
            failed.set_exception(outcome)
            futures.append(failed)
        if fut is not None:
            def forget(_: Any) -> None:  # after COMMIT and after the fan-out that needed them
                for own in owns:
                    if self._own.get(id(own.content)) is own:
                        del self._own[id(own.content)]
                for pos in early:  # the commit failed, or its fan-out is done
                    self._early.pop(pos, None)
                self._bg.discard(fut)  # type: ignore[arg-type]

            self._bg.add(fut)  # type: ignore[arg-type]
            fut.add_done_callback(forget)
        return futures

    async def send(self, requester: Requester, room_id: str, event_type: str, content: dict[str, Any],
                   state_key: str | None, publish: Publish, key: str | None, also: "WriteFn | None" = None) -> str:
        own = _Own(content, publish, key or "")
        ident = id(content)
        self._own[ident] = own
        try:
            return await self.hs.rooms.send_event(requester, room_id, event_type, content, state_key=state_key,
                                                  also=also, rate_limit=False)  # admitted (wait_rate)
        finally:
            if self._own.get(ident) is own:
                del self._own[ident]

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
        touched: set[ClientProtocol] = set()
        recorded: list[int] = []
        for pos, event in entries:
            served: set[str] = set()
            for key, message in self._messages_for(pos, event):
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

    def _on_stream(self, entries: list[tuple[int, Event]]) -> None:
        now = time.monotonic()
        touched: set[ClientProtocol] = set()
        for pos, event in entries:
            if event.type == BINDING_TYPE:
                self._on_binding(event)
            served = self._early.pop(pos, None) if self._early else None
            for key, message in self._messages_for(pos, event):
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
                elif session.persistent and message.qos:
                    session.enqueue(message)
        last = entries[-1][0]
        for session in self.sessions.values():
            if session.seen_upto < last:
                session.seen_upto = last
        for client in touched:
            client.flush_out()

    def _on_binding(self, event: Event) -> None:
        state_key = event.state_key or ""
        if not _valid_binding(state_key):
            return
        if event.content:
            self._bindings[(event.room_id, state_key)] = event.sender
        else:
            self._bindings.pop((event.room_id, state_key), None)
        self._apply_bindings()
        if event.content and event.sender not in self.admins and event.sender.endswith(":" + self.hs.server_name):
            self.background(self._refresh_admins())  # made an admin since the last poll?

    async def _refresh_admins(self) -> None:
        """Hub admins are polled with the admin rules; a change re-decides the rooms' bindings."""
        admins = await self.hs.accounts.admin_user_ids()
        if admins != self.admins:
            self.admins = admins
            self._trusted.clear()
            self._apply_bindings()

    def _tree_owner(self, key: str) -> str | None:
        """Who owns a topic tree: the user the broker made its default room for (while it is
        being made, too: its own binding arrives before create_room returns)."""
        alias = f"#{alias_localpart(key)}:{self.hs.server_name}"
        entry = self.default_rooms.get(alias)
        if entry is None or (entry[1] is None and alias not in self._creating):
            return None
        return entry[0]

    def _apply_bindings(self) -> None:
        """The rules the rooms' bindings make, from who sent each (routing.effective_bindings);
        a binding that does not count is logged once."""
        rules = effective_bindings(self._bindings, self.admins, self._tree_owner, self.settings.room_levels)
        self.rules.set_bindings(rules)
        if len(rules) == len(self._bindings):
            return
        counted = {(rule.room_id, rule.topic_filter) for rule in rules}
        for (room_id, topic_filter), sender in self._bindings.items():
            ident = (room_id, topic_filter, sender)
            if (room_id, topic_filter) in counted or ident in self._logged_ignored:
                continue
            if len(self._logged_ignored) > 10_000:
                self._logged_ignored.clear()
            self._logged_ignored.add(ident)
            log.info("MQTT binding of %r in %s by %s ignored: only a hub admin, or the owner of the topic "
                     "tree it lies in, may bind topics (docs/mqtt.md)", topic_filter, room_id, sender)

    def _messages_for(self, pos: int, event: Event, only: str | None = None) -> list[tuple[str, Outgoing]]:
        """Per session, the message (if any) a committed event becomes."""
        room_id = event.room_id
        etype = event.type
        content = event.content
        origin = ""
        retain = False
        if etype == "m.room.message" and content.get("msgtype") == MESSAGE_MSGTYPE:
            own = self._own.get(id(content))
            if own is not None and own.content is content:
                pub = own.publish
                topic, payload, qos, props, origin = pub.topic, pub.payload, pub.qos, pub.properties, own.session_key
            else:
                parsed = parse_mqtt(content.get("mqtt"))
                if parsed is None or self.rules.resolve(parsed[0]) != room_id:
                    parsed = None
                if parsed is None:
                    return self._generic(pos, event, only)
                topic, payload, qos, props = parsed
        elif etype == RETAINED_TYPE and event.is_state:
            topic = event.state_key or ""
            if self.rules.resolve(topic) != room_id:
                return []
            retain = True
            own = self._own.get(id(content))
            if own is not None and own.content is content:
                pub = own.publish
                payload, qos, props, origin = pub.payload, pub.qos, pub.properties, own.session_key
            elif not content:
                payload, qos, props = b"", 0, {}
            else:
                parsed = parse_mqtt(content)
                if parsed is None or parsed[0] != topic:
                    return []
                _, payload, qos, props = parsed
        elif event.is_state:
            return []
        else:
            return self._generic(pos, event, only)
        return self._targets(room_id, topic, payload, qos, retain, props, pos, origin, event.origin_server_ts, only)

    def _generic(self, pos: int, event: Event, only: str | None) -> list[tuple[str, Outgoing]]:
        if event.type == "m.room.redaction":
            return []
        topic = self.rules.topic_of_room(event.room_id)
        if topic is None:
            return []
        payload = matrix_event_payload(event.event_id, event.sender, event.type, event.content,
                                       event.origin_server_ts)
        return self._targets(event.room_id, topic, payload, 1, False, {"content_type": "application/json"},
                             pos, "", event.origin_server_ts, only)

    def _targets(self, room_id: str, topic: str, payload: bytes, qos: int, retain: bool, props: Any,
                 pos: int, origin: str, ts: int, only: str | None) -> list[tuple[str, Outgoing]]:
        out: list[tuple[str, Outgoing]] = []
        if self.deny and self.deny.hides(topic):
            return out
        memberships = self.hs.rooms.memberships
        expires_at = None
        if props and "message_expiry_interval" in props:
            remaining = props["message_expiry_interval"] - max(0, (time.time() * 1000 - ts) / 1000)
            if remaining <= 0:
                return []
            expires_at = time.monotonic() + remaining
            props = {k: v for k, v in props.items() if k != "message_expiry_interval"}
        sessions = self.sessions
        for key, subs in self.index.match(topic).items():
            if only is not None and key != only:
                continue
            session = sessions.get(key)
            if session is None:
                continue
            joined = memberships.get(session.user_id, {}).get(room_id)
            if joined is None or joined[0] != "join":
                continue
            granted = -1
            rap = False
            sub_ids: list[int] = []
            for sub in subs:
                if sub.no_local and key == origin:
                    continue
                if sub.qos > granted:
                    granted = sub.qos
                rap = rap or sub.retain_as_published
                sid = session.subscription_ids.get(sub.topic_filter)
                if sid:
                    sub_ids.append(sid)
            if granted < 0:
                continue
            out.append((key, self._outgoing(session, topic, payload, min(qos, granted), retain and rap, props,
                                            sub_ids, pos, expires_at)))
        for group, members in self.index.match_shared(topic):
            eligible = []
            for key in members:
                session = sessions.get(key)
                if session is None or (only is not None and key != only):
                    continue
                joined = memberships.get(session.user_id, {}).get(room_id)
                if joined is not None and joined[0] == "join":
                    eligible.append(key)
            online = [k for k in eligible if k in self.online]
            if not (online or eligible):
                continue
            key = self.index.pick(group, online or eligible)
            session = sessions[key]
            sub = members[key]
            sid = session.subscription_ids.get(sub.topic_filter)
            out.append((key, self._outgoing(session, topic, payload, min(qos, sub.qos), False, props,
                                            [sid] if sid else [], pos, expires_at)))
        return out

    @staticmethod
    def _outgoing(session: SessionState, topic: str, payload: bytes, qos: int, retain: bool, props: Any,
                  sub_ids: list[int], pos: int, expires_at: float | None) -> Outgoing:
        if session.protocol_level != MQTT_5:
            props = NO_PROPERTIES
        elif sub_ids:
            props = dict(props or {})
            props["subscription_identifier"] = sub_ids
        return Outgoing(topic, payload, qos, retain, props or NO_PROPERTIES, pos, expires_at)

    # -- subscribe ------------------------------------------------------------------------------

    async def retained_for(self, session: SessionState, key: str, sub: Subscription) -> list[Outgoing]:
        """Retained messages (room state) matching a new subscription, from joined rooms only."""
        shared = parse_shared_subscription(sub.topic_filter)
        if shared is not None:
            return []
        out = []
        rooms = self.hs.rooms
        now_ms = time.time() * 1000
        sid = session.subscription_ids.get(sub.topic_filter)
        for room_id in rooms.joined_room_ids(session.user_id):
            room = await rooms.get_room(room_id)
            for (etype, state_key), event in list(room.state.items()):
                if etype != RETAINED_TYPE or not event.content or not topic_matches(sub.topic_filter, state_key):
                    continue
                if self.deny and self.deny.hides(state_key):
                    continue
                if self.rules.resolve(state_key) != room_id:
                    continue
                parsed = parse_mqtt(event.content)
                if parsed is None or parsed[0] != state_key:
                    continue
                topic, payload, qos, props = parsed
                expires_at = None
                if "message_expiry_interval" in props:
                    remaining = props.pop("message_expiry_interval") - (now_ms - event.origin_server_ts) / 1000
                    if remaining <= 0:
                        continue
                    expires_at = time.monotonic() + remaining
                out.append(self._outgoing(session, topic, payload, min(qos, sub.qos), True, props,
                                          [sid] if sid else [], 0, expires_at))
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
                        self.quiet_timeouts.log(logging.INFO, "MQTT connection from %s closed: no CONNECT within "
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
                        self.background(self.hs.db.write(lambda c, k=key: store.delete_session(c, k)))
                if now - last_rules >= RULES_POLL_SECONDS:
                    last_rules = now
                    if self.rules.set_admin_rules(await store.load_rules(self.hs.db)):
                        log.info("MQTT topic rules changed: %d rules", len(self.rules.rules))
                    await self._refresh_admins()
                if now - last_cursor >= CURSOR_SAVE_SECONDS:
                    last_cursor = now
                    for key, client in list(self.online.items()):
                        session = self.sessions.get(key)
                        if session is not None and session.persistent:
                            cursor = session.cursor()
                            if saved_cursors.get(key) != cursor:
                                saved_cursors[key] = cursor
                                self.background(self.hs.db.write(
                                    lambda c, k=key, v=cursor: store.save_cursor(c, k, v)))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("MQTT ticker failed")


def _valid_binding(topic_filter: str) -> bool:
    return (is_valid_topic_filter(topic_filter, allow_shared=False) and not topic_filter.startswith("$")
            and not topic_filter.startswith("$share/"))


class ClientProtocol(asyncio.Protocol):
    """One TCP (or TLS) connection: bytes to the Connection state machine and back."""

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.conn = Connection(broker.settings.limits, time.monotonic())
        self.transport: asyncio.Transport | None = None
        self.requester: Requester | None = None
        self.key: str | None = None
        self.client_id = ""
        self.peer = ""
        self._acks: deque[tuple[int, int, asyncio.Future[Any] | None]] = deque()
        self._waiting: deque[Publish] = deque()
        self._feeder: asyncio.Task[None] | None = None
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
            broker.quiet_refusals.log(logging.WARNING, "MQTT connection from %s refused: %d open from that address "
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
        pending = [fut for _, _, fut in self._acks if fut is not None]
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
                broker.quiet_quota.log(logging.INFO, "MQTT CONNECT of %r by %s refused: 0x%02X, over "
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
            self._refused(publish, ReasonCode.NOT_AUTHORIZED)
            return True
        room_id = broker.rules.resolve(topic)
        if room_id is None or room_id not in broker.ready_rooms:
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
        return lambda c: store.add_incoming_qos2(c, key, packet_id)

    def _start(self, publish: Publish, room_id: str) -> None:
        assert self.requester is not None
        try:
            event_type, content, state_key = self.broker.prepare(self.requester, publish, room_id)
        except PublishRefused as exc:
            self._refused(publish, exc.reason_code)
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
        delay = broker.settings.qos0_commit_delay if top_qos == 0 else 0.0
        # Delivered before the commit only if no QoS 1/2 publish of this client is still being
        # stored: its subscribers get this client's messages in the order it sent them.
        early = delay > 0 and not any(qos for _, qos, _ in self._acks)
        extras = [self._qos2_record(item[3]) for item in items] if top_qos == 2 else None
        futures = broker.send_batch_nowait(self.requester, room_id, items, self.key, delay, early, extras)
        if futures is None:  # the room left memory meanwhile: one at a time, the awaiting way
            futures = [broker.background(broker.send(self.requester, room_id, event_type, content, state_key,
                                                     publish, self.key, self._qos2_record(publish)))
                       for event_type, content, state_key, publish in items]
        for item, fut in zip(items, futures):
            publish = item[3]
            self._acks.append((publish.packet_id or 0, publish.qos, fut))
        for fut in dict.fromkeys(futures):
            fut.add_done_callback(self._on_stored)

    def _refused(self, publish: Publish, reason_code: int) -> None:
        self._start_batch()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_exception(PublishRefused(reason_code, "refused"))
        self._acks.append((publish.packet_id or 0, publish.qos, done))
        self._on_stored(done)

    def _refused_for_space(self, publish: Publish) -> None:
        self._start_batch()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_exception(errors.storage_full(self.broker.hs.db.admin_contact))
        self._acks.append((publish.packet_id or 0, publish.qos, done))
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
            except PublishRefused as exc:
                self._waiting.popleft()
                self._refused(publish, exc.reason_code)
                continue
            except errors.MatrixError as exc:
                self._waiting.popleft()
                if isinstance(exc, errors.StorageFull):  # its room could not be made: as if its write failed
                    self._refused_for_space(publish)
                    continue
                log.info("MQTT publish to %r by %s refused: %s", publish.topic, self.requester.user_id, exc)
                self._refused(publish, _ERROR_REASONS.get(exc.errcode, ReasonCode.UNSPECIFIED_ERROR))
                continue
            self._start(publish, room_id)
            self._start_batch()
            self._waiting.popleft()
            self._check_pressure()

    def _on_stored(self, _: Any) -> None:
        acks = self._acks
        conn = self.conn
        while acks and acks[0][2] is not None and acks[0][2].done():  # type: ignore[union-attr]
            packet_id, qos, fut = acks.popleft()
            exc = fut.exception() if fut is not None else None  # type: ignore[union-attr]
            if exc is None:
                if qos:
                    conn.ack_publish(packet_id, qos)
                continue
            if isinstance(exc, PublishRefused):
                reason = exc.reason_code
            elif isinstance(exc, errors.MatrixError):
                reason = _ERROR_REASONS.get(exc.errcode, ReasonCode.UNSPECIFIED_ERROR)
            else:
                log.error("MQTT publish failed: %r", exc)
                reason = ReasonCode.UNSPECIFIED_ERROR
            full = isinstance(exc, errors.StorageFull)  # counted and logged once a minute by the store
            if not full and (reason != ReasonCode.NOT_AUTHORIZED or qos):
                log.info("MQTT publish by %r refused: 0x%02X %s", self.client_id, reason, exc)
            if full and qos and conn.level != MQTT_5 and conn.state is State.CONNECTED and self.requester:
                self.broker.held_back.refused((self.requester.user_id, self.client_id), time.monotonic())
            if qos:
                conn.ack_publish(packet_id, qos, reason)
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
                lambda c: store.remove_incoming_qos2(c, key, packet_id)))

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
                    await broker.hs.db.write(lambda c: store.save_session(c, key, session, None))
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
        codes = []
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
                await broker.hs.db.write(lambda c: store.save_session(c, key, session, None))
                self.conn.send_unsuback(packet.packet_id, codes)
                self.flush_out()
            broker.background(save_then_ack())
        else:
            self.conn.send_unsuback(packet.packet_id, codes)
