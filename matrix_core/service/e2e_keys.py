"""End-to-end encryption keys, server side: device keys, one-time and fallback keys, and who is
told that whose devices changed (/sync's `device_lists`, /keys/changes). The hub never sees
plaintext: it stores what devices upload (shape-checked by e2e_rules) and hands it on.

Device-list changes go into one stream (store/e2e_keys.py): a key upload or a deleted device
is a change for everyone who shares a room with the user; a join tells the joiner about every
member and every member about the joiner; a leave tells both sides `left` when they no longer
share any room. The stream is read per sync only when its position moved since the client's
token, so a user who never encrypts pays nothing per /sync; the one-time key counts every answer
carries come from memory.

Cross-signing (service/cross_signing.py, `hs.cross_signing`) adds to query answers:
`keys_for_query(requester, user_ids)` (master/self-signing/user-signing keys) and
`device_signatures(user_id, device_id)` (signatures to merge into a device's keys). It reads a
device's stored keys through `stored_device_keys`, and a change of a user's cross-signing keys is
a device-list change like a new device (`on_keys_changed`).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import e2e_rules as rules
from .. import errors
from ..events import Event
from ..identifiers import server_of
from ..store import cross_signing as cross_signing_rows
from ..store import e2e_keys as rows
from .accounts import Requester, TokensRevoked
from .sync_sources import SyncContext, SyncOutput, SyncSource

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

SIGNED_CURVE25519 = "signed_curve25519"
DEFAULT_REMOTE_TIMEOUT_MS = 10_000  # /keys/query and /keys/claim's `timeout` when absent (as Synapse)
MAX_REMOTE_TIMEOUT_MS = 60_000


class RemoteKeys(Protocol):
    """What federation (federation/e2e.py) does for remote users' keys: asks their servers, in
    parallel, each at most `timeout` seconds; a server that fails is named in the failures."""

    async def query(self, wanted: dict[str, list[str]], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]: ...

    async def claim(self, wanted: dict[str, dict[str, str]], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]: ...


def remote_timeout(body: dict[str, Any]) -> float:
    """The request's `timeout` (ms) in seconds, bounded."""
    value = body.get("timeout", DEFAULT_REMOTE_TIMEOUT_MS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        value = DEFAULT_REMOTE_TIMEOUT_MS
    return min(float(value), MAX_REMOTE_TIMEOUT_MS) / 1000.0


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class E2eKeys:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.db = hs.db
        self.server_name = hs.server_name
        self._position = 0
        # (user, device) -> algorithm -> unclaimed one-time keys; and unused fallback algorithms
        self._otk_counts: dict[tuple[str, str], dict[str, int]] = {}
        self._fallback: dict[tuple[str, str], list[str]] = {}
        # Local users with device keys: membership changes of anyone else cost no write at all.
        self._with_keys: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by federation: remote users' keys, and who hears of our users' device changes
        # (f(user_id, device_ids, stream_id) after the change is committed).
        self.remote: RemoteKeys | None = None
        self.on_local_change: list[Callable[[str, list[str], int], None]] = []
        # Application services (MSC3202): told when the device-list stream moves (its position),
        # and when a device's one-time or fallback key counts change (user, device).
        self.on_moved: list[Callable[[int], None]] = []
        self.on_counts_changed: list[Callable[[str, str], None]] = []
        self.source = DeviceListSource(self)
        hs.sync.add_source(self.source)
        hs.accounts.on_revoked(self._on_revoked)
        self._unsubscribe = hs.stream.subscribe(self._on_events)
        hs.cross_signing.device_keys = self.stored_device_keys
        hs.cross_signing.on_keys_changed.append(self._on_cross_signing_changed)

    async def load(self) -> None:
        self._position = await rows.position(self.db)
        for user_id, device_id, algorithm, count in await rows.one_time_key_counts(self.db):
            self._otk_counts.setdefault((user_id, device_id), {})[algorithm] = count
        for user_id, device_id, algorithm in await rows.unused_fallback_keys(self.db):
            self._fallback.setdefault((user_id, device_id), []).append(algorithm)
        self._with_keys = set(await rows.users_with_device_keys(self.db))

    async def stop(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            try:
                await task
            except Exception:
                log.debug("device-list bookkeeping failed at stop", exc_info=True)

    def position(self) -> int:
        return self._position

    def _moved(self, position: int) -> None:
        if position > self._position:
            self._position = position
            self.hs.sync.notify()
            for listener in self.on_moved:
                listener(position)

    def is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    # -- /keys/upload ------------------------------------------------------------------------

    def counts(self, user_id: str, device_id: str) -> dict[str, int]:
        """The device's one-time key counts as /sync and /keys/upload answer them: signed_curve25519
        always named, 0 included (clients decide from it to upload more, as with Synapse), and the
        legacy curve25519 too (matrix-nio's response schema requires both)."""
        return {"curve25519": 0, SIGNED_CURVE25519: 0, **self._otk_counts.get((user_id, device_id), {})}

    def unused_fallback_types(self, user_id: str, device_id: str) -> list[str]:
        return list(self._fallback.get((user_id, device_id), []))

    def devices_with_keys(self) -> set[tuple[str, str]]:
        """(user, device) of every device holding one-time or fallback keys (from memory)."""
        return set(self._otk_counts) | set(self._fallback)

    async def upload(self, requester: Requester, body: dict[str, Any]) -> dict[str, Any]:
        user_id, device_id = requester.user_id, requester.device_id
        device_keys = None
        if body.get("device_keys") is not None:
            device_keys = dict(rules.check_device_keys(body["device_keys"], user_id, device_id))
            device_keys.pop("unsigned", None)
        otks = rules.check_one_time_keys(body["one_time_keys"]) if body.get("one_time_keys") is not None else {}
        fallback = rules.fallback_keys_of(body)
        otk_rows = [(rules.algorithm_of(k), k.split(":", 1)[1], _text(v)) for k, v in otks.items()]
        fallback_rows = [(rules.algorithm_of(k), k.split(":", 1)[1], _text(v)) for k, v in (fallback or {}).items()]

        def write(conn: Any) -> tuple[dict[str, int], list[str], int]:
            change = 0
            if device_keys is not None:
                old = rows.device_keys_in(conn, user_id, device_id)
                new = _text(device_keys)
                if old is not None and json.loads(old).get("keys") != device_keys["keys"]:
                    raise errors.invalid_param("This device already has different identity keys; "
                                               "a new identity needs a new device (log in again)")
                if old != new:
                    rows.set_device_keys(conn, user_id, device_id, new)
                    change = rows.add_change(conn, user_id)
            if otk_rows:
                existing = rows.one_time_keys_in(conn, user_id, device_id, [(a, k) for a, k, _ in otk_rows])
                for algorithm, key_id, text in otk_rows:
                    if existing.get((algorithm, key_id), text) != text:
                        raise errors.invalid_param(f"One-time key {algorithm}:{key_id[:60]} already exists "
                                                   "with a different value")
                rows.add_one_time_keys(conn, user_id, device_id, otk_rows)
            counts = rows.count_one_time_keys(conn, user_id, device_id)
            if sum(counts.values()) > rules.MAX_ONE_TIME_KEYS:
                raise errors.too_large(f"A device may hold at most {rules.MAX_ONE_TIME_KEYS} one-time keys")
            if fallback_rows:
                rows.set_fallback_keys(conn, user_id, device_id, fallback_rows)
            return counts, rows.unused_fallback_types(conn, user_id, device_id), change

        counts, unused, change = await self.db.write(write)
        if device_keys is not None:
            self._with_keys.add(user_id)
        self._set_counts(user_id, device_id, counts, unused)
        self._moved(change)
        if change:
            self._tell_local_change(user_id, [device_id], change)
        return {"one_time_key_counts": self.counts(user_id, device_id)}

    def _set_counts(self, user_id: str, device_id: str, counts: dict[str, int], unused: list[str]) -> None:
        key = (user_id, device_id)
        if counts:
            self._otk_counts[key] = counts
        else:
            self._otk_counts.pop(key, None)
        if unused:
            self._fallback[key] = unused
        else:
            self._fallback.pop(key, None)
        for listener in self.on_counts_changed:
            listener(user_id, device_id)

    # -- /keys/query -------------------------------------------------------------------------

    def _tell_local_change(self, user_id: str, device_ids: list[str], stream_id: int) -> None:
        for hook in self.on_local_change:
            try:
                hook(user_id, device_ids, stream_id)
            except Exception as exc:
                log.warning("device-list change hook failed: %s", exc)

    async def query(self, requester: Requester, body: dict[str, Any]) -> dict[str, Any]:
        wanted = rules.check_query(body)
        local = {u: d for u, d in wanted.items() if self.is_local(u)}
        remote = {u: d for u, d in wanted.items() if not self.is_local(u)}
        answer = await self.local_keys(requester.user_id, local)
        answer["failures"] = {}
        if remote and self.remote is None:
            for user_id in remote:
                answer["failures"][server_of(user_id)] = {"status": 503, "message": "Federation is not enabled"}
        elif remote:
            assert self.remote is not None
            got, failures = await self.remote.query(remote, remote_timeout(body))
            for field, by_user in got.items():
                answer.setdefault(field, {}).update(by_user)
            answer["failures"].update(failures)
        return answer

    async def local_keys(self, requester_user_id: str, wanted: dict[str, list[str]]) -> dict[str, Any]:
        """Local users' device keys and cross-signing keys, for /keys/query and the federation
        /user/keys/query (requester "": nobody's user-signing key)."""
        cross_signing = self.hs.cross_signing
        answer: dict[str, Any] = {"device_keys": {}}
        for user_id, device_ids in wanted.items():
            devices: dict[str, Any] = {}
            for device_id, key_json, display_name in await rows.device_keys(self.db, user_id, device_ids):
                keys = json.loads(key_json)
                for signer, by_key in (await cross_signing.device_signatures(user_id, device_id)).items():
                    keys.setdefault("signatures", {}).setdefault(signer, {}).update(by_key)
                keys["unsigned"] = {"device_display_name": display_name} if display_name is not None else {}
                devices[device_id] = keys
            answer["device_keys"][user_id] = devices
        for field, by_user in (await cross_signing.keys_for_query(requester_user_id, list(wanted))).items():
            answer.setdefault(field, {}).update(by_user)
        return answer

    async def stored_device_keys(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        """A device's keys as it uploaded them (cross-signing checks signatures against them)."""
        found = await rows.device_keys(self.db, user_id, [device_id])
        return json.loads(found[0][1]) if found else None

    def _on_cross_signing_changed(self, user_id: str) -> None:
        self._spawn(self._record_change(user_id))

    async def _record_change(self, user_id: str) -> None:
        """New cross-signing keys or signatures: a device-list change for whoever shares a room."""
        self._with_keys.add(user_id)
        self._moved(await self.db.write(lambda conn: rows.add_change(conn, user_id)))

    # -- /keys/claim -------------------------------------------------------------------------

    async def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = rules.check_claim(body)
        remote = {u: d for u, d in wanted.items() if not self.is_local(u)}
        answer = await self.claim_local({u: d for u, d in wanted.items() if self.is_local(u)})
        if remote and self.remote is None:
            for user_id in remote:
                answer["failures"][server_of(user_id)] = {"status": 503, "message": "Federation is not enabled"}
        elif remote:
            assert self.remote is not None
            got, failures = await self.remote.claim(remote, remote_timeout(body))
            answer["one_time_keys"].update(got)
            answer["failures"].update(failures)
        return answer

    async def claim_local(self, wanted: dict[str, dict[str, str]]) -> dict[str, Any]:
        """Claim local users' keys (for /keys/claim and the federation /user/keys/claim)."""
        failures: dict[str, Any] = {}
        local: list[tuple[str, str, str]] = []
        for user_id, devices in wanted.items():
            local.extend((user_id, device_id, algorithm) for device_id, algorithm in devices.items())

        def write(conn: Any) -> tuple[list[tuple[str, str, str, str]], dict[tuple[str, str], tuple[dict[str, int], list[str]]]]:
            claimed = []
            touched = {}
            for user_id, device_id, algorithm in local:
                got = rows.claim_key(conn, user_id, device_id, algorithm)
                if got is not None:
                    claimed.append((user_id, device_id, f"{algorithm}:{got[0]}", got[1]))
                    touched[(user_id, device_id)] = (rows.count_one_time_keys(conn, user_id, device_id),
                                                     rows.unused_fallback_types(conn, user_id, device_id))
            return claimed, touched

        claimed, touched = await self.db.write(write) if local else ([], {})
        for (user_id, device_id), (counts, unused) in touched.items():
            self._set_counts(user_id, device_id, counts, unused)
        keys: dict[str, Any] = {}
        for user_id, device_id, key_id, key_json in claimed:
            key = json.loads(key_json)
            keys.setdefault(user_id, {})[device_id] = {key_id: key}
        return {"one_time_keys": keys, "failures": failures}

    # -- device-list changes -----------------------------------------------------------------

    async def sharing(self, user_id: str) -> set[str]:
        """Users who share a joined room with the (local) user, the user included."""
        users = {user_id}
        for room_id in self.hs.rooms.joined_room_ids(user_id):
            room = await self.hs.rooms.get_room(room_id)
            users.update(room.joined_users())
        return users

    async def changes_for(self, user_id: str, after: int, upto: int) -> tuple[list[str], list[str]]:
        """(changed, left) users for the local user in (after, upto] of the device-list stream."""
        found = await rows.changes(self.db, user_id, after, upto)
        if not found:
            return [], []
        shared: set[str] | None = None
        latest: dict[str, str] = {}
        for subject, recipient, kind in found:
            if recipient is None:
                if shared is None:
                    shared = await self.sharing(user_id)
                if subject in shared:
                    latest[subject] = rows.CHANGED
            else:
                latest[subject] = kind
        changed = sorted(u for u, k in latest.items() if k == rows.CHANGED)
        left = sorted(u for u, k in latest.items() if k == rows.LEFT and u != user_id)
        return changed, left

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("device-list bookkeeping failed: %s", task.exception())

    def _on_events(self, entries: list[tuple[int, Event]]) -> None:
        if not self._with_keys:
            return  # nobody here encrypts: membership changes are nobody's device-list news
        members = [ev for _, ev in entries if ev.type == "m.room.member" and ev.state_key is not None]
        if members:
            self._spawn(self._membership_changes(members))

    async def _membership_changes(self, events: list[Event]) -> None:
        """A join: the joiner's devices are news to the room, and the room's to a local joiner.
        A leave: both sides are told `left` when they no longer share any room. Only users with
        device keys are news (store: add_changes); such a row lands just after the membership event
        (a client may get the join in one answer and the device-list change in the next).
        A remote user is always news (their server holds their keys)."""
        changes: list[tuple[str, str | None, str]] = []
        for ev in events:
            user_id = ev.state_key
            assert user_id is not None
            room = await self.hs.rooms.get_room(ev.room_id)
            others = [u for u in room.joined_users() if u != user_id]
            if ev.membership == "join":
                changes.append((user_id, None, rows.CHANGED))
                if self.is_local(user_id):
                    changes.extend((other, user_id, rows.CHANGED) for other in others)
            elif ev.membership in ("leave", "ban"):
                if self.is_local(user_id):
                    still = await self.sharing(user_id)
                    for other in others:
                        if other not in still:
                            changes.append((other, user_id, rows.LEFT))
                            if self.is_local(other):
                                changes.append((user_id, other, rows.LEFT))
                else:
                    for other in others:
                        if self.is_local(other) and user_id not in await self.sharing(other):
                            changes.append((user_id, other, rows.LEFT))
        remote = frozenset(c[0] for c in changes if not self.is_local(c[0]))
        changes = [c for c in changes if c[0] in self._with_keys or c[0] in remote]
        if changes:
            self._moved(await self.db.write(lambda conn: rows.add_changes(conn, changes, remote)))

    async def remote_changed(self, user_id: str) -> None:
        """A remote user's devices or cross-signing keys changed (their server told us): a
        device-list change for the local users sharing a room with them."""
        self._moved(await self.db.write(lambda conn: rows.add_change(conn, user_id)))

    def _on_revoked(self, revoked: TokensRevoked) -> None:
        self._spawn(self._forget_dead_devices(revoked.user_id))

    async def _forget_dead_devices(self, user_id: str) -> None:
        """A deleted device's keys go, and its user's device list changed. (Reads join `devices`,
        so the keys were already invisible when the deletion was answered.)"""
        def write(conn: Any) -> tuple[list[str], int, bool]:
            dead = rows.forget_dead_devices(conn, user_id)
            for device_id in dead:
                cross_signing_rows.delete_device_signatures(conn, user_id, device_id)
            return dead, rows.add_change(conn, user_id) if dead else 0, rows.has_device_keys(conn, user_id)

        dead, change, has_keys = await self.db.write(write)
        if not has_keys:
            self._with_keys.discard(user_id)
        for device_id in dead:
            self._otk_counts.pop((user_id, device_id), None)
            self._fallback.pop((user_id, device_id), None)
        self._moved(change)
        if dead:
            self._tell_local_change(user_id, dead, change)


class DeviceListSource(SyncSource):
    """/sync's `device_lists` (changed/left), and in every answer the requesting device's
    `device_one_time_keys_count` and `device_unused_fallback_key_types` (from memory)."""

    stream = "device_lists"

    def __init__(self, keys: E2eKeys) -> None:
        self.keys = keys

    def position(self) -> int:
        return self.keys.position()

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        if ctx.initial:
            return  # an initial sync has no "since": the client queries what it needs
        changed, left = await self.keys.changes_for(ctx.requester.user_id, since, upto)
        if changed or left:
            out.top_fields["device_lists"] = {"changed": changed, "left": left}

    async def every_answer(self, ctx: SyncContext, out: SyncOutput) -> None:
        user_id, device_id = ctx.requester.user_id, ctx.requester.device_id
        out.top_fields["device_one_time_keys_count"] = self.keys.counts(user_id, device_id)
        out.top_fields["device_unused_fallback_key_types"] = self.keys.unused_fallback_types(user_id, device_id)
