"""Federation's rows: other servers' signing keys (and the key documents we relay as a notary),
the outbound queue's progress per destination, and the reads of the event tables that the
federation front end needs (a restart's refill, state before an event, the oldest event held).

Federation code calls these functions; it never writes SQL (shared/ARCHITECTURE.md rule 7)."""
from __future__ import annotations

import sqlite3
from typing import Any

from . import event_index, event_json
from .database import Database

# -- other servers' keys --------------------------------------------------------------------------

KeyRow = tuple[str, str, int | None, int | None]  # key_id, verify_key (unpadded base64), valid_until, expired


async def server_keys(db: Database, server_name: str) -> list[KeyRow]:
    rows = await db.fetchall(
        "SELECT key_id, verify_key, valid_until_ts, expired_ts FROM federation_server_keys WHERE server_name = ?",
        (server_name,))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def key_document(db: Database, server_name: str) -> str | None:
    row = await db.fetchone("SELECT json FROM federation_key_documents WHERE server_name = ?", (server_name,))
    return None if row is None else str(row[0])


async def store_keys(db: Database, server_name: str, keys: list[tuple[str, str, int | None, int | None]],
                     from_server: str, doc_valid_until: int, doc_json: str, now: int) -> None:
    """Keep a server's keys and the key document they came in (one transaction)."""
    rows = [(server_name, key_id, verify_key, valid_until, expired, now, from_server)
            for key_id, verify_key, valid_until, expired in keys]

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO federation_server_keys (server_name, key_id, verify_key, valid_until_ts,"
            " expired_ts, fetched_ts, from_server) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT OR REPLACE INTO federation_key_documents (server_name, valid_until_ts, fetched_ts, json)"
            " VALUES (?, ?, ?, ?)", (server_name, doc_valid_until, now, doc_json))

    await db.write(write)


# -- the outbound queue -----------------------------------------------------------------------------

async def outbound_positions(db: Database) -> list[tuple[str, int]]:
    """(destination, last stream position it acknowledged) for every destination we sent to."""
    return [(str(name), int(last)) for name, last in await db.fetchall(
        "SELECT destination, last_stream FROM federation_outbound")]


async def set_outbound_position(db: Database, destination: str, last_stream: int) -> None:
    await db.write(lambda conn: conn.execute(
        "INSERT INTO federation_outbound (destination, last_stream) VALUES (?, ?) "
        "ON CONFLICT(destination) DO UPDATE SET last_stream = excluded.last_stream", (destination, last_stream)))


async def unsent_events(db: Database, after: int, our_server: str, destination: str,
                        limit: int = 5000) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Our events after position `after` in rooms `destination` has a joined member in, as
    (position, event id, room id, pdu): what a restart must still send there."""
    rows = await db.fetchall(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.json FROM events e "
        "WHERE e.stream_ordering > ? AND e.outlier = 0 AND e.rejected_reason IS NULL AND e.sender LIKE ? "
        "AND e.room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.member' "
        "AND membership = 'join' AND state_key LIKE ?) ORDER BY e.stream_ordering LIMIT ?",
        (after, f"%:{our_server}", f"%:{destination}", limit),
    )
    return [(pos, event_id, room_id, event_json.load(stored)) for pos, event_id, room_id, stored in rows]


async def joined_user_ids(db: Database) -> list[str]:
    """Every user joined to any room here (their servers are the ones we share rooms with)."""
    return [str(user) for (user,) in await db.fetchall(
        "SELECT DISTINCT state_key FROM current_state WHERE type = 'm.room.member' AND membership = 'join'")]


# -- reads for the federation endpoints ---------------------------------------------------------------

async def state_group_before(db: Database, event_id: str, room_id: str) -> int | None:
    """The state group before a placed (non-outlier) event of the room, if known."""
    row = await db.fetchone(
        f"SELECT state_group_before FROM events WHERE {event_index.BY_ID_PARAM} AND room_id = ?2 AND outlier = 0",
        (event_id, room_id))
    return None if row is None or row[0] is None else int(row[0])


async def oldest_event(db: Database, room_id: str) -> dict[str, Any] | None:
    """The pdu of the oldest timeline event held for the room (where backfill starts)."""
    row = await db.fetchone(
        event_index.room_events("e.stream_ordering, e.json", "?1", event_index.TIMELINE, "ASC", "1"), (room_id,))
    return None if row is None else event_json.load(row[1])


async def user_shares_a_room(db: Database, user_id: str) -> bool:
    """Whether (remote) `user_id` is joined to a room here (E2EE: their device lists are tracked)."""
    return await db.fetchone("SELECT 1 FROM current_state WHERE type = 'm.room.member' AND state_key = ? "
                             "AND membership = 'join' LIMIT 1", (user_id,)) is not None
