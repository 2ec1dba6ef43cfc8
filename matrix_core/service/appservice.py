"""Application services: the as_token (and `?user_id=` masquerading), exclusive namespaces, and
the push of events to each AS (`PUT {url}/_matrix/app/v1/transactions/{txnId}`), the user and
room queries and the ping. The rules are pure (appservice_rules.py); positions are in
store/appservice.py.

Push, off the send path: the committed event stream hands each batch to `_on_events`, which only
checks each event against the AS's namespaces in memory (set lookups and a cached regex answer per
sender) and wakes that AS's sender task when one interests it. The task reads events back from the
store after the AS's durable position, so an AS that is down, slow or answering 500 costs a local
send nothing, and after an outage or a hub restart it gets every event, in order, batched. With
no AS registered nothing subscribes at all (the MQTT path pays nothing).

Encrypted appservices (MSC2409, MSC3202): a transaction also carries the to-device messages for the
AS's users' devices (read back from the to-device inbox after the AS's stored position there, so they
are durable like its events; an MSC3202 AS's exclusive users' messages are deleted from the inbox once
it has them, as nobody syncs those devices), the device-list changes of the users its users share
rooms with, and its users' devices' one-time and fallback key counts when they changed. Presence
goes with typing and receipts in `ephemeral`. Each part wakes only the senders of the ASes it
concerns (hooks on service/to_device.py, e2e_keys.py and presence.py, installed only when a
registration asks for it)."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import aiohttp

from .. import errors
from .. import presence_state
from ..appservice_rules import (MAX_TRANSACTION_EVENTS, Extensions, Registration, backoff_s, device_list_summary,
                                interested, key_counts, to_device_entry, transaction_body)
from ..ephemeral import READ, Receipt, receipt_events, typing_event
from ..events import Event
from ..log_limit import LogLimiter
from ..store import accounts as account_rows
from ..store import appservice as as_rows
from ..store import devices as device_rows
from ..store import e2e_keys as key_rows
from ..store import to_device as to_device_rows
from .accounts import Requester

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

SCAN_PAGE = 500  # events read back per query while catching up
REQUEST_TIMEOUT_S = 30.0
QUERY_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 15.0
_MATCH_CACHE = 10_000
MAX_EPHEMERAL = 100  # typing, receipts and presence held for one AS
MAX_TRANSACTION_TO_DEVICE = 100  # to-device messages per transaction (a backlog goes in several)


class _Sender:
    """One AS's delivery state: its position, its transaction counter, its wake-up."""

    def __init__(self, reg: Registration) -> None:
        self.reg = reg
        self.position = 0  # in memory: may be ahead of the stored one over events of no interest
        self.txn_id = 1
        self.pending_upto: int | None = None
        self.wake = asyncio.Event()
        self.caught_up = False
        self.task: asyncio.Task[None] | None = None
        self.member_rooms: set[str] = set()
        self.alias_rooms: set[str] = set()
        self.delivered = 0
        self.ephemeral: list[dict[str, Any]] = []  # typing, receipts, presence to go with the next transaction
        # MSC2409/MSC3202 streams: the stored position, the newest news (hint), the pending
        # transaction's bound (None: none pending in that stream)
        self.to_device = 0
        self.to_device_hint = 0
        self.pending_to_device: int | None = None
        self.device_lists = 0
        self.device_lists_hint = 0
        self.pending_device_lists: int | None = None
        self.dirty_keys: set[tuple[str, str]] = set()  # devices whose key counts the AS has yet to hear
        self.ephemeral_failures = 0  # failed tries in a row of a transaction with no events


class _Side:
    """The to-device messages and device-list changes one transaction carries, with the bounds
    of each stream it covers (None: that stream is not part of it)."""

    def __init__(self) -> None:
        self.to_device: list[dict[str, Any]] = []
        self.consumed: list[int] = []  # stream ids to delete from the inbox once the AS has them
        self.taken: dict[tuple[str, str], int] = {}
        self.to_device_bounds: tuple[int, int] | None = None
        self.device_lists: tuple[list[str], list[str]] = ([], [])
        self.device_lists_bounds: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return self.to_device_bounds is not None or self.device_lists_bounds is not None


class AppServices:
    def __init__(self, hs: Homeserver, registrations: tuple[Registration, ...]) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.registrations: tuple[Registration, ...] = ()
        self.by_token: dict[str, Registration] = {}
        self.by_id: dict[str, Registration] = {}
        self._senders: dict[str, _Sender] = {}
        self._user_cache: dict[str, tuple[Registration, ...]] = {}  # user id -> the ASes whose namespace has it
        self._registered: set[str] = set()  # users an AS has masqueraded as (known to exist)
        self._unsubscribe: Callable[[], None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._logs = LogLimiter(interval=300.0)
        self._started = False
        self._stopping = False
        self._any_ephemeral = False
        self._any_msc3202 = False
        self._hooks: set[str] = set()
        self._set(registrations)

    def _set(self, registrations: tuple[Registration, ...]) -> None:
        """The registrations in force; hooks into the core are installed with the first (none: the
        core pays nothing, not even a call)."""
        self.registrations = registrations
        self.by_token = {reg.as_token: reg for reg in registrations}
        self.by_id = {reg.id: reg for reg in registrations}
        self._user_cache.clear()
        if registrations and self.hs.accounts.appservice_requester is None:
            hs = self.hs
            hs.accounts.appservice_requester = self.requester
            hs.accounts.query_user = self.query_user
            hs.rooms.alias_service.exclusive_alias_check = self.check_alias
            hs.rooms.alias_service.query_alias = self.query_alias
            hs.rooms.alias_service.alias_listeners.append(self._alias_created)
            hs.typing.listeners.append(self._on_typing)
            hs.receipts.listeners.append(self._on_receipts)
        self._any_ephemeral = any(reg.receive_ephemeral for reg in registrations)
        self._any_msc3202 = any(reg.msc3202 for reg in registrations)
        if self._any_ephemeral and "to_device" not in self._hooks:
            self._hooks.add("to_device")
            self.hs.to_device.listeners.append(self._on_to_device)
            self.hs.presence.listeners.append(self._on_presence)
        if self._any_msc3202 and "e2e" not in self._hooks:
            self._hooks.add("e2e")
            self.hs.e2e_keys.on_moved.append(self._on_device_lists)
            self.hs.e2e_keys.on_counts_changed.append(self._on_key_counts)
        self.hs.message_limiter.exempt = self._unlimited if any(not r.rate_limited for r in registrations) else None

    # -- who is who --------------------------------------------------------------------------------

    def owners_of(self, user_id: str) -> tuple[Registration, ...]:
        found = self._user_cache.get(user_id)
        if found is None:
            found = tuple(reg for reg in self.registrations if reg.is_user_in_namespace(user_id, self.server_name))
            if len(self._user_cache) >= _MATCH_CACHE:
                self._user_cache.clear()
            self._user_cache[user_id] = found
        return found

    def _unlimited(self, user_id: str) -> bool:
        return any(not reg.rate_limited for reg in self.owners_of(user_id))

    def exclusive_owner(self, user_id: str) -> Registration | None:
        return next((reg for reg in self.registrations if reg.is_exclusive_user(user_id)), None)

    async def requester(self, token: str) -> Requester | None:
        """The requester of an as_token ("as_token\nuser_id[\ndevice_id]" when masquerading, see
        `masquerade`); None when it is not an AS's token."""
        as_token, _, rest = token.partition("\n")
        reg = self.by_token.get(as_token)
        if reg is None:
            return None
        user_id, _, device_id = rest.partition("\n")
        sender = reg.sender(self.server_name)
        user_id = user_id or sender
        if user_id != sender:
            if not reg.is_user_in_namespace(user_id, self.server_name):
                raise errors.forbidden(f"Application service cannot masquerade as {user_id}: not in its namespace")
            if user_id not in self._registered:
                if not await account_rows.user_known(self.hs.db, user_id):
                    raise errors.forbidden(f"Application service has not registered {user_id}")
                if len(self._registered) >= _MATCH_CACHE:
                    self._registered.clear()
                self._registered.add(user_id)  # an account is never deleted (deactivated ids stay taken)
        if device_id:
            # MSC3202 device masquerading: the AS acts as one of its user's devices (uploads its
            # keys, sends its to-device messages), which must exist (Synapse's check and error)
            if await device_rows.device(self.hs.db, user_id, device_id) is None:
                raise errors.MatrixError(400, "M_UNKNOWN_DEVICE", f"Application service trying to use a device "
                                         f"that doesn't exist ('{device_id}' for {user_id})")
            return Requester(user_id, device_id, False, token)
        return Requester(user_id, f"AS_{reg.id}", False, token)

    def masquerade(self, token: str | None, user_id: str | None, device_id: str | None = None) -> str | None:
        """The token dispatch authenticates with: an AS's token with `?user_id=` carries the user,
        and MSC3202's `?org.matrix.msc3202.device_id=` (or `?device_id=`) one of its devices."""
        if token is None or (user_id is None and not device_id) or token not in self.by_token:
            return token
        return f"{token}\n{user_id or ''}" + (f"\n{device_id}" if device_id else "")

    def check_user_registration(self, user_id: str, as_token: str | None) -> Registration | None:
        """Registration of `user_id`: by an AS (its token) only inside its users namespace
        (M_EXCLUSIVE); by anyone else never inside an exclusive one. Returns the AS registering."""
        reg = self.by_token.get(as_token) if as_token else None
        if reg is not None:
            if not reg.is_user_in_namespace(user_id, self.server_name):
                raise errors.exclusive(f"{user_id} is not in the users namespace of appservice {reg.id}")
            return reg
        owner = self.exclusive_owner(user_id)
        if owner is not None:
            raise errors.exclusive(f"{user_id} is in the exclusive namespace of an application service")
        return None

    def check_alias(self, requester: Requester, alias: str) -> None:
        """An alias in an AS's exclusive namespace is that AS's (and its users')."""
        for reg in self.registrations:
            if reg.is_exclusive_alias(alias) and reg not in self.owners_of(requester.user_id):
                raise errors.exclusive(f"{alias} is in the exclusive namespace of an application service")

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        for reg in self.registrations:
            await self._start_sender(reg)

    async def reload(self, registrations: tuple[Registration, ...]) -> list[str]:
        """Apply a new set of (checked) registrations to the running hub (`matrix-gateway
        appservice add/remove`): senders of removed or changed ones stop, new ones start from
        their stored position (or now). Returns what changed, for the log."""
        old = self.by_id
        new = {reg.id: reg for reg in registrations}
        changed = [i for i in old if i not in new or new[i] != old[i]]
        for reg_id in changed:
            await self._stop_sender(self._senders.pop(reg_id))
        self._set(tuple(registrations))
        if self._started:
            for reg in registrations:
                if reg.id not in self._senders:
                    await self._start_sender(reg)
        return [f"-{i}" for i in changed if i not in new] + [f"+{i}" for i in new if i not in old or i in changed]

    async def _start_sender(self, reg: Registration) -> None:
        bot = reg.sender(self.server_name)
        if not await account_rows.user_known(self.hs.db, bot):
            # A bridge's or bot's users join the rooms they are invited to, not the household's.
            await self.hs.accounts.create_user(bot, None, household=False)
        await self.hs.db.write(partial(as_rows.start_at, as_id=reg.id, position=self.hs.stream.position,
                                       device_lists=self.hs.e2e_keys.position()))
        sender = _Sender(reg)
        for alias, room_id in await as_rows.aliases(self.hs.db):
            if reg.is_alias_in_namespace(alias):
                sender.alias_rooms.add(room_id)
        for user_id, rooms in self.hs.rooms.memberships.items():
            if reg.is_user_in_namespace(user_id, self.server_name):
                sender.member_rooms.update(r for r, (m, _) in rooms.items() if m in ("join", "invite"))
        stored = await as_rows.state(self.hs.db, reg.id)
        assert stored is not None
        sender.position, sender.txn_id, sender.pending_upto = stored.position, stored.txn_id, stored.txn_upto
        sender.to_device, sender.pending_to_device = stored.to_device, stored.txn_to_device_upto
        sender.device_lists, sender.pending_device_lists = stored.device_lists, stored.txn_device_list_upto
        if reg.receive_ephemeral:
            sender.to_device_hint = self.hs.to_device.position()  # what waits for its users is read once
        if reg.msc3202:
            sender.device_lists_hint = self.hs.e2e_keys.position()
            sender.dirty_keys = {key for key in self.hs.e2e_keys.devices_with_keys() if reg in self.owners_of(key[0])}
        self._senders[reg.id] = sender
        if self._unsubscribe is None:
            self._unsubscribe = self.hs.stream.subscribe(self._on_events)
        if reg.url is not None:
            sender.task = asyncio.get_running_loop().create_task(self._run(sender), name=f"appservice-{reg.id}")
            sender.wake.set()

    async def _stop_sender(self, sender: _Sender) -> None:
        if sender.task is not None:
            sender.task.cancel()
            try:
                await sender.task
            except (asyncio.CancelledError, Exception):
                pass
        try:  # events of no interest seen since the last transaction need not be read again
            await self.hs.db.write(partial(as_rows.skip_to, as_id=sender.reg.id, position=sender.position,
                                           to_device=sender.to_device, device_lists=sender.device_lists))
        except Exception:
            log.debug("could not save an appservice position", exc_info=True)

    async def stop(self) -> None:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for sender in list(self._senders.values()):
            await self._stop_sender(sender)
        if self._session is not None:
            await self._session.close()

    def _alias_created(self, alias: str, room_id: str) -> None:
        for sender in self._senders.values():
            if sender.reg.is_alias_in_namespace(alias):
                sender.alias_rooms.add(room_id)

    # -- push --------------------------------------------------------------------------------------

    def _interests(self, sender: _Sender, ev: Event) -> bool:
        """Cheap for an event of no interest: two set lookups and a dict hit per user id (the
        namespace regexes run once per user id, cached in `owners_of`)."""
        reg = sender.reg
        return interested(reg, ev.pdu, self.server_name, sender.member_rooms, sender.alias_rooms,
                          lambda user_id: reg in self.owners_of(user_id))

    def _track_membership(self, ev: Event) -> None:
        """Keep each AS's rooms with one of its users in them (a member event of one of its users)."""
        target = ev.state_key
        if target is None:
            return
        for reg in self.owners_of(target):
            if reg.id not in self._senders:
                continue
            rooms = self._senders[reg.id].member_rooms
            if ev.content.get("membership") in ("join", "invite"):
                rooms.add(ev.room_id)
            elif not any(ev.room_id in joined and joined[ev.room_id][0] in ("join", "invite") and u != target
                         and reg in self.owners_of(u) for u, joined in self.hs.rooms.memberships.items()):
                rooms.discard(ev.room_id)  # its last user left (rare: a scan of the local users is fine)

    def _on_events(self, entries: list[tuple[int, Event]]) -> None:
        """On the committed-event path (MQTT's too): per event and AS, two set lookups and a dict
        hit for the sender; the full rules (`_interests`) only for member events and an AS with a
        rooms namespace. bench/appservice.py measures it."""
        cache = self._user_cache
        for _, ev in entries:
            if ev.pdu.get("type") == "m.room.member":
                self._track_membership(ev)
        for sender in self._senders.values():
            if sender.task is None:
                continue
            reg, member_rooms, alias_rooms = sender.reg, sender.member_rooms, sender.alias_rooms
            full_check = bool(reg.rooms)
            for pos, ev in entries:
                pdu = ev.pdu
                room_id, user_id = pdu.get("room_id"), pdu.get("sender", "")
                owners = cache.get(user_id)
                if owners is None:
                    owners = self.owners_of(user_id)
                if room_id in member_rooms or room_id in alias_rooms or reg in owners or (
                        (full_check or pdu.get("type") == "m.room.member") and self._interests(sender, ev)):
                    sender.caught_up = False
                    sender.wake.set()
                    break
                if sender.caught_up and pos > sender.position:
                    sender.position = pos  # nothing to read back for it

    async def _run(self, sender: _Sender) -> None:
        while not self._stopping:
            try:
                if sender.pending_upto is not None:
                    await self._send_pending(sender)
                    continue
                sender.wake.clear()
                rows = await as_rows.events_between(self.hs.db, sender.position, None, SCAN_PAGE)
                picked: list[Event] = []
                upto = sender.position
                if rows:
                    picked, upto = self._pick(sender, rows)
                    if not picked:
                        sender.position = max(sender.position, upto)
                        continue
                else:
                    # Caught up only if no event of interest came while the read ran: it may have
                    # been committed after the read's snapshot (it woke us). Counting ourselves
                    # caught up then would let the next event of no interest move the position
                    # past the unread one (`_on_events`), which would never be delivered.
                    sender.caught_up = not sender.wake.is_set()
                side = await self._side(sender)
                if not picked and not side:
                    if sender.ephemeral or sender.dirty_keys:
                        await self._send_ephemeral(sender)
                        continue
                    await sender.wake.wait()
                    continue
                txn_id, start = sender.txn_id, sender.position
                await self.hs.db.write(lambda conn: as_rows.begin_transaction(
                    conn, sender.reg.id, txn_id, start, upto, side.to_device_bounds, side.device_lists_bounds))
                sender.pending_upto = upto
                sender.pending_to_device = side.to_device_bounds[1] if side.to_device_bounds else None
                sender.pending_device_lists = side.device_lists_bounds[1] if side.device_lists_bounds else None
                await self._send_pending(sender, picked, side)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a full disk must not stop an AS's delivery for good
                self._logs.log(log, logging.WARNING, f"run {sender.reg.id}", "appservice %s delivery failed: %r",
                               sender.reg.id, exc)
                await asyncio.sleep(1.0)

    async def _side(self, sender: _Sender) -> _Side:
        """The to-device messages and device-list changes news has come for (the hints), read
        from their streams after the AS's positions. A stream that held nothing for the AS just
        moves its position (in memory, saved with the next transaction or at stop)."""
        side = _Side()
        if sender.to_device_hint > sender.to_device:
            last = await self._read_to_device(sender, sender.to_device, sender.to_device_hint, side)
            if side.to_device:
                side.to_device_bounds = (sender.to_device, last)
            else:
                sender.to_device = last
        if sender.device_lists_hint > sender.device_lists:
            hint = sender.device_lists_hint
            changed, left = await self._device_list_changes(sender, sender.device_lists, hint)
            if changed or left:
                side.device_lists, side.device_lists_bounds = (changed, left), (sender.device_lists, hint)
            else:
                sender.device_lists = hint
        return side

    async def _read_to_device(self, sender: _Sender, after: int, upto: int, side: _Side,
                              limit: int = MAX_TRANSACTION_TO_DEVICE) -> int:
        """The AS's users' messages in (after, upto] into `side` (at most `limit`); returns the
        stream position they cover. Other devices' messages still waiting are read past once."""
        reg, server = sender.reg, self.server_name
        while True:
            rows = await to_device_rows.messages_after(self.hs.db, after, upto, SCAN_PAGE)
            for stream_id, user_id, device_id, text in rows:
                if reg not in self.owners_of(user_id):
                    continue
                if len(side.to_device) == limit:
                    return stream_id - 1
                side.to_device.append(to_device_entry(user_id, device_id, json.loads(text)))
                if reg.msc3202:
                    sender.dirty_keys.add((user_id, device_id))  # MSC3202: counts of the devices it names
                if reg.consumes_to_device(user_id, server):
                    side.consumed.append(stream_id)
                    side.taken[(user_id, device_id)] = stream_id
            if len(rows) < SCAN_PAGE:
                return upto
            after = rows[-1][0]

    async def _device_list_changes(self, sender: _Sender, after: int, upto: int) -> tuple[list[str], list[str]]:
        rows = await key_rows.all_changes(self.hs.db, after, upto)
        if not rows:
            return [], []
        reg = sender.reg
        sharing: set[str] = set()
        for room_id in list(sender.member_rooms):
            sharing.update((await self.hs.rooms.get_room(room_id)).joined_users())
        return device_list_summary(rows, sharing.__contains__, lambda user_id: reg in self.owners_of(user_id))

    def _events_of(self, rows: list[tuple[Any, ...]]) -> list[tuple[int, Event]]:
        rooms = self.hs.rooms
        return rooms.rows_to_events([r for r in rows if rooms.room_version(r[2]) is not None])

    def _pick(self, sender: _Sender, rows: list[tuple[Any, ...]]) -> tuple[list[Event], int]:
        """The events of interest among `rows` (at most a transaction's worth) and the position
        the transaction covers."""
        picked: list[Event] = []
        upto = prev = rows[-1][0]
        for pos, ev in self._events_of(rows):
            if self._interests(sender, ev):
                if len(picked) == MAX_TRANSACTION_EVENTS:
                    upto = prev
                    break
                picked.append(ev)
            prev = pos
        return picked, upto

    async def _send_pending(self, sender: _Sender, picked: list[Event] | None = None,
                            side: _Side | None = None) -> None:
        """Send the recorded transaction until the AS takes it, then move the positions (and
        delete the to-device messages it has taken for good). After a restart its events,
        to-device messages and device-list changes are read again between the stored positions
        and its bounds."""
        upto = sender.pending_upto
        assert upto is not None
        if picked is None or side is None:
            stored = await as_rows.state(self.hs.db, sender.reg.id)
            assert stored is not None
            rows = await as_rows.events_between(self.hs.db, stored.position, upto, 1_000_000)
            picked = [ev for _, ev in self._events_of(rows) if self._interests(sender, ev)]
            side = _Side()
            if sender.pending_to_device is not None:
                await self._read_to_device(sender, stored.to_device, sender.pending_to_device, side, limit=1_000_000)
            if sender.pending_device_lists is not None:
                side.device_lists = await self._device_list_changes(sender, stored.device_lists,
                                                                    sender.pending_device_lists)
        ephemeral, sender.ephemeral = sender.ephemeral, []
        body = transaction_body([self.hs.rooms.serialize(ev) for ev in picked], ephemeral,
                                self._extensions(sender, side))
        failures = 0
        while True:
            if await self._put_transaction(sender.reg, sender.txn_id, body):
                break
            failures += 1
            await asyncio.sleep(backoff_s(failures))
        next_txn = sender.txn_id + 1
        td, dl, consumed = sender.pending_to_device, sender.pending_device_lists, side.consumed

        def finish(conn: Any) -> None:
            if consumed:
                to_device_rows.delete_messages(conn, consumed)
            as_rows.finish_transaction(conn, sender.reg.id, next_txn, upto, td, dl)

        await self.hs.db.write(finish)
        if side.taken:
            self.hs.to_device.taken(side.taken)
        sender.txn_id, sender.pending_upto = next_txn, None
        sender.position = max(sender.position, upto)
        if td is not None:
            sender.to_device = max(sender.to_device, td)
        if dl is not None:
            sender.device_lists = max(sender.device_lists, dl)
        sender.pending_to_device = sender.pending_device_lists = None
        sender.delivered += len(picked)

    def _extensions(self, sender: _Sender, side: _Side) -> Extensions:
        """The transaction's MSC2409/MSC3202 parts; key counts (current values, from memory) of
        the devices whose counts changed or that the transaction names."""
        otk: dict[str, Any] = {}
        fallback: dict[str, Any] = {}
        if sender.reg.msc3202 and sender.dirty_keys:
            keys = self.hs.e2e_keys
            otk, fallback = key_counts(sender.dirty_keys, keys.counts, keys.unused_fallback_types)
            sender.dirty_keys = set()
        return Extensions(to_device=side.to_device, device_lists=side.device_lists, otk_counts=otk,
                          fallback_types=fallback)

    async def _send_ephemeral(self, sender: _Sender) -> None:
        """Typing, receipts, presence and key counts with no event to go with them: one try (they
        are news only now; an AS that is down misses them, as a client that is offline does; key
        counts are sent again with its next transaction)."""
        ephemeral, sender.ephemeral = sender.ephemeral, []
        dirty = set(sender.dirty_keys)
        txn_id = sender.txn_id
        body = transaction_body([], ephemeral, self._extensions(sender, _Side()))
        ok = await self._put_transaction(sender.reg, txn_id, body)
        # The id is used up even when the try failed: the AS may have handled it and lost only
        # its answer (a timeout), and it drops a transaction id it has seen, so the next
        # transaction (other content: events, to-device messages) must not reuse it.
        position = sender.position
        await self.hs.db.write(lambda conn: as_rows.finish_transaction(conn, sender.reg.id, txn_id + 1, position))
        sender.txn_id = txn_id + 1
        if not ok:
            sender.dirty_keys |= dirty  # kept: tried again after a backoff as long as the AS is down
            sender.ephemeral_failures += 1
            await asyncio.sleep(backoff_s(sender.ephemeral_failures))
            return
        sender.ephemeral_failures = 0

    def _room_interests(self, sender: _Sender, room_id: str) -> bool:
        return room_id in sender.member_rooms or room_id in sender.alias_rooms or \
            (bool(sender.reg.rooms) and sender.reg.is_room_in_namespace(room_id))

    def _push_ephemeral(self, room_id: str, event: dict[str, Any]) -> None:
        for sender in self._senders.values():
            if sender.reg.receive_ephemeral and sender.task is not None and self._room_interests(sender, room_id):
                if len(sender.ephemeral) >= MAX_EPHEMERAL:
                    del sender.ephemeral[0]  # an AS far behind gets the latest, not every keystroke
                sender.ephemeral.append({**event, "room_id": room_id})
                sender.wake.set()

    def _on_to_device(self, newest: dict[tuple[str, str], int]) -> None:
        """To-device messages committed for local devices: wake the ASes of their users."""
        for (user_id, _), stream_id in newest.items():
            for reg in self.owners_of(user_id):
                sender = self._senders.get(reg.id)
                if sender is not None and sender.task is not None and reg.receive_ephemeral \
                        and stream_id > sender.to_device_hint:
                    sender.to_device_hint = stream_id
                    sender.wake.set()

    def _on_device_lists(self, position: int) -> None:
        for sender in self._senders.values():
            if sender.reg.msc3202 and sender.task is not None and position > sender.device_lists_hint:
                sender.device_lists_hint = position
                sender.wake.set()

    def _on_key_counts(self, user_id: str, device_id: str) -> None:
        for reg in self.owners_of(user_id):
            sender = self._senders.get(reg.id)
            if sender is not None and sender.task is not None and reg.msc3202:
                sender.dirty_keys.add((user_id, device_id))
                sender.wake.set()

    def _on_presence(self, user_id: str, state: presence_state.UserPresence) -> None:
        """A local user's presence changed: an m.presence EDU for the ASes (with
        receive_ephemeral) that share a room with them, or whose user it is (as Synapse)."""
        rooms = [r for r, (m, _) in self.hs.rooms.memberships.get(user_id, {}).items() if m == "join"]
        event: dict[str, Any] | None = None
        for sender in self._senders.values():
            reg = sender.reg
            if not reg.receive_ephemeral or sender.task is None:
                continue
            if reg in self.owners_of(user_id) or any(self._room_interests(sender, r) for r in rooms):
                if event is None:
                    event = presence_state.event(user_id, state, self.hs.presence.clock())
                if len(sender.ephemeral) >= MAX_EPHEMERAL:
                    del sender.ephemeral[0]
                sender.ephemeral.append(event)
                sender.wake.set()

    def _on_typing(self, room_id: str) -> None:
        if self._any_ephemeral:
            self._push_ephemeral(room_id, typing_event(self.hs.typing.typers(room_id)))

    def _on_receipts(self, receipts: list[Receipt]) -> None:
        if not self._any_ephemeral:
            return
        public = [r for r in receipts if r.receipt_type == READ]
        for room_id, event in receipt_events(public, "").items():
            self._push_ephemeral(room_id, event)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "matrix-gateway appservice"})
        return self._session

    def _headers(self, reg: Registration) -> dict[str, str]:
        return {"Authorization": f"Bearer {reg.hs_token}", "Content-Type": "application/json"}

    async def _put_transaction(self, reg: Registration, txn_id: int, body: dict[str, Any]) -> bool:
        url = f"{reg.url}/_matrix/app/v1/transactions/{txn_id}"
        try:
            async with self._client().put(url, json=body, headers=self._headers(reg), allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
                self._logs.log(log, logging.INFO, f"push {reg.id}", "appservice %s answered %d to a transaction",
                               reg.id, resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self._logs.log(log, logging.INFO, f"push {reg.id}", "appservice %s unreachable: %s", reg.id,
                           exc.__class__.__name__ if not str(exc) else exc)
        return False

    # -- queries and ping --------------------------------------------------------------------------

    async def _query(self, reg: Registration, path: str) -> bool:
        if reg.url is None:
            return False
        try:
            async with self._client().get(f"{reg.url}{path}", headers=self._headers(reg), allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self._logs.log(log, logging.INFO, f"query {reg.id}", "appservice %s query failed: %r", reg.id, exc)
            return False

    async def query_user(self, user_id: str) -> bool:
        """Ask the ASes whose namespace has the unknown `user_id` to create it (lazy users)."""
        for reg in self.owners_of(user_id):
            if await self._query(reg, f"/_matrix/app/v1/users/{quote(user_id, safe='')}"):
                return True
        return False

    async def before_invite(self, user_id: str) -> None:
        """An invite of a local user of an AS's namespace that does not exist yet: ask the AS first
        (Synapse asks when it looks up the invitee's profile). The invite goes ahead either way."""
        if self.owners_of(user_id) and user_id not in self._registered \
                and not await account_rows.user_known(self.hs.db, user_id):
            await self.query_user(user_id)

    async def query_alias(self, alias: str) -> bool:
        """Ask the ASes whose namespace has the unknown `alias` to create its room (lazy rooms)."""
        for reg in self.registrations:
            if reg.is_alias_in_namespace(alias) and await self._query(
                    reg, f"/_matrix/app/v1/rooms/{quote(alias, safe='')}"):
                return True
        return False

    async def ping(self, requester_token: str | None, appservice_id: str, transaction_id: str | None) -> dict[str, Any]:
        """POST /_matrix/client/v1/appservice/{id}/ping: call the AS's /_matrix/app/v1/ping."""
        reg = self.by_token.get((requester_token or "").partition("\n")[0])
        if reg is None:
            raise errors.forbidden("Only an application service may ping itself") if requester_token \
                else errors.missing_token()
        if reg.id != appservice_id:
            raise errors.forbidden("This token belongs to another application service")
        if reg.url is None:
            raise errors.MatrixError(400, "M_URL_NOT_SET", "The application service has no URL")
        body = {} if transaction_id is None else {"transaction_id": transaction_id}
        started = time.monotonic()
        try:
            async with self._client().post(f"{reg.url}/_matrix/app/v1/ping", json=body, headers=self._headers(reg),
                                           allow_redirects=False,
                                           timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT_S)) as resp:
                raw = await resp.content.read(64 * 1024)
                status = resp.status
        except asyncio.TimeoutError:
            raise errors.MatrixError(504, "M_CONNECTION_TIMEOUT", "The application service did not answer") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise errors.MatrixError(502, "M_CONNECTION_FAILED", f"Could not reach the application service: {exc}") \
                from None
        if status != 200:
            err = errors.MatrixError(502, "M_BAD_STATUS", f"The application service answered {status}")
            err.extra.update(status=status, body=raw.decode("utf-8", "replace"))  # the spec's fields
            raise err
        return {"duration_ms": int((time.monotonic() - started) * 1000)}

