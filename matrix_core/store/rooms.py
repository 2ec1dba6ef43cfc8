"""Room rows as a whole (the rooms table): reads the rooms service needs beyond events and state."""
from __future__ import annotations

from .database import Database


async def count_created_by(db: Database, user_id: str) -> int:
    """Rooms this account created on this hub (rooms it joined over federation have no local
    creator). Read once per account; the service counts on in memory."""
    row = await db.fetchone("SELECT COUNT(*) FROM rooms WHERE creator = ?", (user_id,))
    return int(row[0]) if row else 0
