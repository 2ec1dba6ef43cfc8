"""Room rows as a whole (the rooms table): reads the rooms service needs beyond events and state."""
from __future__ import annotations

from .database import Database


async def count_created_by(db: Database, user_id: str) -> int:
    """Rooms this account created on this hub (rooms it joined over federation have no local
    creator). Read once per account; the service counts on in memory."""
    row = await db.fetchone("SELECT COUNT(*) FROM rooms WHERE creator = ?", (user_id,))
    return int(row[0]) if row else 0


async def public_room_ids(db: Database) -> list[str]:
    """Rooms published in the room directory (/publicRooms)."""
    return [row[0] for row in await db.fetchall("SELECT room_id FROM rooms WHERE is_public = 1")]


# -- aliases ------------------------------------------------------------------------------------------


async def alias_room(db: Database, alias: str) -> tuple[str, str | None] | None:
    """(room id, creator) of a local alias, or None."""
    row = await db.fetchone("SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,))
    return None if row is None else (row[0], row[1])
