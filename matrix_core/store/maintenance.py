"""The database file as a whole, for backup, restore and status: an online snapshot, an
integrity check, the schema versions, the event count and the status figures (plain sqlite3,
usable from the CLI)."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def snapshot(source: Path, dest: Path, progress: Callable[[int, int], None]) -> int:
    """Copy the live database with the online backup API into one self-contained file (no WAL);
    returns its event count.

    One step (pages=-1) holds a single read transaction: a snapshot that a concurrent writer
    cannot restart, unlike a page-by-page copy that starts over after every foreign commit.
    """
    src = open_reader(source)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out, pages=-1, progress=lambda _s, remaining, total: progress(total - remaining, total))
            out.execute("PRAGMA journal_mode=DELETE")
            return event_count(out)
        finally:
            out.close()
    finally:
        src.close()


def open_reader(path: Path) -> sqlite3.Connection:
    """A connection that only reads a live hub's database (not mode=ro, which WAL without -shm
    refuses), waiting up to 10 s for a busy writer."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def integrity(conn: sqlite3.Connection) -> str:
    """SQLite's integrity_check verdict ('ok' when sound)."""
    (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
    return str(verdict)


def schema_versions(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(c): int(v) for c, v in conn.execute("SELECT component, version FROM schema_versions")}


def event_count(conn: sqlite3.Connection) -> int:
    (events,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    return int(events)


@dataclass(frozen=True)
class StatusFigures:
    users: int
    devices: int
    rooms: int
    events: int  # positions handed out (an upper bound of the events held), not a COUNT(*)
    last_event_ts: int | None
    schema_versions: dict[str, int]


def status_figures(conn: sqlite3.Connection) -> StatusFigures:
    """What `matrix-gateway status` shows, cheaply: every figure is a primary-key lookup or a
    count over a small table. The events are not counted: COUNT(*) over `events` reads the whole
    table (seconds on a Pi with a large store); the positions handed out (the highest live
    position, plus the backfilled ones below 0) are two rowid lookups. Events removed by
    retention or purge are still included in that figure."""

    def one(sql: str) -> int:
        row = conn.execute(sql).fetchone()
        return int(row[0] or 0) if row else 0

    users, devices, rooms = one("SELECT COUNT(*) FROM users"), one("SELECT COUNT(*) FROM devices"), \
        one("SELECT COUNT(*) FROM rooms")
    events = max(one("SELECT MAX(stream_ordering) FROM events"), 0) \
        + max(-one("SELECT MIN(stream_ordering) FROM events"), 0)
    last = one("SELECT origin_server_ts FROM events ORDER BY stream_ordering DESC LIMIT 1") or None
    return StatusFigures(users, devices, rooms, events, last, schema_versions(conn))
