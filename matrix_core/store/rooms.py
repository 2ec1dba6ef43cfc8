"""Room rows (the rooms table), aliases and invites from other servers: what the rooms service
(matrix_core/service/) reads and writes beyond events and state."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from .database import Database


async def count_created_by(db: Database, user_id: str) -> int:
    """Rooms this account created on this hub (rooms it joined over federation have no local
    creator). Read once per account; the service counts on in memory."""
    row = await db.fetchone("SELECT COUNT(*) FROM rooms WHERE creator = ?", (user_id,))
    return int(row[0]) if row else 0


async def public_room_ids(db: Database) -> list[str]:
    """Rooms published in the room directory (/publicRooms)."""
    return [row[0] for row in await db.fetchall("SELECT room_id FROM rooms WHERE is_public = 1")]


async def room_versions(db: Database) -> list[tuple[str, str]]:
    """(room id, room version identifier) of every room held."""
    return await db.fetchall("SELECT room_id, room_version FROM rooms")


async def room_head(db: Database, room_id: str) -> tuple[str, int | None]:
    """(stored forward extremities as JSON text, current state group) of a room held."""
    row = await db.fetchone(
        "SELECT forward_extremities, current_state_group FROM rooms WHERE room_id = ?", (room_id,)
    )
    assert row is not None
    return row[0], row[1]


def set_public(conn: sqlite3.Connection, room_id: str) -> None:
    conn.execute("UPDATE rooms SET is_public = 1 WHERE room_id = ?", (room_id,))


# -- aliases ------------------------------------------------------------------------------------------


async def alias_room(db: Database, alias: str) -> tuple[str, str | None] | None:
    """(room id, creator) of a local alias, or None."""
    row = await db.fetchone("SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,))
    return None if row is None else (row[0], row[1])


async def aliases_of(db: Database, room_id: str) -> list[str]:
    """The local aliases pointing at a room (GET /rooms/{roomId}/aliases), sorted."""
    return [row[0] for row in await db.fetchall(
        "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (room_id,))]


def insert_alias(conn: sqlite3.Connection, alias: str, room_id: str, creator: str) -> None:
    conn.execute("INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)", (alias, room_id, creator))


def delete_alias(conn: sqlite3.Connection, alias: str) -> None:
    conn.execute("DELETE FROM room_aliases WHERE alias = ?", (alias,))


# -- invites into rooms hosted elsewhere ----------------------------------------------------------------

RemoteInviteRow = tuple[str, str, str, dict[str, Any], list[dict[str, Any]], int]


async def remote_invites(db: Database) -> list[RemoteInviteRow]:
    """(user id, room id, room version, invite pdu, stripped state, position) of every invite kept."""
    rows = await db.fetchall(
        "SELECT user_id, room_id, room_version, event_json, invite_state, stream_ordering FROM remote_invites"
    )
    return [(u, r, v, json.loads(pdu), json.loads(state), pos) for u, r, v, pdu, state, pos in rows]


def put_remote_invite(conn: sqlite3.Connection, user_id: str, room_id: str, version: str, pdu: dict[str, Any],
                      stripped: list[dict[str, Any]], position: int) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO remote_invites (user_id, room_id, room_version, event_json, invite_state, "
        "stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, room_id, version, json.dumps(pdu), json.dumps(stripped), position))


def delete_remote_invite(conn: sqlite3.Connection, user_id: str, room_id: str) -> None:
    conn.execute("DELETE FROM remote_invites WHERE user_id = ? AND room_id = ?", (user_id, room_id))
