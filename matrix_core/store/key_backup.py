"""Server-side key backup: each user's backup versions (the latest not deleted is the current one)
and the encrypted room keys in them (key_backup_rules.py says which copy of a session is kept).

Versions are numbered per user, MAX + 1 over deleted ones too, so a deleted version's number is
never handed out again (a client holding it gets M_NOT_FOUND, not someone else's backup).
`etag` rises with every change of a version's keys; the spec has clients compare it to learn
whether another device changed the backup.
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "key_backup"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE room_key_versions (
            user_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            algorithm TEXT NOT NULL,
            auth_data TEXT NOT NULL,
            etag INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, version)
        );
        CREATE TABLE room_keys (
            user_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            room_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            first_message_index INTEGER NOT NULL,
            forwarded_count INTEGER NOT NULL,
            is_verified INTEGER NOT NULL,
            session_data TEXT NOT NULL,
            PRIMARY KEY (user_id, version, room_id, session_id)
        );
        """,
    ),
]

# (version, algorithm, auth_data JSON text, etag)
VersionRow = tuple[int, str, str, int]
# (room id, session id, first_message_index, forwarded_count, is_verified, session_data JSON text)
KeyRow = tuple[str, str, int, int, bool, str]


def current_version(conn: sqlite3.Connection, user_id: str) -> int | None:
    row = conn.execute("SELECT MAX(version) FROM room_key_versions WHERE user_id = ? AND deleted = 0",
                       (user_id,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def create_version(conn: sqlite3.Connection, user_id: str, algorithm: str, auth_data: str) -> int:
    version = int(conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM room_key_versions WHERE user_id = ?",
                               (user_id,)).fetchone()[0])
    conn.execute("INSERT INTO room_key_versions (user_id, version, algorithm, auth_data) VALUES (?, ?, ?, ?)",
                 (user_id, version, algorithm, auth_data))
    return version


def version_in(conn: sqlite3.Connection, user_id: str, version: int) -> VersionRow | None:
    row = conn.execute("SELECT version, algorithm, auth_data, etag FROM room_key_versions "
                       "WHERE user_id = ? AND version = ? AND deleted = 0", (user_id, version)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]), int(row[3]))


async def version(db: Database, user_id: str, version: int | None) -> VersionRow | None:
    """One live version (None: the current one)."""
    if version is None:
        row = await db.fetchone("SELECT version, algorithm, auth_data, etag FROM room_key_versions "
                                "WHERE user_id = ? AND deleted = 0 ORDER BY version DESC LIMIT 1", (user_id,))
    else:
        row = await db.fetchone("SELECT version, algorithm, auth_data, etag FROM room_key_versions "
                                "WHERE user_id = ? AND version = ? AND deleted = 0", (user_id, version))
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]), int(row[3]))


async def count(db: Database, user_id: str, version: int) -> int:
    row = await db.fetchone("SELECT COUNT(*) FROM room_keys WHERE user_id = ? AND version = ?", (user_id, version))
    return int(row[0]) if row else 0


def update_auth_data(conn: sqlite3.Connection, user_id: str, version: int, auth_data: str) -> None:
    conn.execute("UPDATE room_key_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
                 (auth_data, user_id, version))


def delete_version(conn: sqlite3.Connection, user_id: str, version: int) -> bool:
    """Mark the version deleted and drop its keys; False when it was not there."""
    cursor = conn.execute("UPDATE room_key_versions SET deleted = 1 WHERE user_id = ? AND version = ? AND deleted = 0",
                          (user_id, version))
    if cursor.rowcount == 0:
        return False
    conn.execute("DELETE FROM room_keys WHERE user_id = ? AND version = ?", (user_id, version))
    return True


def key_in(conn: sqlite3.Connection, user_id: str, version: int, room_id: str, session_id: str) -> KeyRow | None:
    row = conn.execute(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM room_keys "
        "WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
        (user_id, version, room_id, session_id)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]), str(row[5]))


def put_key(conn: sqlite3.Connection, user_id: str, version: int, row: KeyRow) -> None:
    room_id, session_id, first, forwarded, verified, data = row
    conn.execute(
        "INSERT INTO room_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, "
        "is_verified, session_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET "
        "first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, "
        "is_verified = excluded.is_verified, session_data = excluded.session_data",
        (user_id, version, room_id, session_id, first, forwarded, int(verified), data))


def _keys_where(user_id: str, version: int, room_id: str | None,
                session_id: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) of a version's keys, of one room, or one session."""
    where, args = "user_id = ? AND version = ?", [user_id, version]
    if room_id is not None:
        where += " AND room_id = ?"
        args.append(room_id)
    if session_id is not None:
        where += " AND session_id = ?"
        args.append(session_id)
    return where, args


def delete_keys(conn: sqlite3.Connection, user_id: str, version: int, room_id: str | None,
                session_id: str | None) -> int:
    where, args = _keys_where(user_id, version, room_id, session_id)
    return conn.execute("DELETE FROM room_keys WHERE " + where, args).rowcount


def bump_etag(conn: sqlite3.Connection, user_id: str, version: int) -> None:
    conn.execute("UPDATE room_key_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?", (user_id, version))


def count_in(conn: sqlite3.Connection, user_id: str, version: int) -> tuple[int, int]:
    """(key count, etag) of a version, inside the writer's transaction."""
    keys = conn.execute("SELECT COUNT(*) FROM room_keys WHERE user_id = ? AND version = ?",
                        (user_id, version)).fetchone()[0]
    etag = conn.execute("SELECT etag FROM room_key_versions WHERE user_id = ? AND version = ?",
                        (user_id, version)).fetchone()
    return int(keys), int(etag[0]) if etag else 0


async def keys(db: Database, user_id: str, version: int, room_id: str | None = None,
               session_id: str | None = None) -> list[KeyRow]:
    where, args = _keys_where(user_id, version, room_id, session_id)
    sql = ("SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data "
           "FROM room_keys WHERE " + where + " ORDER BY room_id, session_id")
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), bool(r[4]), str(r[5]))
            for r in await db.fetchall(sql, args)]


def in_current(conn: sqlite3.Connection, user_id: str, version: int,
               wrong: Callable[[int | None], Exception]) -> None:
    """Raise `wrong(current)` unless `version` is the user's current backup (in the transaction
    that then changes its keys, so a concurrent new version cannot slip in between)."""
    current = current_version(conn, user_id)
    if current != version:
        raise wrong(current)
