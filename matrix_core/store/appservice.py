"""Application services' delivery positions (component "appservice"; service/appservice.py is the
only caller).

The queue of an AS is the rooms' own history: `position` is the last event stream position the
AS has been handed (or that interested it not), so after a restart or an outage its events are
read back from the events table after it; nothing is copied per AS. A transaction being sent is
recorded first (`txn_id`, `txn_upto`): resent after a restart with the same id and the same events
(the AS drops a transaction id it has seen), then the position moves to `txn_upto`."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from . import event_index

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "appservice"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE appservice_state (
            as_id TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            txn_id INTEGER NOT NULL,
            txn_upto INTEGER
        )
        """,
    ),
]


async def state(db: Database, as_id: str) -> tuple[int, int, int | None] | None:
    """(position, next or pending transaction id, upper bound of the pending one or None)."""
    row = await db.fetchone("SELECT position, txn_id, txn_upto FROM appservice_state WHERE as_id = ?", (as_id,))
    return None if row is None else (int(row[0]), int(row[1]), None if row[2] is None else int(row[2]))


def start_at(conn: sqlite3.Connection, as_id: str, position: int) -> None:
    """A new AS: it gets events from `position` on (not the hub's whole past)."""
    conn.execute("INSERT OR IGNORE INTO appservice_state (as_id, position, txn_id, txn_upto) VALUES (?, ?, 1, NULL)",
                 (as_id, position))


def begin_transaction(conn: sqlite3.Connection, as_id: str, txn_id: int, start: int, upto: int) -> None:
    """Transaction `txn_id` carries the AS's events in (start, upto]: everything up to `start` is
    handled (delivered, or of no interest)."""
    conn.execute("UPDATE appservice_state SET position = ?, txn_id = ?, txn_upto = ? WHERE as_id = ?",
                 (start, txn_id, upto, as_id))


def finish_transaction(conn: sqlite3.Connection, as_id: str, next_txn_id: int, position: int) -> None:
    conn.execute("UPDATE appservice_state SET position = ?, txn_id = ?, txn_upto = NULL WHERE as_id = ?",
                 (position, next_txn_id, as_id))


def skip_to(conn: sqlite3.Connection, as_id: str, position: int) -> None:
    """Events up to `position` held nothing for the AS."""
    conn.execute("UPDATE appservice_state SET position = MAX(position, ?) WHERE as_id = ? AND txn_upto IS NULL",
                 (position, as_id))


async def events_between(db: Database, after: int, upto: int | None, limit: int) -> list[tuple[int, str, str, Any]]:
    """Placed events after stream position `after` (up to `upto`), oldest first, as (position,
    event id, room id, stored json)."""
    bound = "" if upto is None else " AND e.stream_ordering <= ?"
    params: tuple[Any, ...] = (after,) if upto is None else (after, upto)
    return await db.fetchall(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.json FROM events e "
        f"WHERE e.stream_ordering > ?{bound} AND {event_index.TIMELINE} ORDER BY e.stream_ordering LIMIT ?",
        (*params, limit))


async def aliases(db: Database) -> list[tuple[str, str]]:
    """(alias, room id) of every local alias: which rooms an AS's alias namespace covers."""
    return await db.fetchall("SELECT alias, room_id FROM room_aliases")
