"""End-to-end encryption keys: device keys, one-time keys, fallback keys, and the device-list
change stream (what /sync's `device_lists` and /keys/changes count).

Keys are stored as the JSON text the device uploaded (the hub only hands them on). A one-time
key is claimed by a DELETE ... RETURNING inside the writer's transaction: writes are serialized,
so two claims never get the same key. Keys of a device that no longer has a row in `devices` are
never handed out (the reads join `devices`), so a deletion is visible at once; `forget_devices`
then removes the rows.

The device-list stream: a row says "user X's devices changed" (`recipient` NULL: for everyone who
shares a room with X) or, for membership changes, tells one `recipient` that X is `changed`
(they now share a room) or `left` (they no longer do). AUTOINCREMENT keeps ids rising even when
old rows are pruned, so MAX(id) in sqlite_sequence is the stream position across restarts.
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "e2e_keys"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE e2e_device_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            key_json TEXT NOT NULL,
            PRIMARY KEY (user_id, device_id)
        );
        CREATE TABLE e2e_one_time_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            key_id TEXT NOT NULL,
            key_json TEXT NOT NULL,
            PRIMARY KEY (user_id, device_id, algorithm, key_id)
        );
        CREATE TABLE e2e_fallback_keys (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            key_id TEXT NOT NULL,
            key_json TEXT NOT NULL,
            used INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, device_id, algorithm)
        );
        CREATE TABLE device_list_stream (
            stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            recipient TEXT,
            kind TEXT NOT NULL
        );
        CREATE INDEX device_list_stream_recipient ON device_list_stream (recipient, stream_id)
        """,
    ),
]

CHANGED = "changed"
LEFT = "left"


async def position(db: Database) -> int:
    row = await db.fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'device_list_stream'")
    return int(row[0]) if row else 0


async def one_time_key_counts(db: Database) -> list[tuple[str, str, str, int]]:
    """(user, device, algorithm, count) of every device's unclaimed one-time keys (at start)."""
    rows = await db.fetchall("SELECT user_id, device_id, algorithm, COUNT(*) FROM e2e_one_time_keys "
                             "GROUP BY user_id, device_id, algorithm")
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


async def unused_fallback_keys(db: Database) -> list[tuple[str, str, str]]:
    rows = await db.fetchall("SELECT user_id, device_id, algorithm FROM e2e_fallback_keys WHERE used = 0")
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


async def users_with_device_keys(db: Database) -> list[str]:
    return [str(r[0]) for r in await db.fetchall("SELECT DISTINCT user_id FROM e2e_device_keys")]


def has_device_keys(conn: sqlite3.Connection, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM e2e_device_keys WHERE user_id = ? LIMIT 1", (user_id,)).fetchone() is not None


def device_keys_in(conn: sqlite3.Connection, user_id: str, device_id: str) -> str | None:
    row = conn.execute("SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                       (user_id, device_id)).fetchone()
    return None if row is None else str(row[0])


def set_device_keys(conn: sqlite3.Connection, user_id: str, device_id: str, key_json: str) -> None:
    conn.execute("INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES (?, ?, ?) "
                 "ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                 (user_id, device_id, key_json))


def one_time_keys_in(conn: sqlite3.Connection, user_id: str, device_id: str,
                     key_ids: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The stored text of those (algorithm, key id)s that exist."""
    found: dict[tuple[str, str], str] = {}
    for algorithm, key_id in key_ids:
        row = conn.execute("SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? "
                           "AND algorithm = ? AND key_id = ?", (user_id, device_id, algorithm, key_id)).fetchone()
        if row is not None:
            found[(algorithm, key_id)] = str(row[0])
    return found


def count_one_time_keys(conn: sqlite3.Connection, user_id: str, device_id: str) -> dict[str, int]:
    rows = conn.execute("SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? "
                        "GROUP BY algorithm", (user_id, device_id)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def add_one_time_keys(conn: sqlite3.Connection, user_id: str, device_id: str,
                      keys: list[tuple[str, str, str]]) -> None:
    """(algorithm, key id, key JSON) rows; an identical key already there is left alone."""
    conn.executemany("INSERT OR IGNORE INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) "
                     "VALUES (?, ?, ?, ?, ?)", [(user_id, device_id, a, k, j) for a, k, j in keys])


def set_fallback_keys(conn: sqlite3.Connection, user_id: str, device_id: str,
                      keys: list[tuple[str, str, str]]) -> None:
    """One per algorithm: a new key replaces the old one and is unused; the same key again keeps
    its `used` mark (clients re-upload the key they hold)."""
    for algorithm, key_id, key_json in keys:
        conn.execute(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) "
            "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET "
            "used = CASE WHEN key_id = excluded.key_id AND key_json = excluded.key_json THEN used ELSE 0 END, "
            "key_id = excluded.key_id, key_json = excluded.key_json",
            (user_id, device_id, algorithm, key_id, key_json))


def unused_fallback_types(conn: sqlite3.Connection, user_id: str, device_id: str) -> list[str]:
    rows = conn.execute("SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0",
                        (user_id, device_id)).fetchall()
    return [str(r[0]) for r in rows]


_LIVE_DEVICE = "EXISTS (SELECT 1 FROM devices d WHERE d.user_id = {t}.user_id AND d.device_id = {t}.device_id)"


async def device_keys(db: Database, user_id: str, device_ids: list[str]) -> list[tuple[str, str, str | None]]:
    """(device id, key JSON, display name) of the user's live devices with keys (all if
    `device_ids` is empty)."""
    sql = ("SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k JOIN devices d "
           "ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id = ?")
    params: list[Any] = [user_id]
    if device_ids:
        sql += " AND k.device_id IN (%s)" % ",".join("?" * len(device_ids))
        params.extend(device_ids)
    rows = await db.fetchall(sql, params)
    return [(str(r[0]), str(r[1]), None if r[2] is None else str(r[2])) for r in rows]


def claim_key(conn: sqlite3.Connection, user_id: str, device_id: str,
              algorithm: str) -> tuple[str, str, bool] | None:
    """Take one one-time key of the live device (deleted: no one else gets it), else its fallback
    key (marked used, kept). (key id, key JSON, was a fallback) or None."""
    live = conn.execute("SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)).fetchone()
    if live is None:
        return None
    row = conn.execute("DELETE FROM e2e_one_time_keys WHERE rowid = (SELECT rowid FROM e2e_one_time_keys "
                       "WHERE user_id = ? AND device_id = ? AND algorithm = ? ORDER BY key_id LIMIT 1) "
                       "RETURNING key_id, key_json", (user_id, device_id, algorithm)).fetchone()
    if row is not None:
        return str(row[0]), str(row[1]), False
    row = conn.execute("UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ? "
                       "RETURNING key_id, key_json", (user_id, device_id, algorithm)).fetchone()
    if row is not None:
        return str(row[0]), str(row[1]), True
    return None


def add_change(conn: sqlite3.Connection, user_id: str, recipient: str | None = None, kind: str = CHANGED) -> int:
    """One row of the device-list stream; returns its position."""
    cur = conn.execute("INSERT INTO device_list_stream (user_id, recipient, kind) VALUES (?, ?, ?)",
                       (user_id, recipient, kind))
    return int(cur.lastrowid or 0)


def add_changes(conn: sqlite3.Connection, rows: list[tuple[str, str | None, str]],
                remote: frozenset[str] = frozenset()) -> int:
    """Membership-driven rows, only about users with device keys here: a user who never encrypts
    is nobody's news (and wakes no long-poll). Returns the newest position, 0 if none was added."""
    newest = 0
    with_keys: dict[str, bool] = {}
    for user_id, recipient, kind in rows:
        if user_id not in with_keys:
            # a remote user's keys are not stored here: their servers answer for them
            with_keys[user_id] = user_id in remote or has_device_keys(conn, user_id)
        if with_keys[user_id]:
            newest = add_change(conn, user_id, recipient, kind)
    return newest


async def changes(db: Database, recipient: str, after: int, upto: int) -> list[tuple[str, str | None, str]]:
    """(user, recipient or None, kind) in (after, upto] that may concern `recipient`, oldest first."""
    rows = await db.fetchall(
        "SELECT user_id, recipient, kind FROM device_list_stream WHERE stream_id > ? AND stream_id <= ? "
        "AND (recipient IS NULL OR recipient = ?) ORDER BY stream_id", (after, upto, recipient))
    return [(str(r[0]), None if r[1] is None else str(r[1]), str(r[2])) for r in rows]


async def all_changes(db: Database, after: int, upto: int) -> list[tuple[str, str | None, str]]:
    """(user, recipient or None, kind) in (after, upto], oldest first: an application service's
    share of the stream is worked out from all of them (its users are many)."""
    rows = await db.fetchall("SELECT user_id, recipient, kind FROM device_list_stream WHERE stream_id > ? "
                             "AND stream_id <= ? ORDER BY stream_id", (after, upto))
    return [(str(r[0]), None if r[1] is None else str(r[1]), str(r[2])) for r in rows]


def forget_dead_devices(conn: sqlite3.Connection, user_id: str) -> list[str]:
    """Delete the keys of the user's devices that are gone from `devices`; returns the device ids
    that had device keys (their users' lists changed)."""
    dead = [str(r[0]) for r in conn.execute(
        "SELECT device_id FROM e2e_device_keys k WHERE user_id = ? AND NOT " + _LIVE_DEVICE.format(t="k"),
        (user_id,)).fetchall()]
    for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"):
        conn.execute(f"DELETE FROM {table} WHERE user_id = ? AND NOT " + _LIVE_DEVICE.format(t=table), (user_id,))
    return dead

