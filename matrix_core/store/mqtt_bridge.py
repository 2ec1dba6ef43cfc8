"""Uplinks to other brokers (frontends/mqtt/uplink.py): per bridge, the stream position its `out`
forwarding has been acknowledged up to, and its last connection state (for `matrix-gateway
status`, which reads the database, not the running hub).

The position is what makes the uplink lossless: the messages themselves are the rooms' history,
read back from `events` in stream order (`messages_after`), so nothing needs queueing in memory
while the remote is down. A position is saved only after the remote acknowledged everything up to
it (at least once: a crash between the PUBACK and the save resends a batch).
"""
from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from .event_index import TIMELINE

if TYPE_CHECKING:
    from .database import Database, WriteFn

COMPONENT = "mqtt_bridge"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE mqtt_bridge (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'starting',
            detail TEXT NOT NULL DEFAULT '',
            state_ts INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
]

# What an uplink forwards: MQTT messages and retained messages (room state), plus what Matrix
# clients write in topic rooms (m.room.message of any msgtype), in stream order.
_TYPES = ("m.room.message", "org.matrix_gateway.mqtt.retained")


async def load_position(db: "Database", name: str) -> int | None:
    row = await db.fetchone("SELECT position FROM mqtt_bridge WHERE name = ?", (name,))
    return None if row is None else int(row[0])


def save_position(name: str, position: int) -> "WriteFn":
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO mqtt_bridge (name, position) VALUES (?, ?) "
                     "ON CONFLICT (name) DO UPDATE SET position = excluded.position", (name, position))
    return write


def save_state(name: str, state: str, detail: str) -> "WriteFn":
    now = int(time.time() * 1000)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE mqtt_bridge SET state = ?, detail = ?, state_ts = ? WHERE name = ?",
                     (state, detail[:300], now, name))
    return write


async def messages_after(db: "Database", after: int, upto: int, limit: int) -> list[tuple[int, str, str, Any]]:
    """(position, event id, room id, stored json) of timeline events that may be MQTT messages
    in (after, upto], oldest first. A scan of `events` by its primary key (the position)."""
    return await db.fetchall(
        f"SELECT e.stream_ordering, e.event_id, e.room_id, e.json FROM events e "
        f"WHERE e.stream_ordering > ? AND e.stream_ordering <= ? AND e.type IN (?, ?) AND {TIMELINE} "
        f"ORDER BY e.stream_ordering LIMIT ?", (after, upto, *_TYPES, limit))


def status_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per bridge: name, state, detail, since (ms), position and backlog (events of the forwarded
    kinds after the position; an upper bound: those no rule sends are counted too). For `status`."""
    try:
        rows = conn.execute(_STATUS_ROWS).fetchall()
    except sqlite3.OperationalError:  # a database from before the bridges (not migrated yet)
        return []
    out = []
    for name, position, state, detail, state_ts in rows:
        backlog = conn.execute(_BACKLOG, (position, *_TYPES)).fetchone()[0]
        out.append({"name": name, "state": state, "detail": detail, "since_ts": state_ts, "position": position,
                    "backlog": backlog})
    return out


_STATUS_ROWS = "SELECT name, position, state, detail, state_ts FROM mqtt_bridge ORDER BY name"
_BACKLOG = f"SELECT COUNT(*) FROM events e WHERE e.stream_ordering > ? AND e.type IN (?, ?) AND {TIMELINE}"


async def status(db: "Database") -> list[dict[str, Any]]:
    """`status_rows` on the running hub's reader (the Status page)."""
    out = []
    for name, position, state, detail, state_ts in await db.fetchall(_STATUS_ROWS):
        row = await db.fetchone(_BACKLOG, (position, *_TYPES))
        out.append({"name": name, "state": state, "detail": detail, "since_ts": state_ts, "position": position,
                    "backlog": int(row[0]) if row else 0})
    return out
