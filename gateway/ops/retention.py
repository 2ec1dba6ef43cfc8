"""Retention: purge old readings (message events) from rooms, keeping each room's state.

A room's retention comes from its `m.room.retention` state event (`max_lifetime` in ms, as in
MSC1763 and Synapse) or else from the config's `retention_default_days` (0: keep forever).
Only non-state events older than the age are deleted; state events, state groups, each room's
forward extremities and the newest event of the whole stream are never touched, so /sync,
/messages, state lookups and new sends keep working, and stream positions are never reused.
Deletion runs in small batches so the hub's writer (and an SD card) never waits long.

Media: a purged event takes with it the media it points at that its sender uploaded (and cached
remote media), rows in the same batch; their files go after the commit, by a sweep of files no
row names (store/media_files.py: files younger than an hour are kept, they may be uploads about
to be acknowledged).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matrix_core.store import media as media_rows
from matrix_core.store import retention as retention_rows
from matrix_core.store.media_files import MediaFiles

RETENTION_EVENT = "m.room.retention"
DAY_MS = 86_400_000
BATCH = 1000

Progress = Callable[[str, int, int], None]


@dataclass
class PurgeReport:
    rooms: dict[str, int] = field(default_factory=dict)  # room id -> events deleted

    @property
    def deleted(self) -> int:
        return sum(self.rooms.values())


def room_ages(conn: sqlite3.Connection, default_days: int) -> dict[str, int]:
    """Room id -> maximum age in ms, for every room that has a retention setting."""
    ages: dict[str, int] = {}
    if default_days > 0:
        ages = {room_id: default_days * DAY_MS for room_id in retention_rows.room_ids(conn)}
    for room_id, content in retention_rows.current_state_contents(conn, RETENTION_EVENT):
        lifetime = content.get("max_lifetime") if isinstance(content, dict) else None
        if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0:
            ages[room_id] = lifetime
        else:
            ages.pop(room_id, None)  # an explicit event without a lifetime means: keep forever
    return ages


def count_purgeable(conn: sqlite3.Connection, room_id: str, cutoff_ms: int) -> int:
    return retention_rows.count_purgeable(conn, room_id, cutoff_ms)


def purge_batch(conn: sqlite3.Connection, room_id: str, cutoff_ms: int, limit: int = BATCH) -> int:
    """Delete up to `limit` purgeable events of one room (inside the caller's transaction)."""
    return retention_rows.purge_batch(conn, room_id, cutoff_ms, limit)


def sweep_media(conn: sqlite3.Connection, media_dir: Path) -> int:
    """Remove media files no row names any more; returns how many went."""
    if not media_dir.is_dir():
        return 0
    return MediaFiles(media_dir).sweep(media_rows.all_hashes(conn))


def purge(conn: sqlite3.Connection, ages: dict[str, int], now_ms: int,
          progress: Progress | None = None, dry_run: bool = False, media_dir: Path | None = None) -> PurgeReport:
    """Purge every room in `ages` with an autocommit connection (the CLI's), one batch per commit."""
    cutoffs = {room_id: now_ms - age for room_id, age in ages.items()}
    totals = {room_id: count_purgeable(conn, room_id, cutoff) for room_id, cutoff in cutoffs.items()}
    report = PurgeReport()
    if dry_run:
        report.rooms = {room_id: n for room_id, n in totals.items() if n}
        return report
    grand_total, done = sum(totals.values()), 0
    for room_id, cutoff in cutoffs.items():
        if not totals[room_id]:
            continue
        while True:
            n = retention_rows.in_transaction(conn, lambda c, r=room_id, t=cutoff: purge_batch(c, r, t))
            if not n:
                break
            report.rooms[room_id] = report.rooms.get(room_id, 0) + n
            done += n
            if progress is not None:
                progress("purge", min(done, grand_total), grand_total)
    if media_dir is not None and report.deleted:
        sweep_media(conn, media_dir)
    return report


def purge_step(conn: sqlite3.Connection, default_days: int, now_ms: int) -> int:
    """One batch over all rooms, for the hub's periodic task (runs inside the writer's transaction)."""
    deleted = 0
    for room_id, age in room_ages(conn, default_days).items():
        deleted += purge_batch(conn, room_id, now_ms - age)
        if deleted >= BATCH:
            break
    return deleted


async def purge_periodically(db: "Database", default_days: int, interval_s: float,
                             clock: Callable[[], int]) -> None:
    """The hub's own retention task: every `interval_s`, purge through the writer in batches."""
    import asyncio
    import logging

    from matrix_core.errors import StorageFull

    log = logging.getLogger(__name__)
    while True:
        await asyncio.sleep(interval_s)
        total = 0
        try:
            while n := await db.write(lambda conn: purge_step(conn, default_days, clock())):
                total += n
        except StorageFull:  # the store logs a full disk; the next interval tries again
            pass
        except Exception:
            log.exception("retention purge failed; retrying at the next interval")
        if total:
            log.info("retention: purged %d old events", total)
            try:
                hashes = await db.write(media_rows.all_hashes)
                media_dir = db.path.parent / "media"
                if media_dir.is_dir():
                    await asyncio.get_running_loop().run_in_executor(None, MediaFiles(media_dir).sweep, hashes)
            except Exception as exc:
                log.warning("retention: media files not swept: %s", exc)


if False:  # typing only
    from matrix_core.store.database import Database
