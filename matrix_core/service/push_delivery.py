"""Pushers and the delivery of notifications to their HTTP push gateways.

Three steps, each off the send path (a send returns once its event is committed; nothing here is
awaited by it):

1. The committed event stream hands each batch to `_on_events`, which only appends it to a deque
   (a subscriber must not block the stream).
2. One evaluation task takes the events in order and, for each local joined member other than the
   sender who has a pusher, asks the push-rules service (`PushDecisions`) whether to notify. The
   notifications it makes are committed to the durable queue (store/pushers.py) together with the
   stream position they cover.
3. One delivery task per pusher with queued rows POSTs them, oldest first, to the pusher's
   gateway: a bounded number of requests in flight in the whole hub, each with a timeout, no
   redirects followed. A failure is retried with exponential backoff; a notification past the
   retry window (or refused with a 4xx) is dropped with one rate-limited log line. A gateway's
   `rejected` pushkeys delete those pushers.

So a gateway that is down, slow or answering 500 costs a send nothing, and its notifications
survive a hub restart.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

import aiohttp

from .. import errors
from ..clock import now_ms
from ..events import Event
from ..log_limit import LogLimiter
from ..push_gateway import (MAX_PUSHERS_PER_USER, DeletePusher, EventFacts, PusherConfig, RetryPolicy, SetPusher,
                            notification, notify_body, permanent_failure, rejected_pushkeys, should_notify,
                            tweaks_for)
from ..store import pushers as push_rows
from .accounts import Requester, TokensRevoked

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

# Events held in memory for evaluation; past this (evaluation far behind) they are dropped and
# re-read from the store from the last position covered, in pages of CATCH_UP_PAGE.
MAX_PENDING_EVENTS = 10_000
CATCH_UP_PAGE = 200
# How often the covered position is saved when no notification moved it (so a restart does not
# re-read a long stretch of events that notified nobody); never more than one write a minute.
POSITION_SAVE_INTERVAL_MS = 60_000
MAX_ANSWER_BYTES = 64 * 1024


class PushDecisions(Protocol):
    """What delivery asks of the push-rules service (`hs.push`, service/push.py)."""

    async def actions_for(self, user_id: str, event: Event) -> list[Any]:
        """The actions of the first matching rule: empty means no notification; "notify" in
        them means notify; `set_tweak` entries (sound, highlight) go into the notification."""
        ...

    async def unread_counts(self, user_id: str, room_id: str) -> tuple[int, int]:
        """(notification_count, highlight_count) of the user in the room."""
        ...


class PushDelivery:
    def __init__(self, hs: Homeserver, policy: RetryPolicy, clock: Callable[[], int] = now_ms) -> None:
        self.hs = hs
        self.policy = policy
        self.clock = clock
        self.pushers: dict[int, PusherConfig] = {}
        self._by_user: dict[str, set[int]] = {}
        self._pending: deque[tuple[int, Event]] = deque()
        self._wake = asyncio.Event()
        self._catch_up = False
        self._overflows = 0
        self._covered = 0  # stream position whose notifications are all queued
        self._saved = 0  # ... as last written
        self._saved_at = 0
        self._deliveries: dict[int, asyncio.Task[None]] = {}
        # Per pusher: the newest queued row id, and the last one handled (sent or dropped). Rows
        # are read after the last handled one, and a read that finds none while the newest is
        # further on (its snapshot predates the commit) reads again: never twice, never stranded.
        self._queued_upto: dict[int, int] = {}
        self._handled_upto: dict[int, int] = {}
        self._evaluator: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._forget_listener: Callable[[], None] | None = None
        self._logs = LogLimiter(interval=300.0)
        self._stopping = False
        self.delivered = 0  # since start (not shown anywhere yet)
        self.dropped = 0

    @property
    def rules(self) -> PushDecisions:
        return self.hs.push

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for pusher_id, pusher in await push_rows.all_pushers(self.hs.db):
            self._remember(pusher_id, pusher)
        head = self.hs.stream.position
        saved = await push_rows.position(self.hs.db)
        if (saved is None or not self.pushers or saved > head) and saved != head:
            # Nobody to notify (or a first start): nothing before now is news.
            saved = head
            try:
                await self.hs.db.write(lambda conn: push_rows.reset_position(conn, head))
            except errors.StorageFull:  # kept in memory; saved later (a full disk must not stop a start)
                pass
        self._covered = self._saved = saved
        self._saved_at = self.clock()
        self._catch_up = saved < head
        self._in_flight = asyncio.Semaphore(self.policy.max_concurrent)
        self._unsubscribe = self.hs.stream.subscribe(self._on_events)
        self._forget_listener = self.hs.accounts.on_revoked(self._on_revoked)
        loop = asyncio.get_running_loop()
        self._evaluator = loop.create_task(self._evaluate(), name="push-evaluate")
        if self._catch_up:
            self._wake.set()
        for pusher_id, newest in await push_rows.queued_upto(self.hs.db):
            self._kick(pusher_id, newest)

    async def stop(self) -> None:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._forget_listener is not None:
            self._forget_listener()
        tasks = [t for t in (self._evaluator, *self._deliveries.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._covered > self._saved:
            covered = self._covered
            try:
                await self.hs.db.write(lambda conn: push_rows.set_position(conn, covered))
            except Exception:  # a full disk: the next start re-reads those events
                log.debug("could not save the push position", exc_info=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- pushers (the client API) ----------------------------------------------------------------

    def _remember(self, pusher_id: int, pusher: PusherConfig) -> None:
        self.pushers[pusher_id] = pusher
        self._by_user.setdefault(pusher.user_id, set()).add(pusher_id)

    def _forget(self, pusher_ids: list[int]) -> None:
        for pusher_id in pusher_ids:
            pusher = self.pushers.pop(pusher_id, None)
            if pusher is None:
                continue
            ids = self._by_user.get(pusher.user_id)
            if ids is not None:
                ids.discard(pusher_id)
                if not ids:
                    del self._by_user[pusher.user_id]

    def list_pushers(self, user_id: str) -> list[dict[str, Any]]:
        return [self.pushers[pid].as_client_json() for pid in sorted(self._by_user.get(user_id, ()))]

    async def set_pusher(self, requester: Requester, request: SetPusher | DeletePusher) -> None:
        user_id = requester.user_id
        if isinstance(request, DeletePusher):
            app_id, pushkey = request.app_id, request.pushkey
            removed = await self.hs.db.write(lambda conn: push_rows.delete_pusher(conn, user_id, app_id, pushkey))
            self._forget(removed)
            return
        mine = [self.pushers[pid] for pid in self._by_user.get(user_id, ())]
        if len(mine) >= MAX_PUSHERS_PER_USER and not any(
                p.app_id == request.app_id and p.pushkey == request.pushkey for p in mine):
            raise errors.resource_limit_exceeded(
                f"An account may have at most {MAX_PUSHERS_PER_USER} pushers", self.hs.settings.admin_contact)
        pusher = PusherConfig(user_id, requester.device_id, request.app_id, request.pushkey, request.kind,
                              request.app_display_name, request.device_display_name, request.profile_tag,
                              request.lang, request.data, self.clock())
        append = request.append
        pusher_id, stored, removed = await self.hs.db.write(lambda conn: push_rows.set_pusher(conn, pusher, append))
        self._forget(removed)
        self._remember(pusher_id, stored)

    def _on_revoked(self, revoked: TokensRevoked) -> None:
        """A device logged out (or all of the user's): its pushers go, as Synapse's do. The
        memory view changes now (GET /pushers after the logout no longer lists them), the rows
        with the next commit."""
        ids = [pid for pid in self._by_user.get(revoked.user_id, ())
               if revoked.device_id is None or self.pushers[pid].device_id == revoked.device_id]
        if not ids:
            return
        self._forget(ids)
        fut = self.hs.db.submit(lambda conn: push_rows.delete_pusher_ids(conn, ids))
        fut.add_done_callback(_log_write_failure)

    # -- 1. the event stream -----------------------------------------------------------------

    def _on_events(self, entries: list[tuple[int, Event]]) -> None:
        if not self._by_user and not self._pending and not self._catch_up:
            # No account has a pusher: nothing to evaluate, no task to wake (the MQTT hot path).
            self._covered = max(self._covered, max(pos for pos, _ in entries))
            return
        self._pending.extend(entries)
        if len(self._pending) > MAX_PENDING_EVENTS:  # far behind: read them from the store instead
            self._pending.clear()
            self._overflows += 1
            self._catch_up = True
        self._wake.set()

    # -- 2. evaluation -----------------------------------------------------------------------

    async def _evaluate(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            more = True
            while more and not self._stopping:
                try:
                    more = await self._evaluate_next()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug or a full disk must not stop pushes for good
                    self._logs.log(log, logging.WARNING, "evaluate", "push evaluation failed: %r", exc)
                    await asyncio.sleep(1.0)  # not a busy loop while it lasts

    async def _evaluate_next(self) -> bool:
        """Evaluate the next batch of events (from the store while catching up, else from memory);
        False when there is none."""
        if self._catch_up:
            overflows = self._overflows
            rows = await push_rows.events_after(self.hs.db, self._covered, CATCH_UP_PAGE)
            if not rows:
                # Caught up, unless events were cleared from memory during the read (some may have
                # committed after it): `_pending` holds every later one.
                self._catch_up = self._overflows != overflows
                return True
            rooms = self.hs.rooms
            oldest_ms = self.clock() - int(self.policy.give_up_after_s * 1000)
            batch = [(pos, ev) for pos, ev in rooms.rows_to_events(
                [r for r in rows if rooms.room_version(r[2]) is not None]) if ev.origin_server_ts >= oldest_ms]
            await self._evaluate_batch(batch, max(r[0] for r in rows))
            return True
        if not self._pending:
            return False
        batch = list(self._pending)
        self._pending.clear()
        await self._evaluate_batch(batch, max(pos for pos, _ in batch))
        return True

    async def _evaluate_batch(self, batch: list[tuple[int, Event]], last: int) -> None:
        rows: list[push_rows.NewRow] = []
        for pos, ev in batch:
            if pos <= self._covered or not self._by_user:
                continue
            rows.extend(await self._notifications_for(ev))
        covered = max(self._covered, last)
        now = self.clock()
        if rows:
            cap = self.policy.max_queued_per_pusher
            dropped, newest = await self.hs.db.write(lambda conn: push_rows.enqueue(conn, rows, covered, cap))
            self._covered = self._saved = covered
            self._saved_at = now
            if dropped:
                self.dropped += dropped
                self._logs.log(log, logging.WARNING, "overflow",
                               "push queue full: dropped the %d oldest notifications", dropped)
            for pusher_id, row_id in newest.items():
                self._kick(pusher_id, row_id)
            return
        self._covered = covered
        # With no pusher at all nothing is saved (a start then begins at the newest event anyway).
        if self._by_user and covered > self._saved and now - self._saved_at >= POSITION_SAVE_INTERVAL_MS:
            self._saved, self._saved_at = covered, now
            await self.hs.db.write(lambda conn: push_rows.set_position(conn, covered))

    async def _notifications_for(self, ev: Event) -> list[push_rows.NewRow]:
        room = self.hs.rooms.loaded_room(ev.room_id)
        if room is None:
            try:
                room = await self.hs.rooms.get_room(ev.room_id)
            except errors.MatrixError:
                return []
        users = [u for u in self._by_user if u != ev.sender and room.member(u) == "join"]
        if not users:
            return []
        rows: list[push_rows.NewRow] = []
        facts: EventFacts | None = None
        now = self.clock()
        for user_id in users:
            actions = await self.rules.actions_for(user_id, ev)
            if not should_notify(actions):
                continue
            if facts is None:
                sender_member = room.state.get(("m.room.member", ev.sender))
                name = room.state_content("m.room.name").get("name") or \
                    room.state_content("m.room.canonical_alias").get("alias")
                display = sender_member.content.get("displayname") if sender_member is not None else None
                facts = EventFacts(ev.event_id, ev.room_id, ev.type, ev.sender, ev.content, ev.state_key,
                                   display if isinstance(display, str) else None,
                                   name if isinstance(name, str) else None)
            unread = await self._unread(user_id)
            tweaks = tweaks_for(actions)
            for pusher_id in sorted(self._by_user.get(user_id, ())):
                pusher = self.pushers[pusher_id]
                rows.append((pusher_id, now, notification(facts, user_id, tweaks, unread, pusher.event_id_only),
                             tweaks))
        return rows

    async def _unread(self, user_id: str) -> int:
        """The badge: unread notifications across the user's rooms (the spec's counts.unread)."""
        total = 0
        for room_id in self.hs.rooms.joined_room_ids(user_id):
            total += (await self.rules.unread_counts(user_id, room_id))[0]
        return total

    # -- 3. delivery ---------------------------------------------------------------------------

    def _kick(self, pusher_id: int, newest_row: int) -> None:
        """Rows up to `newest_row` are queued for the pusher: make sure its delivery task runs."""
        self._queued_upto[pusher_id] = max(self._queued_upto.get(pusher_id, 0), newest_row)
        if pusher_id not in self._deliveries and not self._stopping:
            self._deliveries[pusher_id] = asyncio.get_running_loop().create_task(
                self._deliver(pusher_id), name=f"push-deliver-{pusher_id}")

    async def _deliver(self, pusher_id: int) -> None:
        failures = unseen = 0
        try:
            while not self._stopping:
                pusher = self.pushers.get(pusher_id)
                if pusher is None:
                    return
                handled = self._handled_upto.get(pusher_id, 0)
                try:
                    row = await push_rows.next_notification(self.hs.db, pusher_id, handled)
                    if row is None:
                        if self._queued_upto.get(pusher_id, 0) <= handled or unseen >= 500:
                            return  # all handled (or the newest rows are gone: 5 s of reads)
                        unseen += 1
                        await asyncio.sleep(0.01)  # queued, but this read began before its commit
                        continue
                    unseen = 0
                    outcome = await self._deliver_one(pusher, row)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a full disk, a bug: try again later, never a dead task
                    self._logs.log(log, logging.WARNING, "deliver", "push delivery failed: %r", exc)
                    outcome = "retry"
                if outcome == "retry":
                    failures += 1  # counted in memory: a write per failed try would wear an SD card
                    await asyncio.sleep(self.policy.backoff(failures))
                    continue
                failures = 0
                assert row is not None
                self._handled_upto[pusher_id] = row.row_id
        finally:
            self._deliveries.pop(pusher_id, None)
            if pusher_id not in self.pushers:
                self._queued_upto.pop(pusher_id, None)
                self._handled_upto.pop(pusher_id, None)

    async def _deliver_one(self, pusher: PusherConfig, row: push_rows.QueuedNotification) -> str:
        """Send (or drop) the pusher's oldest notification; "retry" when it is to be tried again."""
        if self.policy.expired(row.queued_ts, self.clock()):
            await self._drop(row.row_id, pusher, f"not delivered within {self.policy.give_up_after_s:g}s")
            return "dropped"
        outcome = await self._post(pusher, row)
        if outcome == "refused":
            await self._drop(row.row_id, pusher, "refused by the gateway")
        elif outcome == "sent":
            await self.hs.db.write(lambda conn: push_rows.remove_notification(conn, row.row_id))
            self.delivered += 1
        return outcome

    async def _drop(self, row_id: int, pusher: PusherConfig, why: str) -> None:
        await self.hs.db.write(lambda conn: push_rows.remove_notification(conn, row_id))
        self.dropped += 1
        self._logs.log(log, logging.WARNING, f"drop {pusher.url}",
                       "dropped a notification for %s to %s: %s", pusher.user_id, pusher.url, why)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.policy.max_concurrent),
                headers={"User-Agent": "matrix-gateway push"})
        return self._session

    async def _post(self, pusher: PusherConfig, row: push_rows.QueuedNotification) -> str:
        """One notify request: "sent", "refused" (a 4xx: sending it again cannot help) or
        "retry". Redirects are not followed (a gateway is configured by its exact URL)."""
        body = json.dumps(notify_body(row.notification, pusher, row.tweaks)).encode()
        assert self._in_flight is not None
        try:
            async with self._in_flight:
                async with self._client().post(pusher.url, data=body, allow_redirects=False,
                                               headers={"Content-Type": "application/json"}) as resp:
                    raw = await resp.content.read(MAX_ANSWER_BYTES)
                    status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self._logs.log(log, logging.INFO, f"fail {pusher.url}", "push gateway %s unreachable: %s",
                           pusher.url, exc.__class__.__name__ if not str(exc) else exc)
            return "retry"
        if permanent_failure(status):
            return "refused"
        if status != 200:
            self._logs.log(log, logging.INFO, f"fail {pusher.url}", "push gateway %s answered %d", pusher.url, status)
            return "retry"
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        rejected = [key for key in rejected_pushkeys(answer) if key == pusher.pushkey]
        if rejected:
            await self._reject(pusher)
        return "sent"

    async def _reject(self, pusher: PusherConfig) -> None:
        """The gateway says the pushkey is dead (the app was uninstalled): delete the pusher."""
        ids = [pid for pid, p in self.pushers.items()
               if p.user_id == pusher.user_id and p.app_id == pusher.app_id and p.pushkey == pusher.pushkey]
        if not ids:
            return
        log.info("push gateway %s rejected a pushkey of %s (app %s): pusher deleted", pusher.url, pusher.user_id,
                 pusher.app_id)
        self._forget(ids)
        await self.hs.db.write(lambda conn: push_rows.delete_pusher_ids(conn, ids))


def _log_write_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("deleting the pushers of a logged-out device failed: %s", fut.exception())
