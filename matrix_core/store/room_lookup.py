"""Finding a room of this hub by id or alias with a plain sqlite3 connection: for the CLI, which
may run beside a live hub (WAL lets both read and write)."""
from __future__ import annotations

import sqlite3


def resolve_room(conn: sqlite3.Connection, room: str, server_name: str | None = None) -> str | None:
    """A room id or alias held here -> the room id (None if unknown). With `server_name`, an alias
    without a server part (`#garden`) means one of this hub."""
    if room.startswith("#"):
        if server_name is not None and ":" not in room:
            room = f"{room}:{server_name}"
        row = conn.execute("SELECT room_id FROM room_aliases WHERE alias = ?", (room,)).fetchone()
        return row[0] if row else None
    row = conn.execute("SELECT room_id FROM rooms WHERE room_id = ?", (room,)).fetchone()
    return row[0] if row else None
