"""End-to-end encryption over federation: remote users' device lists (a cache, so repeated key
queries need not go remote) and the durable outbox of EDUs we owe other servers
(`m.direct_to_device`, `m.device_list_update`, `m.signing_key_update`).

An outbox row is written before the client is answered (sendToDevice, /keys/upload) and deleted
once a transaction carrying it was acknowledged; after a restart the rows are queued again.
The stream id of a local user's last `m.device_list_update` is kept: the next one names it as
`prev_id`, and `/user/devices` answers it as `stream_id`, so a remote server sees an unbroken chain
(device-list stream rows that went out as no EDU, joins say, are no gap for it).
A cached device list is whole (every device of the user) with the stream id of the last
`m.device_list_update` applied; an update that does not follow it drops the entry (resync).
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "e2e_federation"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE e2e_remote_device_lists (
            user_id TEXT PRIMARY KEY,
            stream_id INTEGER,
            body_json TEXT NOT NULL
        );
        CREATE TABLE e2e_edu_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            destination TEXT NOT NULL,
            edu_json TEXT NOT NULL
        );
        CREATE TABLE e2e_device_list_sent (
            user_id TEXT PRIMARY KEY,
            stream_id INTEGER NOT NULL
        )
        """,
    ),
]


def add_outbox(conn: sqlite3.Connection, rows: list[tuple[str, str]]) -> list[int]:
    """(destination, EDU JSON) rows; their ids in the same order."""
    ids = []
    for destination, edu_json in rows:
        cur = conn.execute("INSERT INTO e2e_edu_outbox (destination, edu_json) VALUES (?, ?)", (destination, edu_json))
        ids.append(int(cur.lastrowid or 0))
    return ids


async def outbox(db: Database) -> list[tuple[int, str, str]]:
    rows = await db.fetchall("SELECT id, destination, edu_json FROM e2e_edu_outbox ORDER BY id")
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def remove_outbox(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.executemany("DELETE FROM e2e_edu_outbox WHERE id = ?", [(i,) for i in ids])


async def cached_device_list(db: Database, user_id: str) -> tuple[int | None, str] | None:
    row = await db.fetchone("SELECT stream_id, body_json FROM e2e_remote_device_lists WHERE user_id = ?", (user_id,))
    return (None if row[0] is None else int(row[0]), str(row[1])) if row else None


def set_device_list(conn: sqlite3.Connection, user_id: str, stream_id: int | None, body_json: str) -> None:
    conn.execute("INSERT OR REPLACE INTO e2e_remote_device_lists (user_id, stream_id, body_json) VALUES (?, ?, ?)",
                 (user_id, stream_id, body_json))


def drop_device_list(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM e2e_remote_device_lists WHERE user_id = ?", (user_id,))


async def last_sent(db: Database, user_id: str) -> int:
    row = await db.fetchone("SELECT stream_id FROM e2e_device_list_sent WHERE user_id = ?", (user_id,))
    return int(row[0]) if row else 0


def advance_sent(conn: sqlite3.Connection, user_id: str, stream_id: int) -> int:
    """Record `stream_id` as the user's last update sent; returns the one before (0: none)."""
    row = conn.execute("SELECT stream_id FROM e2e_device_list_sent WHERE user_id = ?", (user_id,)).fetchone()
    conn.execute("INSERT OR REPLACE INTO e2e_device_list_sent (user_id, stream_id) VALUES (?, ?)", (user_id, stream_id))
    return int(row[0]) if row else 0
