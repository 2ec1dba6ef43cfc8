"""Device management: list, rename and delete a user's devices, and when and from where each
was last seen.

Last seen costs no write per request: `seen` runs for every authenticated client-API request
(HTTP and CoAP; a dict lookup of the already-authenticated token), keeps the newest (ip, ts) in
memory, and writes a device's row at most once every `LAST_SEEN_WRITE_MS`, sharing a commit with
other writes; answers overlay the newer values held in memory, and `flush` writes them at stop.
A sensor polling every second costs one row write every five minutes, not 300.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .. import errors
from ..clock import now_ms
from ..store import Database
from ..store import devices as device_rows
from .accounts import Accounts, TokensRevoked

log = logging.getLogger(__name__)

LAST_SEEN_WRITE_MS = 5 * 60 * 1000
# Seconds a last-seen write may wait to share a commit (nobody waits for it).
LAST_SEEN_COMMIT_DELAY = 1.0
MAX_DISPLAY_NAME = 100  # Synapse's limit on a device's display name


class Devices:
    def __init__(self, db: Database, accounts: Accounts, clock: Callable[[], int] = now_ms) -> None:
        self.db = db
        self.accounts = accounts
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[str | None, int]] = {}  # newest (ip, ts) per device
        self._written: dict[tuple[str, str], int] = {}  # ts of the last row written per device
        self.last_seen_writes = 0
        accounts.on_revoked(self._on_revoked)

    def _on_revoked(self, revoked: TokensRevoked) -> None:
        """A logout or deletion: drop what memory holds of the device (or all the user's)."""
        for key in [k for k in self._seen if k[0] == revoked.user_id
                    and revoked.device_id in (None, k[1])]:
            self._seen.pop(key, None)
            self._written.pop(key, None)

    def seen(self, token: str | None, address: str | None) -> None:
        """A request authenticated with `token` came from `address`: remember it, and write it
        when this device's row is older than LAST_SEEN_WRITE_MS. No database read."""
        if not token:
            return
        requester = self.accounts.cached(token)
        if requester is None:
            return
        key = (requester.user_id, requester.device_id)
        now = self.clock()
        self._seen[key] = (address or None, now)
        if now - self._written.get(key, -LAST_SEEN_WRITE_MS) >= LAST_SEEN_WRITE_MS:
            self._written[key] = now
            self._write([(key[0], key[1], address or None, now)])

    def _write(self, rows: list[tuple[str, str, str | None, int]]) -> None:
        self.last_seen_writes += 1
        future = self.db.submit(lambda conn: device_rows.record_last_seen(conn, rows), delay=LAST_SEEN_COMMIT_DELAY)
        future.add_done_callback(_ignore_failure)

    async def flush(self) -> None:
        """Write what is newer in memory than in the store (at stop)."""
        rows = [(user_id, device_id, ip, ts) for (user_id, device_id), (ip, ts) in self._seen.items()
                if ts > self._written.get((user_id, device_id), -1)]
        if rows:
            try:
                await self.db.write(lambda conn: device_rows.record_last_seen(conn, rows))
            except errors.MatrixError:  # a full disk: last-seen times are not worth failing a stop
                log.warning("could not record the devices' last-seen times")
        for row in rows:
            self._written[(row[0], row[1])] = row[3]

    def _json(self, row: device_rows.DeviceRow) -> dict[str, Any]:
        ip, ts = self._seen.get((row.user_id, row.device_id), (row.last_seen_ip, row.last_seen_ts))
        if row.last_seen_ts is not None and (ts is None or row.last_seen_ts > ts):
            ip, ts = row.last_seen_ip, row.last_seen_ts
        # Every key, null when unknown, as Synapse answers (matrix-nio's schema requires them).
        return {"device_id": row.device_id, "display_name": row.display_name, "last_seen_ip": ip,
                "last_seen_ts": ts}

    async def of_user(self, user_id: str) -> list[dict[str, Any]]:
        return [self._json(row) for row in await device_rows.user_devices(self.db, user_id)]

    async def get(self, user_id: str, device_id: str) -> dict[str, Any]:
        row = await device_rows.device(self.db, user_id, device_id)
        if row is None:
            raise errors.not_found("Device not found")  # another user's device too: never told apart
        return self._json(row)

    async def rename(self, user_id: str, device_id: str, display_name: str) -> None:
        if len(display_name) > MAX_DISPLAY_NAME:
            raise errors.MatrixError(400, "M_TOO_LARGE", f"Device display name is too long (max {MAX_DISPLAY_NAME})")
        if not await self.db.write(lambda conn: device_rows.set_display_name(conn, user_id, device_id, display_name)):
            raise errors.not_found("Device not found")

    async def delete(self, user_id: str, device_ids: list[str]) -> list[str]:
        """Delete the devices; their tokens stop working and their live sessions (MQTT
        connections, CoAP observations) end, through the accounts' revocation listeners."""
        deleted = await self.accounts.delete_devices(user_id, device_ids)
        self.forget(user_id, deleted)
        return deleted

    def forget(self, user_id: str, device_ids: list[str]) -> None:
        for device_id in device_ids:
            self._seen.pop((user_id, device_id), None)
            self._written.pop((user_id, device_id), None)


def _ignore_failure(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("a last-seen write failed: %s", future.exception())
