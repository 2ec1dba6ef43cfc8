"""To-device messages waiting for their device, and the senders' transaction ids.

A message is stored (durable before the sender's 200) and kept until the recipient device's
/sync acknowledges it by syncing again with a token past it; a device's deletion removes its
messages. The stream id is the /sync token's `to_device` position; AUTOINCREMENT keeps it rising
even when every row has been delivered and deleted. The transaction ids (one row per sender
device and txn id) make a retried PUT store nothing twice.
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "to_device"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE to_device_inbox (
            stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            message_json TEXT NOT NULL
        );
        CREATE INDEX to_device_inbox_device ON to_device_inbox (user_id, device_id, stream_id);
        CREATE TABLE to_device_txns (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            txn_id TEXT NOT NULL,
            ts INTEGER NOT NULL,
            PRIMARY KEY (user_id, device_id, txn_id)
        )
        """,
    ),
]

TXN_KEEP_MS = 24 * 3600 * 1000  # a client retries within minutes; a day is plenty


async def position(db: Database) -> int:
    row = await db.fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'to_device_inbox'")
    return int(row[0]) if row else 0


async def pending(db: Database) -> list[tuple[str, str, int]]:
    """(user, device, newest stream id) of every device with messages waiting (at start)."""
    rows = await db.fetchall("SELECT user_id, device_id, MAX(stream_id) FROM to_device_inbox GROUP BY user_id, device_id")
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def store(conn: sqlite3.Connection, sender: str, sender_device: str, txn_id: str, now: int,
          messages: list[tuple[str, str, str]]) -> dict[tuple[str, str], int] | None:
    """Store (user, device, message JSON) rows unless this transaction was seen: then None.
    Returns the newest stream id per recipient device."""
    seen = conn.execute("INSERT OR IGNORE INTO to_device_txns (user_id, device_id, txn_id, ts) VALUES (?, ?, ?, ?)",
                        (sender, sender_device, txn_id, now))
    if seen.rowcount == 0:
        return None
    conn.execute("DELETE FROM to_device_txns WHERE ts < ?", (now - TXN_KEEP_MS,))
    newest: dict[tuple[str, str], int] = {}
    for user_id, device_id, message_json in messages:
        cur = conn.execute("INSERT INTO to_device_inbox (user_id, device_id, message_json) VALUES (?, ?, ?)",
                           (user_id, device_id, message_json))
        newest[(user_id, device_id)] = int(cur.lastrowid or 0)
    return newest


def acknowledge(conn: sqlite3.Connection, user_id: str, device_id: str, upto: int) -> None:
    conn.execute("DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
                 (user_id, device_id, upto))


async def messages(db: Database, user_id: str, device_id: str, after: int, upto: int) -> list[str]:
    rows = await db.fetchall("SELECT message_json FROM to_device_inbox WHERE user_id = ? AND device_id = ? "
                             "AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
                             (user_id, device_id, after, upto))
    return [str(r[0]) for r in rows]


def forget_dead_devices(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM to_device_inbox WHERE user_id = ? AND NOT EXISTS (SELECT 1 FROM devices d "
                 "WHERE d.user_id = to_device_inbox.user_id AND d.device_id = to_device_inbox.device_id)", (user_id,))


def live_devices(conn: sqlite3.Connection, user_id: str) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,)).fetchall()]


async def messages_after(db: Database, after: int, upto: int | None, limit: int) -> list[tuple[int, str, str, str]]:
    """(stream id, user, device, message JSON) of every device's messages after `after` (up to
    `upto`), oldest first: an application service's share is picked from them (its users')."""
    bound = "" if upto is None else " AND stream_id <= ?"
    params: tuple[int, ...] = (after,) if upto is None else (after, upto)
    rows = await db.fetchall("SELECT stream_id, user_id, device_id, message_json FROM to_device_inbox "
                             f"WHERE stream_id > ?{bound} ORDER BY stream_id LIMIT ?", (*params, limit))
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def delete_messages(conn: sqlite3.Connection, stream_ids: list[int]) -> None:
    """Messages handed to the application service that runs their device (it has them)."""
    for start in range(0, len(stream_ids), 500):
        chunk = stream_ids[start:start + 500]
        conn.execute(f"DELETE FROM to_device_inbox WHERE stream_id IN ({','.join('?' * len(chunk))})", chunk)
