"""Pushers (POST /pushers/set) and the durable queue of notifications for them (component
"pushers"; service/push_delivery.py is the only caller).

The queue is a table, not memory: a notification is committed before any attempt to deliver it,
so it survives a hub restart and a gateway that is down for hours. Rows of one pusher are sent in
id order. `push_position` is the last event stream position whose notifications are queued: it
moves in the same transaction as the rows it produced, so after a crash the service re-reads the
events after it (a notification is neither lost nor queued twice).
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..push_gateway import PusherConfig
from . import event_index

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "pushers"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE pushers (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            app_id TEXT NOT NULL,
            pushkey TEXT NOT NULL,
            kind TEXT NOT NULL,
            app_display_name TEXT NOT NULL,
            device_display_name TEXT NOT NULL,
            profile_tag TEXT NOT NULL,
            lang TEXT NOT NULL,
            data TEXT NOT NULL,
            pushkey_ts INTEGER NOT NULL,
            UNIQUE (user_id, app_id, pushkey)
        );
        CREATE INDEX pushers_by_key ON pushers (app_id, pushkey);
        CREATE TABLE push_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            pusher_id INTEGER NOT NULL,
            queued_ts INTEGER NOT NULL,
            notification TEXT NOT NULL,
            tweaks TEXT NOT NULL
        );
        CREATE INDEX push_queue_by_pusher ON push_queue (pusher_id, id);
        CREATE TABLE push_position (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            position INTEGER NOT NULL
        )
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class QueuedNotification:
    row_id: int
    pusher_id: int
    queued_ts: int
    notification: dict[str, Any]
    tweaks: dict[str, Any]


# -- pushers --------------------------------------------------------------------------------------

_PUSHER_COLUMNS = ("id, user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name, "
                   "profile_tag, lang, data, pushkey_ts")


def _pusher(row: tuple[Any, ...]) -> tuple[int, PusherConfig]:
    return int(row[0]), PusherConfig(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                                     json.loads(row[10]), int(row[11]))


async def all_pushers(db: Database) -> list[tuple[int, PusherConfig]]:
    return [_pusher(row) for row in await db.fetchall(f"SELECT {_PUSHER_COLUMNS} FROM pushers ORDER BY id")]


def _delete_ids(conn: sqlite3.Connection, ids: list[int]) -> list[int]:
    for pusher_id in ids:
        conn.execute("DELETE FROM pushers WHERE id = ?", (pusher_id,))
        conn.execute("DELETE FROM push_queue WHERE pusher_id = ?", (pusher_id,))
    return ids


def set_pusher(conn: sqlite3.Connection, pusher: PusherConfig, append: bool) -> tuple[int, PusherConfig, list[int]]:
    """Create or update the user's (app_id, pushkey) pusher; without `append`, the same app id and
    pushkey of other users is deleted (the spec: a pushkey reaches one account). An update keeps
    the pusher's id (its queued notifications) and the device that first set it (Synapse's rule:
    one device may edit another's pusher without taking it over). Returns (id, pusher as stored,
    ids of pushers deleted)."""
    removed: list[int] = []
    if not append:
        removed = _delete_ids(conn, [row[0] for row in conn.execute(
            "SELECT id FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
            (pusher.app_id, pusher.pushkey, pusher.user_id))])
    row = conn.execute(
        "INSERT INTO pushers (user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name, "
        "profile_tag, lang, data, pushkey_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, "
        "app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, "
        "profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, "
        f"pushkey_ts = excluded.pushkey_ts RETURNING {_PUSHER_COLUMNS}",
        (pusher.user_id, pusher.device_id, pusher.app_id, pusher.pushkey, pusher.kind, pusher.app_display_name,
         pusher.device_display_name, pusher.profile_tag, pusher.lang, json.dumps(pusher.data), pusher.pushkey_ts),
    ).fetchone()
    pusher_id, stored = _pusher(row)
    return pusher_id, stored, removed


def delete_pusher(conn: sqlite3.Connection, user_id: str, app_id: str, pushkey: str) -> list[int]:
    return _delete_ids(conn, [row[0] for row in conn.execute(
        "SELECT id FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?", (user_id, app_id, pushkey))])


def delete_pusher_ids(conn: sqlite3.Connection, ids: list[int]) -> list[int]:
    return _delete_ids(conn, ids)


# -- the queue ------------------------------------------------------------------------------------

NewRow = tuple[int, int, dict[str, Any], dict[str, Any]]  # pusher id, queued ts, notification, tweaks


def enqueue(conn: sqlite3.Connection, rows: list[NewRow], position: int,
            max_per_pusher: int) -> tuple[int, dict[int, int]]:
    """Queue notifications and move the processed position, in one transaction. A pusher's queue
    keeps its newest `max_per_pusher` rows. Returns how many older ones that dropped, and the
    newest row id queued per pusher (a pusher deleted meanwhile gets none)."""
    newest: dict[int, int] = {}
    for pid, ts, note, tweaks in rows:
        cur = conn.execute(
            "INSERT INTO push_queue (pusher_id, queued_ts, notification, tweaks) "
            "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM pushers WHERE id = ?)",
            (pid, ts, json.dumps(note), json.dumps(tweaks), pid))
        if cur.rowcount:
            newest[pid] = int(cur.lastrowid or 0)
    dropped = 0
    for pid in newest:
        (count,) = conn.execute("SELECT COUNT(*) FROM push_queue WHERE pusher_id = ?", (pid,)).fetchone()
        if count > max_per_pusher:
            dropped += conn.execute(
                "DELETE FROM push_queue WHERE id IN (SELECT id FROM push_queue WHERE pusher_id = ? "
                "ORDER BY id LIMIT ?)", (pid, count - max_per_pusher)).rowcount
    set_position(conn, position)
    return dropped, newest


def set_position(conn: sqlite3.Connection, position: int) -> None:
    """Move the covered position forward (never back: a save of an older position may commit
    after a newer one, e.g. at shutdown while an enqueue was in flight)."""
    conn.execute("INSERT INTO push_position (id, position) VALUES (1, ?) "
                 "ON CONFLICT (id) DO UPDATE SET position = MAX(position, excluded.position)", (position,))


def reset_position(conn: sqlite3.Connection, position: int) -> None:
    """Start covering from `position` (nothing before it is news), even if that is back."""
    conn.execute("INSERT OR REPLACE INTO push_position (id, position) VALUES (1, ?)", (position,))


async def position(db: Database) -> int | None:
    row = await db.fetchone("SELECT position FROM push_position WHERE id = 1")
    return None if row is None else int(row[0])


async def next_notification(db: Database, pusher_id: int, after: int) -> QueuedNotification | None:
    """The pusher's oldest queued notification after row `after` (the last one the caller
    handled: a read that does not see that row's deletion yet cannot hand it out twice)."""
    row = await db.fetchone(
        "SELECT id, pusher_id, queued_ts, notification, tweaks FROM push_queue WHERE pusher_id = ? AND id > ? "
        "ORDER BY id LIMIT 1", (pusher_id, after))
    if row is None:
        return None
    return QueuedNotification(int(row[0]), int(row[1]), int(row[2]), json.loads(row[3]), json.loads(row[4]))


async def queued_upto(db: Database) -> list[tuple[int, int]]:
    """(pusher id, newest row id) of every pusher with queued notifications."""
    return [(int(pid), int(top)) for pid, top in await db.fetchall(
        "SELECT pusher_id, MAX(id) FROM push_queue GROUP BY pusher_id")]


def remove_notification(conn: sqlite3.Connection, row_id: int) -> None:
    conn.execute("DELETE FROM push_queue WHERE id = ?", (row_id,))


# -- catching up after a restart ------------------------------------------------------------------

async def events_after(db: Database, after: int, limit: int) -> list[tuple[int, str, str, Any]]:
    """Placed events after stream position `after`, oldest first, as (position, event id, room id,
    stored json): those committed while the hub went down before queueing their notifications."""
    return await db.fetchall(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.json FROM events e "
        f"WHERE e.stream_ordering > ? AND {event_index.TIMELINE} ORDER BY e.stream_ordering LIMIT ?",
        (after, limit))
