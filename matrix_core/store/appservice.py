"""Application services' delivery positions (component "appservice"; service/appservice.py is the
only caller).

The queue of an AS is the rooms' own history: `position` is the last event stream position the
AS has been handed (or that interested it not), so after a restart or an outage its events are
read back from the events table after it; nothing is copied per AS. A transaction being sent is
recorded first (`txn_id`, `txn_upto`): resent after a restart with the same id and the same events
(the AS drops a transaction id it has seen), then the position moves to `txn_upto`.

Migration 2 adds the same pair for the to-device inbox (MSC2409: messages for the AS's users'
devices, read back from `to_device_inbox` after `to_device_position`) and the device-list stream
(MSC3202), so those parts of a transaction are durable and resent alike."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, NamedTuple

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
    (
        2,
        """
        ALTER TABLE appservice_state ADD COLUMN to_device_position INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE appservice_state ADD COLUMN txn_to_device_upto INTEGER;
        ALTER TABLE appservice_state ADD COLUMN device_list_position INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE appservice_state ADD COLUMN txn_device_list_upto INTEGER
        """,
    ),
]


class AsState(NamedTuple):
    """An AS's stored delivery state: positions in the event, to-device and device-list streams,
    the next (or pending) transaction id, and the pending transaction's bounds (None: none)."""

    position: int
    txn_id: int
    txn_upto: int | None
    to_device: int
    txn_to_device_upto: int | None
    device_lists: int
    txn_device_list_upto: int | None


async def state(db: Database, as_id: str) -> AsState | None:
    row = await db.fetchone("SELECT position, txn_id, txn_upto, to_device_position, txn_to_device_upto, "
                            "device_list_position, txn_device_list_upto FROM appservice_state WHERE as_id = ?",
                            (as_id,))
    if row is None:
        return None
    return AsState(*(None if v is None else int(v) for v in row))  # type: ignore[arg-type]


def start_at(conn: sqlite3.Connection, as_id: str, position: int, device_lists: int = 0) -> None:
    """A new AS: it gets events and device-list changes from here on (not the hub's whole past);
    to-device messages waiting for its users' devices it gets all."""
    conn.execute("INSERT OR IGNORE INTO appservice_state (as_id, position, txn_id, txn_upto, device_list_position) "
                 "VALUES (?, ?, 1, NULL, ?)", (as_id, position, device_lists))


def begin_transaction(conn: sqlite3.Connection, as_id: str, txn_id: int, start: int, upto: int,
                      to_device: tuple[int, int] | None = None, device_lists: tuple[int, int] | None = None) -> None:
    """Transaction `txn_id` carries the AS's events in (start, upto], and its to-device messages
    and device-list changes in (start, upto] of those streams: everything up to each `start` is
    handled (delivered, or of no interest)."""
    td = to_device or (None, None)
    dl = device_lists or (None, None)
    conn.execute("UPDATE appservice_state SET position = ?, txn_id = ?, txn_upto = ?, "
                 "to_device_position = COALESCE(?, to_device_position), txn_to_device_upto = ?, "
                 "device_list_position = COALESCE(?, device_list_position), txn_device_list_upto = ? "
                 "WHERE as_id = ?", (start, txn_id, upto, td[0], td[1], dl[0], dl[1], as_id))


def finish_transaction(conn: sqlite3.Connection, as_id: str, next_txn_id: int, position: int,
                       to_device: int | None = None, device_lists: int | None = None) -> None:
    conn.execute("UPDATE appservice_state SET position = ?, txn_id = ?, txn_upto = NULL, "
                 "to_device_position = MAX(to_device_position, COALESCE(?, 0)), txn_to_device_upto = NULL, "
                 "device_list_position = MAX(device_list_position, COALESCE(?, 0)), txn_device_list_upto = NULL "
                 "WHERE as_id = ?", (position, next_txn_id, to_device, device_lists, as_id))


def skip_to(conn: sqlite3.Connection, as_id: str, position: int, to_device: int = 0, device_lists: int = 0) -> None:
    """Events (to-device messages, device-list changes) up to these positions held nothing for the AS."""
    conn.execute("UPDATE appservice_state SET position = MAX(position, ?), to_device_position = "
                 "MAX(to_device_position, ?), device_list_position = MAX(device_list_position, ?) "
                 "WHERE as_id = ? AND txn_upto IS NULL", (position, to_device, device_lists, as_id))


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
