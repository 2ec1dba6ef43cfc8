"""Events and current state: the reads of the events and current_state tables for callers outside
the store. Events are found by id through the store's own index (event_index.py, private to the
store); no caller outside the store sees its SQL.

Reads return plain rows (stored event JSON undecoded: callers holding the event in memory skip
the decoding)."""
from __future__ import annotations

from typing import Any

from . import event_index
from .database import Database


async def current_state_of_type(db: Database, event_type: str) -> list[tuple[str, str, Any]]:
    """(room id, state key, stored json) of every room's current state events of one type."""
    return await db.fetchall(
        "SELECT c.room_id, c.state_key, e.json FROM current_state c "
        f"JOIN events e ON {event_index.by_id('c.event_id', 'e')} "
        "WHERE c.type = ?",
        (event_type,),
    )
