"""State groups: the room state after each event, stored as deltas on an earlier group (a chain
bounded by MAX_STATE_CHAIN in service/room_cache.py) or whole. Written by the persister's rows
(events.EventRows); read here."""
from __future__ import annotations

from .database import Database

StateIds = dict[tuple[str, str], str]


async def next_group_id(db: Database) -> int:
    row = await db.fetchone("SELECT MAX(id) FROM state_groups")
    return (row[0] or 0) + 1 if row else 1


async def chain_length(db: Database, group: int) -> int:
    """How many deltas lead to the group (0: stored whole, or unknown)."""
    row = await db.fetchone("SELECT chain_length FROM state_groups WHERE id = ?", (group,))
    return row[0] if row else 0


async def state_ids(db: Database, group: int) -> StateIds:
    """(type, state key) -> event id of the group's state, walking its delta chain (the newest
    delta wins)."""
    ids: StateIds = {}
    current: int | None = group
    while current is not None:
        for t, sk, eid in await db.fetchall(
            "SELECT type, state_key, event_id FROM state_group_entries WHERE group_id = ?", (current,)
        ):
            ids.setdefault((t, sk), eid)
        prev = await db.fetchone("SELECT prev_group FROM state_groups WHERE id = ?", (current,))
        current = prev[0] if prev else None
    return ids
