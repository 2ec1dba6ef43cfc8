"""Retention: purge old readings (message events) from rooms, keeping each room's state.

A room's retention comes from its `m.room.retention` state event (`max_lifetime` in ms, as in
MSC1763 and Synapse) or else from the config's `retention_default_days` (0: keep forever).
Only non-state events older than the age are deleted; state events, state groups, each room's
forward extremities and the newest event of the whole stream are never touched, so /sync,
/messages, state lookups and new sends keep working, and stream positions are never reused.
Deletion runs in small batches so the hub's writer (and an SD card) never waits long.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Callable

from matrix_core.store import event_index, event_json

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
        ages = {room_id: default_days * DAY_MS for (room_id,) in conn.execute("SELECT room_id FROM rooms")}
    for room_id, pdu_json in conn.execute(
        f"SELECT c.room_id, e.json FROM current_state c JOIN events e ON {event_index.by_id('c.event_id', 'e')} "
        "WHERE c.type = ? AND c.state_key = ''", (RETENTION_EVENT,)
    ):
        lifetime = event_json.load(pdu_json).get("content", {}).get("max_lifetime")
        if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0:
            ages[room_id] = lifetime
        else:
            ages.pop(room_id, None)  # an explicit event without a lifetime means: keep forever
    return ages


# Purgeable: a room's non-state events older than the cutoff (?2), except the newest event of the
# stream and the room's forward extremities ("[]" in the rooms row means its newest placed event is
# its only one, which ?3, the room's newest timeline position, keeps).
_PURGEABLE = (
    "e.state_key IS NULL AND e.origin_server_ts < ?2 AND {pos} < ?3 "
    "AND {pos} < (SELECT MAX(stream_ordering) FROM events) "
    "AND e.event_id NOT IN (SELECT value FROM json_each((SELECT forward_extremities FROM rooms WHERE room_id = ?1)))"
)


def _newest_placed(conn: sqlite3.Connection, room_id: str) -> int:
    row = conn.execute(event_index.room_events("e.stream_ordering", "?1", event_index.TIMELINE, "DESC", "1"),
                       (room_id,)).fetchone()
    return int(row[0]) if row else -(2 ** 62)


def count_purgeable(conn: sqlite3.Connection, room_id: str, cutoff_ms: int) -> int:
    sql = event_index.room_events("e.stream_ordering", "?1", _PURGEABLE)
    (n,) = conn.execute(f"SELECT COUNT(*) FROM ({sql})", (room_id, cutoff_ms, _newest_placed(conn, room_id))).fetchone()
    return int(n)


def purge_batch(conn: sqlite3.Connection, room_id: str, cutoff_ms: int, limit: int = BATCH) -> int:
    """Delete up to `limit` purgeable events of one room (inside the caller's transaction)."""
    rows = conn.execute(
        event_index.room_events("e.stream_ordering, e.event_id", "?1", _PURGEABLE, "ASC", "?4"),
        (room_id, cutoff_ms, _newest_placed(conn, room_id), limit),
    ).fetchall()
    if not rows:
        return 0
    ids = [event_id for _, event_id in rows]
    positions = [pos for pos, _ in rows]
    marks = ",".join("?" * len(ids))
    conn.execute(f"DELETE FROM events WHERE stream_ordering IN ({marks})", positions)
    event_index.forget(conn, room_id, positions)
    conn.execute(f"DELETE FROM redactions WHERE redacted_event_id IN ({marks}) OR redaction_event_id IN ({marks})",
                 ids + ids)
    return len(ids)


def purge(conn: sqlite3.Connection, ages: dict[str, int], now_ms: int,
          progress: Progress | None = None, dry_run: bool = False) -> PurgeReport:
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
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = purge_batch(conn, room_id, cutoff)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if not n:
                break
            report.rooms[room_id] = report.rooms.get(room_id, 0) + n
            done += n
            if progress is not None:
                progress("purge", min(done, grand_total), grand_total)
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


if False:  # typing only
    from matrix_core.store.database import Database
