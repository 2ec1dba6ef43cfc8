"""The readings index: one row per numeric field of each placed message event, keyed by
(room, field, time), so a plot of a day or a week reads one index range of one field instead of
decoding events: the cost follows the points in the asked range, never the room's whole history.

Rows are written with their events, in the same transaction (EventRows, like the relations
index); `numeric_fields` (matrix_core/series.py, pure) decides what an event carries and spares a
text message or a state event any row. The component's first migration fills the index from the
events already stored (`series_json`, an SQL function registered on every connection). Retention
deletes the rows of purged events (`forget`).
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..series import numeric_fields
from . import event_index, event_json

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "series"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE series_points (
            room_id TEXT NOT NULL,
            field TEXT NOT NULL,
            ts INTEGER NOT NULL,
            pos INTEGER NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (room_id, field, ts, pos)
        ) WITHOUT ROWID;
        CREATE INDEX series_points_pos ON series_points (pos);
        INSERT OR IGNORE INTO series_points (room_id, field, ts, pos, value)
            WITH found AS MATERIALIZED (
                SELECT e.room_id, e.stream_ordering AS pos, e.origin_server_ts AS ts,
                       series_json(e.json) AS f
                FROM events e WHERE e.outlier = 0 AND e.rejected_reason IS NULL AND e.state_key IS NULL
                                    AND e.type = 'm.room.message')
            SELECT room_id, json_extract(p.value, '$[0]'), ts, pos, json_extract(p.value, '$[1]')
            FROM found, json_each(found.f) p WHERE found.f IS NOT NULL
        """,
    ),
]

# Which events are readings: messages (what CoAP and MQTT devices send, and what HTTP clients
# post). State events and others (reactions, receipts' kin) never hold a reading.
READING_TYPES = frozenset({"m.room.message"})


def series_json(stored: Any) -> str | None:
    """SQL function for the backfill: the [[field, number], ...] of a stored event as JSON text,
    or NULL when it has none."""
    try:
        pdu = json.loads(event_json.unpack(stored))
    except ValueError:  # a row that does not decode is left out, not a hub that cannot start
        return None
    if not isinstance(pdu, dict):
        return None
    fields = numeric_fields(pdu.get("content"))
    return json.dumps(fields) if fields else None


def register(conn: sqlite3.Connection) -> None:
    """Make `series_json(json)` callable from SQL on this connection (the migration)."""
    conn.create_function("series_json", 1, series_json, deterministic=True)


# -- writes ---------------------------------------------------------------------------------------

def rows_for(pos: int, ev: Event) -> list[tuple[Any, ...]]:
    """The index rows of a message being placed (none for most other events: a set lookup)."""
    if ev.type not in READING_TYPES or ev.is_state:
        return []
    return [(ev.room_id, field, ev.origin_server_ts, pos, value)
            for field, value in numeric_fields(ev.pdu.get("content"))]


def insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Index events just written (inside the writer's transaction)."""
    conn.executemany(
        "INSERT OR IGNORE INTO series_points (room_id, field, ts, pos, value) SELECT ?,?,?,?,? "
        "WHERE EXISTS (SELECT 1 FROM events WHERE stream_ordering = ?4)",
        rows,
    )


def forget(conn: sqlite3.Connection, positions: list[int]) -> None:
    """Retention purged (or a redaction emptied) the events at these positions: drop their rows."""
    conn.executemany("DELETE FROM series_points WHERE pos = ?", [(pos,) for pos in positions])


def forget_redacted(conn: sqlite3.Connection, event_ids: list[str]) -> None:
    """A redacted reading leaves the plots: its rows go (the target may not be stored yet: then
    there is nothing to drop)."""
    conn.executemany(
        f"DELETE FROM series_points WHERE pos IN (SELECT stream_ordering FROM events WHERE {event_index.BY_ID_PARAM})",
        [(eid,) for eid in event_ids],
    )


# -- reads ----------------------------------------------------------------------------------------

POINTS_SQL = ("SELECT ts, pos, value FROM series_points WHERE room_id = ? AND field = ? "
              "AND ts >= ? AND ts < ? ORDER BY ts, pos")


async def points(db: Database, room_id: str, field: str, start: int, end: int) -> list[tuple[int, int, float]]:
    """(ts, position, value) of one field's points in [start, end), in time order: one range of
    the primary key."""
    return await db.fetchall(POINTS_SQL, (room_id, field, start, end))


async def fields(db: Database, room_id: str, limit: int) -> list[str]:
    """The room's fields, in name order: a skip scan of the primary key (one seek per field, not
    a read of every point)."""
    rows = await db.fetchall(
        "WITH RECURSIVE f(name, n) AS ("
        " SELECT (SELECT MIN(field) FROM series_points WHERE room_id = ?1), 0"
        " UNION ALL SELECT (SELECT MIN(field) FROM series_points WHERE room_id = ?1 AND field > f.name), n + 1"
        " FROM f WHERE f.name IS NOT NULL AND n < ?2)"
        " SELECT name FROM f WHERE name IS NOT NULL",
        (room_id, limit),
    )
    return [name for (name,) in rows]
