"""The database file as a whole, for backup, restore and status: an online snapshot, an
integrity check, the schema versions and the event count (plain sqlite3, usable from the CLI)."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable


def snapshot(source: Path, dest: Path, progress: Callable[[int, int], None]) -> int:
    """Copy the live database with the online backup API into one self-contained file (no WAL);
    returns its event count.

    One step (pages=-1) holds a single read transaction: a snapshot that a concurrent writer
    cannot restart, unlike a page-by-page copy that starts over after every foreign commit.
    """
    src = sqlite3.connect(source)  # reads only; not mode=ro, which WAL without -shm refuses
    try:
        src.execute("PRAGMA busy_timeout=10000")
        out = sqlite3.connect(dest)
        try:
            src.backup(out, pages=-1, progress=lambda _s, remaining, total: progress(total - remaining, total))
            out.execute("PRAGMA journal_mode=DELETE")
            return event_count(out)
        finally:
            out.close()
    finally:
        src.close()


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
