"""Rooms a local user has forgotten (POST /rooms/{roomId}/forget): one row per user and room,
naming the membership event (by stream position) that was forgotten. While the user's membership
is still that event, the room is out of their membership index (service/forgotten_rooms.py): no
/sync leave entry, no history. A later invite or join is a new membership: the row no longer
applies (and is replaced by the next forget)."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "forgotten_rooms"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE forgotten_rooms (
            user_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            membership_pos INTEGER NOT NULL,
            PRIMARY KEY (user_id, room_id)
        )
        """,
    ),
]


def put(conn: sqlite3.Connection, user_id: str, room_id: str, membership_pos: int) -> None:
    conn.execute("INSERT OR REPLACE INTO forgotten_rooms (user_id, room_id, membership_pos) VALUES (?, ?, ?)",
                 (user_id, room_id, membership_pos))


async def all_rows(db: Database) -> list[tuple[str, str, int]]:
    """(user id, room id, position of the forgotten membership event) of every forget kept."""
    return [(str(u), str(r), int(p)) for u, r, p in
            await db.fetchall("SELECT user_id, room_id, membership_pos FROM forgotten_rooms")]
