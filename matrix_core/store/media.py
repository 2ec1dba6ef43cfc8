"""The content repository's rows (component "media"); the files themselves are in the data dir's
`media/` directory, named by their sha256 (store/media_files.py).

A row is one media id: who uploaded it, its content type and file name, its size and the sha256
naming its file. Rows of an async upload (`POST /v1/media/create`) have no sha256 until their
bytes arrive. `origin` is the server in the mxc:// URI: this hub's name for uploads here, another
server's for remote media fetched over federation, which are a cache (user_id ''), counted in no
user's quota. Thumbnails are rows of their own, keyed by the
media and the asked size and method, and their files live beside the media's (content-addressed
too). A file is removed only when no row (media or thumbnail) names its sha256 any more.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "media"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE media (
            origin TEXT NOT NULL,
            media_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            content_type TEXT NOT NULL,
            filename TEXT,
            size INTEGER NOT NULL,
            sha256 TEXT,
            created_ts INTEGER NOT NULL,
            unused_expires_ts INTEGER,
            PRIMARY KEY (origin, media_id)
        );
        CREATE INDEX media_by_user ON media (user_id);
        CREATE INDEX media_by_sha256 ON media (sha256);
        CREATE TABLE media_thumbnails (
            origin TEXT NOT NULL,
            media_id TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            method TEXT NOT NULL,
            animated INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (origin, media_id, width, height, method, animated)
        );
        CREATE INDEX media_thumbnails_by_sha256 ON media_thumbnails (sha256)
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class MediaRow:
    origin: str
    media_id: str
    user_id: str
    content_type: str
    filename: str | None
    size: int
    sha256: str | None  # None: created, bytes not uploaded yet
    created_ts: int
    unused_expires_ts: int | None


_COLUMNS = "origin, media_id, user_id, content_type, filename, size, sha256, created_ts, unused_expires_ts"


def _row(row: tuple[Any, ...]) -> MediaRow:
    return MediaRow(row[0], row[1], row[2], row[3], row[4], int(row[5]), row[6], int(row[7]),
                    None if row[8] is None else int(row[8]))


# -- writes (functions of the writer's connection, run by Database.write) --------------------------

def insert_media(conn: sqlite3.Connection, row: MediaRow) -> None:
    conn.execute(f"INSERT INTO media ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (row.origin, row.media_id, row.user_id, row.content_type, row.filename, row.size, row.sha256,
                  row.created_ts, row.unused_expires_ts))


def drop_expired_pending(conn: sqlite3.Connection, now_ms: int) -> int:
    """Forget created media whose bytes never came in time (they hold no file)."""
    return conn.execute("DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts < ?", (now_ms,)).rowcount


def insert_remote(conn: sqlite3.Connection, row: MediaRow) -> None:
    """A fetched remote media; a second fetch of the same one keeps the first row."""
    conn.execute(f"INSERT OR IGNORE INTO media ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (row.origin, row.media_id, row.user_id, row.content_type, row.filename, row.size, row.sha256,
                  row.created_ts, row.unused_expires_ts))


def complete_upload(conn: sqlite3.Connection, origin: str, media_id: str, content_type: str,
                    filename: str | None, size: int, sha256: str) -> bool:
    """Give a created (empty) media its bytes; False if it already has some (no overwrite)."""
    cur = conn.execute("UPDATE media SET content_type = ?, filename = ?, size = ?, sha256 = ?, "
                       "unused_expires_ts = NULL WHERE origin = ? AND media_id = ? AND sha256 IS NULL",
                       (content_type, filename, size, sha256, origin, media_id))
    return cur.rowcount == 1


def insert_thumbnail(conn: sqlite3.Connection, origin: str, media_id: str, width: int, height: int, method: str,
                     animated: bool, content_type: str, size: int, sha256: str) -> None:
    conn.execute("INSERT OR REPLACE INTO media_thumbnails (origin, media_id, width, height, method, animated, "
                 "content_type, size, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (origin, media_id, width, height, method, int(animated), content_type, size, sha256))


def delete_media(conn: sqlite3.Connection, keys: list[tuple[str, str]], uploader: str | None = None) -> list[str]:
    """Remove media rows and their thumbnails; returns the sha256s no row names any more (their
    files may go). With `uploader`, only media that user uploaded, or remote media (a cache),
    go: an event cannot take someone else's upload with it when it is purged."""
    hashes: set[str] = set()
    for origin, media_id in keys:
        row = conn.execute("SELECT sha256, user_id FROM media WHERE origin = ? AND media_id = ?",
                           (origin, media_id)).fetchone()
        if row is None or (uploader is not None and row[1] not in (uploader, "")):
            continue
        if row[0] is not None:
            hashes.add(row[0])
        hashes.update(sha for (sha,) in conn.execute(
            "SELECT sha256 FROM media_thumbnails WHERE origin = ? AND media_id = ?", (origin, media_id)))
        conn.execute("DELETE FROM media WHERE origin = ? AND media_id = ?", (origin, media_id))
        conn.execute("DELETE FROM media_thumbnails WHERE origin = ? AND media_id = ?", (origin, media_id))
    return [sha for sha in sorted(hashes) if not referenced(conn, sha)]


def all_hashes(conn: sqlite3.Connection) -> set[str]:
    """Every sha256 a row names (for the sweep of files no row names: store/media_files.py)."""
    try:
        return {sha for (sha,) in conn.execute("SELECT sha256 FROM media WHERE sha256 IS NOT NULL "
                                               "UNION SELECT sha256 FROM media_thumbnails")}
    except sqlite3.OperationalError:  # no media component yet
        return set()


_REFERENCED = ("SELECT 1 FROM media WHERE sha256 = ? UNION ALL SELECT 1 FROM media_thumbnails "
               "WHERE sha256 = ? LIMIT 1")


def referenced(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute(_REFERENCED, (sha256, sha256)).fetchone() is not None


async def is_referenced(db: Database, sha256: str) -> bool:
    """`referenced`, on the reader (a file whose row was not committed may be removed)."""
    return await db.fetchone(_REFERENCED, (sha256, sha256)) is not None


_USAGE = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM media WHERE sha256 IS NOT NULL"


def usage_sync(conn: sqlite3.Connection) -> tuple[int, int]:
    """(number of media with bytes, their bytes), for `status` (plain sqlite3)."""
    try:
        row = conn.execute(_USAGE).fetchone()
    except sqlite3.OperationalError:  # a database from before the media component
        return 0, 0
    return int(row[0]), int(row[1])


async def usage(db: Database) -> tuple[int, int]:
    """`usage_sync` on the hub's reader, for the Status page (the running hub's media is migrated)."""
    row = await db.fetchone(_USAGE)
    return (int(row[0]), int(row[1])) if row else (0, 0)


# -- reads (the reader connection) -----------------------------------------------------------------

async def get_media(db: Database, origin: str, media_id: str) -> MediaRow | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM media WHERE origin = ? AND media_id = ?", (origin, media_id))
    return None if row is None else _row(row)


async def get_thumbnail(db: Database, origin: str, media_id: str, width: int, height: int, method: str,
                        animated: bool) -> tuple[str, str] | None:
    """(content type, sha256) of a thumbnail made before at exactly this size and method."""
    row = await db.fetchone("SELECT content_type, sha256 FROM media_thumbnails WHERE origin = ? AND media_id = ? "
                            "AND width = ? AND height = ? AND method = ? AND animated = ?",
                            (origin, media_id, width, height, method, int(animated)))
    return None if row is None else (row[0], row[1])


async def local_usage(db: Database, origin: str, user_id: str | None = None) -> int:
    """Bytes of media uploaded here (`origin`: this hub's name), of one user or everyone's;
    created-but-empty ones count 0."""
    if user_id is None:
        row = await db.fetchone("SELECT COALESCE(SUM(size), 0) FROM media WHERE origin = ?", (origin,))
    else:
        row = await db.fetchone("SELECT COALESCE(SUM(size), 0) FROM media WHERE origin = ? AND user_id = ?",
                                (origin, user_id))
    return int(row[0]) if row else 0


async def pending_count(db: Database, origin: str, user_id: str, now_ms: int) -> int:
    """Created media of a user still waiting for their bytes (and not expired)."""
    row = await db.fetchone("SELECT COUNT(*) FROM media WHERE origin = ? AND user_id = ? AND sha256 IS NULL "
                            "AND unused_expires_ts > ?", (origin, user_id, now_ms))
    return int(row[0]) if row else 0
