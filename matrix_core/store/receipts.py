"""Read receipts (`m.read`, `m.read.private`; local users' and other servers' users'): the latest
per (room, type, user, thread), each row stamped with the receipt stream's position
(`stream_id`), and how far each other server has been sent our public receipts.

The stream position is persisted by being the rows' own: a row is only ever replaced by one with
a higher `stream_id`, so `MAX(stream_id)` is where the stream stands after a restart (the /sync
tokens handed out before stay valid). `thread_id` is '' for an unthreaded receipt (a primary key
column cannot be NULL); `event_stream` is the receipt's event's stream position, NULL when the
event is not held here (a remote user's receipt for an event we have not received).

`receipts_outbound` is the federation side's durability: a destination's row is written in the
same transaction as a receipt it must hear of (`acked` = that receipt's position - 1 unless it
already lags), and moves once a transaction carrying the EDUs is acknowledged; a restart resends
our public receipts after `acked` to it.
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Iterable

from ..ephemeral import Receipt

if TYPE_CHECKING:  # database.py imports the migrations, which import this module
    from .database import Database

COMPONENT = "receipts"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE receipts (
            room_id TEXT NOT NULL,
            receipt_type TEXT NOT NULL,
            user_id TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_stream INTEGER,
            ts INTEGER NOT NULL,
            stream_id INTEGER NOT NULL,
            PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
        );
        CREATE INDEX receipts_stream ON receipts (stream_id);
        CREATE INDEX receipts_user ON receipts (user_id, room_id);
        CREATE TABLE receipts_outbound (
            destination TEXT PRIMARY KEY,
            acked INTEGER NOT NULL
        );
        """,
    ),
]

_COLUMNS = "room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id"
ReceiptRow = tuple[Receipt, int]  # the receipt and its stream position


def _receipts(rows: Iterable[tuple[Any, ...]]) -> list[ReceiptRow]:
    return [(Receipt(str(room), str(kind), str(user), str(event), int(ts), str(thread) if thread else None),
             int(stream))
            for room, kind, user, thread, event, ts, stream in rows]


async def max_stream(db: Database) -> int:
    row = await db.fetchone("SELECT MAX(stream_id) FROM receipts")
    return int(row[0]) if row is not None and row[0] is not None else 0


def upsert(conn: sqlite3.Connection, receipt: Receipt, event_stream: int | None, stream_id: int,
           destinations: Iterable[str]) -> bool:
    """Keep the receipt unless the one held for its (room, type, user, thread) points at a later
    event (receipts only move forward, as Synapse's do); True if stored. `destinations`: servers
    that must be sent it (their outbound rows are written in the same transaction)."""
    thread = receipt.thread_id or ""
    held = conn.execute(
        "SELECT event_stream FROM receipts WHERE room_id = ? AND receipt_type = ? AND user_id = ? AND thread_id = ?",
        (receipt.room_id, receipt.receipt_type, receipt.user_id, thread)).fetchone()
    if held is not None and held[0] is not None and event_stream is not None and held[0] >= event_stream:
        return False
    conn.execute(
        "INSERT OR REPLACE INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, event_stream, ts,"
        " stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (receipt.room_id, receipt.receipt_type, receipt.user_id, thread, receipt.event_id, event_stream,
         receipt.ts, stream_id))
    conn.executemany("INSERT OR IGNORE INTO receipts_outbound (destination, acked) VALUES (?, ?)",
                     [(dest, stream_id - 1) for dest in destinations])
    return True


async def between(db: Database, after: int, upto: int) -> list[ReceiptRow]:
    """Receipts whose latest change is in (after, upto]."""
    return _receipts(await db.fetchall(
        f"SELECT {_COLUMNS} FROM receipts WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
        (after, upto)))


async def in_rooms(db: Database, room_ids: list[str], upto: int) -> list[ReceiptRow]:
    """Every receipt held for these rooms, up to stream position `upto` (an initial /sync)."""
    out: list[ReceiptRow] = []
    for start in range(0, len(room_ids), 500):
        chunk = room_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        out.extend(_receipts(await db.fetchall(
            f"SELECT {_COLUMNS} FROM receipts WHERE room_id IN ({marks}) AND stream_id <= ? ORDER BY stream_id",
            (*chunk, upto))))
    return out


async def read_positions(db: Database, user_id: str, room_id: str) -> list[tuple[str, int]]:
    """(thread id, '' for unthreaded; the latest position an m.read or m.read.private receipt of
    the user in that thread points at)."""
    rows = await db.fetchall(
        "SELECT thread_id, MAX(event_stream) FROM receipts WHERE user_id = ? AND room_id = ? "
        "AND receipt_type IN ('m.read', 'm.read.private') AND event_stream IS NOT NULL GROUP BY thread_id",
        (user_id, room_id))
    return [(str(thread), int(pos)) for thread, pos in rows]


# -- federation ------------------------------------------------------------------------------------

async def outbound(db: Database) -> list[tuple[str, int]]:
    """(destination, position up to which it has our public receipts)."""
    return [(str(d), int(a)) for d, a in await db.fetchall("SELECT destination, acked FROM receipts_outbound")]


async def set_acked(db: Database, destination: str, acked: int) -> None:
    await db.write(lambda conn: conn.execute(
        "UPDATE receipts_outbound SET acked = MAX(acked, ?) WHERE destination = ?", (acked, destination)))


async def ours_after(db: Database, after: int, server_name: str, limit: int = 1000) -> list[ReceiptRow]:
    """Our users' public receipts after `after` (what a destination may still be owed)."""
    return _receipts(await db.fetchall(
        f"SELECT {_COLUMNS} FROM receipts WHERE stream_id > ? AND receipt_type = 'm.read' AND user_id LIKE ? "
        "ORDER BY stream_id LIMIT ?", (after, f"%:{server_name}", limit)))
