"""Account data rows: per user, global (room_id '') or per room, one row per type, each stamped
with the account data stream position of its last change (what /sync's `account_data` part of
the token counts). The newest position is MAX(stream_id): rows are replaced, never deleted, so
the position survives a restart without a counter of its own."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "account_data"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE account_data (
            user_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            type TEXT NOT NULL,
            content TEXT NOT NULL,
            stream_id INTEGER NOT NULL,
            PRIMARY KEY (user_id, room_id, type)
        );
        CREATE INDEX account_data_stream ON account_data (user_id, stream_id)
        """,
    ),
]

GLOBAL = ""  # the room_id of global account data

# (room id or '', type, content JSON text)
Row = tuple[str, str, str]


async def max_stream_id(db: Database) -> int:
    row = await db.fetchone("SELECT COALESCE(MAX(stream_id), 0) FROM account_data")
    return int(row[0]) if row else 0


def _next_stream_id(conn: sqlite3.Connection) -> int:
    # Inside the writer's transaction: writes are serialized, so ids rise in commit order and a
    # position is only ever seen after every smaller one is committed.
    return int(conn.execute("SELECT COALESCE(MAX(stream_id), 0) + 1 FROM account_data").fetchone()[0])


def put(conn: sqlite3.Connection, user_id: str, room_id: str, data_type: str, content: str) -> int:
    """Set one type's content; returns its new stream position."""
    stream_id = _next_stream_id(conn)
    conn.execute(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, "
        "stream_id = excluded.stream_id",
        (user_id, room_id, data_type, content, stream_id))
    return stream_id


def content_in(conn: sqlite3.Connection, user_id: str, room_id: str, data_type: str) -> str | None:
    row = conn.execute("SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                       (user_id, room_id, data_type)).fetchone()
    return None if row is None else str(row[0])


def update(conn: sqlite3.Connection, user_id: str, room_id: str, data_type: str,
           change: Callable[[str | None], str | None]) -> int | None:
    """Read-modify-write of one type in the writer's transaction (two concurrent tag changes
    both land): `change` maps the stored text (None: absent) to the new text, or None for no
    change. Returns the new stream position, or None when nothing changed."""
    new = change(content_in(conn, user_id, room_id, data_type))
    return None if new is None else put(conn, user_id, room_id, data_type, new)


async def content(db: Database, user_id: str, room_id: str, data_type: str) -> str | None:
    row = await db.fetchone("SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                            (user_id, room_id, data_type))
    return None if row is None else str(row[0])


async def changed(db: Database, user_id: str, after: int, upto: int) -> list[Row]:
    """The user's rows changed in (after, upto] (all current ones for after = 0), oldest first."""
    rows = await db.fetchall(
        "SELECT room_id, type, content FROM account_data WHERE user_id = ? AND stream_id > ? AND stream_id <= ? "
        "ORDER BY stream_id", (user_id, after, upto))
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
