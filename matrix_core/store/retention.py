"""Retention's rows: which rooms exist, their `m.room.retention` state, and deleting a room's old
non-state events in small batches (see gateway/ops/retention.py for the policy).

Purgeable: a room's non-state events older than the cutoff, except the newest event of the
stream and the room's forward extremities ("[]" in the rooms row means its newest placed event
is its only one, which the room's newest timeline position keeps)."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterator

from .. import media_rules
from . import event_index, event_json, media, relations, series

_PURGEABLE = (
    "e.state_key IS NULL AND e.origin_server_ts < ?2 AND {pos} < ?3 "
    "AND {pos} < (SELECT MAX(stream_ordering) FROM events) "
    "AND e.event_id NOT IN (SELECT value FROM json_each((SELECT forward_extremities FROM rooms WHERE room_id = ?1)))"
)


def room_ids(conn: sqlite3.Connection) -> list[str]:
    return [room_id for (room_id,) in conn.execute("SELECT room_id FROM rooms")]


def current_state_contents(conn: sqlite3.Connection, event_type: str) -> Iterator[tuple[str, Any]]:
    """(room id, content) of every room's current `event_type` state event (state key '')."""
    for room_id, pdu_json in conn.execute(
        f"SELECT c.room_id, e.json FROM current_state c JOIN events e ON {event_index.by_id('c.event_id', 'e')} "
        "WHERE c.type = ? AND c.state_key = ''", (event_type,)
    ):
        yield room_id, event_json.load(pdu_json).get("content", {})


def _newest_placed(conn: sqlite3.Connection, room_id: str) -> int:
    row = conn.execute(event_index.room_events("e.stream_ordering", "?1", event_index.TIMELINE, "DESC", "1"),
                       (room_id,)).fetchone()
    return int(row[0]) if row else -(2 ** 62)


def count_purgeable(conn: sqlite3.Connection, room_id: str, cutoff_ms: int) -> int:
    sql = event_index.room_events("e.stream_ordering", "?1", _PURGEABLE)
    (n,) = conn.execute(f"SELECT COUNT(*) FROM ({sql})", (room_id, cutoff_ms, _newest_placed(conn, room_id))).fetchone()
    return int(n)


def purge_batch(conn: sqlite3.Connection, room_id: str, cutoff_ms: int, limit: int) -> int:
    """Delete up to `limit` purgeable events of one room (inside the caller's transaction)."""
    rows = conn.execute(
        event_index.room_events("e.stream_ordering, e.event_id", "?1", _PURGEABLE, "ASC", "?4"),
        (room_id, cutoff_ms, _newest_placed(conn, room_id), limit),
    ).fetchall()
    if not rows:
        return 0
    ids = [event_id for _, event_id in rows]
    positions = [pos for pos, _ in rows]
    marks = ",".join("?" * len(ids))
    forget_media(conn, positions)
    conn.execute(f"DELETE FROM events WHERE stream_ordering IN ({marks})", positions)
    event_index.forget(conn, room_id, positions)
    relations.forget(conn, ids)
    series.forget(conn, positions)
    conn.execute(f"DELETE FROM redactions WHERE redacted_event_id IN ({marks}) OR redaction_event_id IN ({marks})",
                 ids + ids)
    return len(ids)


def forget_media(conn: sqlite3.Connection, positions: list[int]) -> None:
    """The media rows the purged events point at go with them (the sender's own uploads, and
    cached remote media); their files are removed by the sweep after the commit
    (media_files.MediaFiles.sweep), never before it."""
    marks = ",".join("?" * len(positions))
    for (pdu_json,) in conn.execute(f"SELECT json FROM events WHERE stream_ordering IN ({marks})", positions):
        pdu = event_json.load(pdu_json)
        refs = media_rules.mxc_references(pdu.get("content"))
        if refs and isinstance(pdu.get("sender"), str):
            media.delete_media(conn, refs, uploader=pdu["sender"])


def in_transaction(conn: sqlite3.Connection, fn: Any) -> Any:
    """Run fn(conn) in one IMMEDIATE transaction of an autocommit connection (the CLI's)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result
