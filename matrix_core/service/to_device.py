"""To-device messages (PUT /sendToDevice/{type}/{txnId}): Olm-encrypted room keys, key
requests, verification. Stored before the sender's 200 (store/to_device.py), handed to the
recipient device's /sync (`to_device`), and deleted once that device syncs again with a token past
them (it has them then). Idempotent per sender device and transaction id.

Which devices have messages waiting is kept in memory, so /sync of a device with nothing waiting
(every device that never encrypts) reads nothing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any, Callable

from .. import e2e_rules as rules
from .. import errors
from ..clock import now_ms
from ..identifiers import server_of
from ..log_limit import LogLimiter
from ..store import e2e_federation as outbox_rows
from ..store import to_device as rows
from .accounts import Requester, TokensRevoked
from .sync_sources import SyncContext, SyncOutput, SyncSource

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)


class ToDevice:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.db = hs.db
        self._position = 0
        self._pending: dict[tuple[str, str], int] = {}  # (user, device) -> newest stream id waiting
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = LogLimiter(60.0)
        # Set by federation: called with the (outbox id, destination, EDU) rows just committed for
        # remote users; without it, messages for other servers are dropped (one log line).
        self.federation: Callable[[list[tuple[int, str, dict[str, Any]]]], None] | None = None
        # Called with {(user, device): newest stream id} after messages for local devices are
        # committed (application services pick their users' share: service/appservice.py).
        self.listeners: list[Callable[[dict[tuple[str, str], int]], None]] = []
        self.source = ToDeviceSource(self)
        hs.sync.add_source(self.source)
        hs.accounts.on_revoked(self._on_revoked)

    async def load(self) -> None:
        self._position = await rows.position(self.db)
        for user_id, device_id, newest in await rows.pending(self.db):
            self._pending[(user_id, device_id)] = newest

    async def stop(self) -> None:
        for task in list(self._tasks):
            try:
                await task
            except Exception:
                log.debug("to-device clean-up failed at stop", exc_info=True)

    def position(self) -> int:
        return self._position

    async def send(self, requester: Requester, event_type: str, txn_id: str, body: dict[str, Any]) -> None:
        if len(txn_id) > rules.MAX_TXN_ID or len(event_type) > 255 or not event_type:
            raise errors.invalid_param("Event type or transaction id too long")
        messages = rules.check_to_device(body)
        local: list[tuple[str, str, str]] = []  # (user, device or "*", message JSON)
        remote: dict[str, dict[str, Any]] = {}  # server -> user -> device -> content
        for user_id, devices in messages.items():
            if server_of(user_id) != self.hs.server_name:
                if self.federation is None:
                    self._log.log(log, logging.INFO, "to-device-remote",
                                  "to-device messages for other servers are dropped (federation is not enabled)")
                    continue
                for content in devices.values():
                    if len(json.dumps(content).encode()) > rules.MAX_TO_DEVICE_BYTES:
                        raise errors.too_large(f"A to-device message may be at most {rules.MAX_TO_DEVICE_BYTES} bytes")
                remote.setdefault(server_of(user_id), {})[user_id] = devices
                continue
            for device_id, content in devices.items():
                text = json.dumps({"type": event_type, "sender": requester.user_id, "content": content},
                                  ensure_ascii=False, separators=(",", ":"))
                if len(text.encode()) > rules.MAX_TO_DEVICE_BYTES:
                    raise errors.too_large(f"A to-device message may be at most {rules.MAX_TO_DEVICE_BYTES} bytes")
                local.append((user_id, device_id, text))
        now = now_ms()

        edus = [(server, {"edu_type": "m.direct_to_device",
                          "content": {"sender": requester.user_id, "type": event_type,
                                      "message_id": secrets.token_urlsafe(16), "messages": by_user}})
                for server, by_user in sorted(remote.items())]
        queued: list[tuple[int, str, dict[str, Any]]] = []

        def write(conn: Any) -> dict[tuple[str, str], int] | None:
            expanded = _addressed_devices(conn, local)
            newest = rows.store(conn, requester.user_id, requester.device_id, txn_id, now, expanded)
            if newest is not None and edus:  # durable before the 200, sent by federation after it
                ids = outbox_rows.add_outbox(conn, [(server, json.dumps(edu, ensure_ascii=False)) for server, edu in edus])
                queued[:] = [(i, server, edu) for i, (server, edu) in zip(ids, edus)]
            return newest

        newest = await self.db.write(write)
        if queued and self.federation is not None:
            self.federation(queued)
        self._delivered(newest)  # nothing for a retry of a transaction already stored, or nobody to tell

    async def receive_remote(self, origin: str, sender: str, event_type: str, message_id: str,
                             messages: dict[str, dict[str, Any]]) -> None:
        """An `m.direct_to_device` EDU (checked by federation/e2e.py): into our devices' inboxes,
        once per (sender, message_id) however often the origin retries the transaction."""
        local: list[tuple[str, str, str]] = []
        for user_id, devices in messages.items():
            if server_of(user_id) != self.hs.server_name:
                continue
            for device_id, content in devices.items():
                local.append((user_id, device_id, json.dumps({"type": event_type, "sender": sender, "content": content},
                                                             ensure_ascii=False, separators=(",", ":"))))
        if local:
            await self._store(sender, f"federation {origin}", message_id, local)

    async def _store(self, sender: str, sender_device: str, txn_id: str, local: list[tuple[str, str, str]]) -> None:
        now = now_ms()

        def write(conn: Any) -> dict[tuple[str, str], int] | None:
            return rows.store(conn, sender, sender_device, txn_id, now, _addressed_devices(conn, local))

        self._delivered(await self.db.write(write))

    def _delivered(self, newest: dict[tuple[str, str], int] | None) -> None:
        if not newest:
            return
        for key, stream_id in newest.items():
            self._pending[key] = max(self._pending.get(key, 0), stream_id)
        top = max(newest.values())
        if top > self._position:
            self._position = top
            self.hs.sync.notify()
        for listener in self.listeners:
            listener(newest)

    def taken(self, delivered: dict[tuple[str, str], int]) -> None:
        """Messages up to these stream ids were handed to an application service and deleted
        (store: delete_messages): a /sync of those devices need not look for them."""
        for key, stream_id in delivered.items():
            if self._pending.get(key, 0) <= stream_id:
                self._pending.pop(key, None)

    async def deliver(self, user_id: str, device_id: str, since: int, upto: int) -> list[dict[str, Any]]:
        """The device's messages in (since, upto]; those up to `since` were in an earlier answer
        the device has now acknowledged by syncing from its token: they go."""
        key = (user_id, device_id)
        if key not in self._pending:
            return []
        if since > 0:
            await self.db.write(lambda conn: rows.acknowledge(conn, user_id, device_id, since))
            if self._pending.get(key, 0) <= since:  # re-read: a message may have come meanwhile
                self._pending.pop(key, None)
                return []
        return [json.loads(text) for text in await rows.messages(self.db, user_id, device_id, since, upto)]

    def _on_revoked(self, revoked: TokensRevoked) -> None:
        task = asyncio.get_running_loop().create_task(self._forget_dead_devices(revoked.user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget_dead_devices(self, user_id: str) -> None:
        def write(conn: Any) -> list[str]:
            rows.forget_dead_devices(conn, user_id)
            return rows.live_devices(conn, user_id)

        live = set(await self.db.write(write))
        for key in [k for k in self._pending if k[0] == user_id and k[1] not in live]:
            self._pending.pop(key, None)


class ToDeviceSource(SyncSource):
    """/sync's `to_device` for the requesting device."""

    stream = "to_device"

    def __init__(self, to_device: ToDevice) -> None:
        self.to_device = to_device

    def position(self) -> int:
        return self.to_device.position()

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        events = await self.to_device.deliver(ctx.requester.user_id, ctx.requester.device_id, since, upto)
        out.add_top("to_device", events)


def _addressed_devices(conn: Any, local: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(user, device, message) for each device a message reaches, inside the writer's
    transaction: `*` is every live device of the user; a device that does not exist gets nothing."""
    expanded: list[tuple[str, str, str]] = []
    live: dict[str, list[str]] = {}
    for user_id, device_id, text in local:
        if user_id not in live:
            live[user_id] = rows.live_devices(conn, user_id)
        if device_id == "*":
            expanded.extend((user_id, d, text) for d in live[user_id])
        elif device_id in live[user_id]:
            expanded.append((user_id, device_id, text))
    return expanded
