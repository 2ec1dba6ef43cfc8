"""Events, current state and redactions: the persister's rows (`EventRows`) and the reads of the
rooms service (matrix_core/service/). Events are found by id and by room through the store's own
index (event_index.py, private to the store); no caller outside the store sees its SQL.

Reads return plain rows (stored event JSON undecoded: callers holding the event in memory skip
the decoding); writes are functions of a sqlite3 connection run by the writer thread."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..events import Event
from . import event_index, event_json, relations, series
from .database import Database, WriteFn
from .event_index import Compactor

__all__ = ["Compactor", "EventRows"]

# -- start-up ---------------------------------------------------------------------------------------


async def position_bounds(db: Database) -> tuple[int | None, int | None]:
    """(highest, lowest) stream position held, None for each when there are no events."""
    top = await db.fetchone("SELECT MAX(stream_ordering) FROM events")
    bottom = await db.fetchone("SELECT MIN(stream_ordering) FROM events")
    return (top[0] if top else None), (bottom[0] if bottom else None)


async def local_memberships(db: Database) -> list[tuple[str, str, str, int]]:
    """(room_id, user_id, membership, position of the member event) of every current member event."""
    return await db.fetchall(
        "SELECT c.room_id, c.state_key, c.membership, e.stream_ordering FROM current_state c "
        f"JOIN events e ON {event_index.by_id('c.event_id', 'e')} WHERE c.type = 'm.room.member'"
    )


async def recent_txns(db: Database, limit: int) -> list[tuple[str, str]]:
    """(txn_key, event_id) of the newest `limit` events sent with a transaction id, oldest first."""
    rows = await db.fetchall(
        "SELECT txn_key, event_id FROM events WHERE txn_key IS NOT NULL ORDER BY stream_ordering DESC LIMIT ?",
        (limit,),
    )
    return list(reversed(rows))


async def redactions(db: Database) -> list[tuple[str, str, str, Any]]:
    """(redacted event id, redaction event id, room id, redaction's stored json) of every redaction."""
    return await db.fetchall(
        "SELECT r.redacted_event_id, r.redaction_event_id, e.room_id, e.json FROM redactions r "
        f"JOIN events e ON {event_index.by_id('r.redaction_event_id', 'e')}"
    )


# -- a room's current state -------------------------------------------------------------------------


async def latest_timeline_event(db: Database, room_id: str) -> tuple[int, str] | None:
    """(position, event id) of the room's newest timeline event."""
    row = await db.fetchone(
        event_index.room_events("e.stream_ordering, e.event_id", "?1", event_index.TIMELINE, "DESC", "1"),
        (room_id,))
    return None if row is None else (row[0], row[1])


async def current_state_json(db: Database, room_id: str) -> list[tuple[str, Any]]:
    """(event id, stored json) of the room's current state events."""
    return await db.fetchall(
        f"SELECT e.event_id, e.json FROM current_state c JOIN events e ON {event_index.by_id('c.event_id', 'e')} "
        "WHERE c.room_id = ?",
        (room_id,),
    )


async def current_state_of_type(db: Database, event_type: str) -> list[tuple[str, str, Any]]:
    """(room id, state key, stored json) of every room's current state events of one type."""
    return await db.fetchall(
        "SELECT c.room_id, c.state_key, e.json FROM current_state c "
        f"JOIN events e ON {event_index.by_id('c.event_id', 'e')} "
        "WHERE c.type = ?",
        (event_type,),
    )


async def max_depth(db: Database, event_ids: list[str]) -> int:
    row = await db.fetchone(f"SELECT MAX(depth) FROM events WHERE {event_index.by_ids()}",
                            (event_index.ids_param(event_ids),))
    return row[0] or 0 if row else 0


# -- events by id -------------------------------------------------------------------------------------


async def accepted_event(db: Database, event_id: str) -> tuple[str, Any, int] | None:
    """(room id, stored json, position) of an accepted (not rejected) event."""
    row = await db.fetchone(
        f"SELECT room_id, json, stream_ordering FROM events WHERE {event_index.BY_ID_PARAM} "
        "AND rejected_reason IS NULL",
        (event_id,),
    )
    return None if row is None else (row[0], row[1], row[2])


async def events_any(db: Database, event_ids: list[str]) -> list[tuple[str, str, Any, int, str | None]]:
    """(event id, room id, stored json, outlier flag, rejected reason) of the known ones among
    `event_ids` (at most a few hundred: callers chunk)."""
    return await db.fetchall(
        f"SELECT event_id, room_id, json, outlier, rejected_reason FROM events WHERE {event_index.by_ids()}",
        (event_index.ids_param(event_ids),),
    )


async def events_json(db: Database, event_ids: list[str]) -> list[tuple[str, Any]]:
    """(event id, stored json) of the known ones among `event_ids`."""
    return await db.fetchall(
        f"SELECT event_id, json FROM events WHERE {event_index.by_ids()}",
        (event_index.ids_param(event_ids),),
    )


async def state_group_after(db: Database, event_id: str) -> int | None:
    """The state group after a placed (non-outlier), accepted event; None if unknown or without one."""
    row = await db.fetchone(
        f"SELECT state_group FROM events WHERE {event_index.BY_ID_PARAM} AND outlier = 0 "
        "AND rejected_reason IS NULL",
        (event_id,),
    )
    return None if row is None else row[0]


# -- timelines ----------------------------------------------------------------------------------------


async def state_group_at(db: Database, room_id: str, position: int) -> int | None:
    """The state group of the room's last event with one at or before `position` (None: none)."""
    row = await db.fetchone(
        event_index.room_events("e.stream_ordering, e.state_group", "?1",
                                "e.state_group IS NOT NULL", "DESC", "1", upto="?2"),
        (room_id, position),
    )
    return None if row is None else row[1]


async def timeline_page(db: Database, room_id: str, lower: int, upto: int, limit: int,
                        order: str) -> list[tuple[int, str, str, Any]]:
    """(position, event id, room id, stored json) of timeline events in (lower, upto], `limit`
    of them from the top ("DESC") or the bottom ("ASC")."""
    return await db.fetchall(event_index.timeline_page(order), (room_id, lower, upto, limit))


# -- the persister's rows -------------------------------------------------------------------------------


class EventRows:
    """The rows one persistence step writes, and what to announce once they are committed."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        # Per event: built here just now (its id, a hash of new content, cannot be stored yet).
        self.fresh: list[bool] = []
        self.groups: list[tuple[Any, ...]] = []
        self.entries: list[tuple[Any, ...]] = []
        self.current: list[tuple[Any, ...]] = []
        self.current_deleted: list[tuple[str, str, str]] = []
        self.redactions: list[tuple[str, str]] = []
        self.relations: list[tuple[Any, ...]] = []  # rows of the relations index (store/relations.py)
        self.series: list[tuple[Any, ...]] = []  # rows of the readings index (store/series.py)
        self.member_updates: list[tuple[str, str, int]] = []
        self.notify: list[tuple[int, Event]] = []
        self.new_room: tuple[str, str, str | None] | None = None
        self.visibility_changed = False  # holds an m.room.history_visibility event (read_access)
        self.room_update: tuple[str, int | None, str] | None = None
        self.also: list[WriteFn] = []  # front ends' writes that commit with these events or not at all

    def add_event(self, pos: int, ev: Event, group: int | None, before_group: int | None, txn_key: str | None,
                  outlier: bool = False, rejected: str | None = None, announce: bool = True,
                  fresh: bool = False) -> None:
        if ev.canonical is not None:
            stored = event_json.pack(ev.canonical)
            ev.release_canonical()  # the row has it now; cached events stay light
        else:
            stored = event_json.pack(json.dumps(ev.pdu, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        self.events.append((
            pos, ev.event_id, ev.room_id, ev.type, ev.state_key, ev.sender, ev.depth, ev.origin_server_ts,
            group, before_group, int(outlier), rejected, txn_key, stored,
        ))
        self.fresh.append(fresh)
        if ev.type == "m.room.redaction" and ev.redacts and not outlier and rejected is None:
            self.redactions.append((ev.redacts, ev.event_id))
        if ev.type == "m.room.history_visibility":
            self.visibility_changed = True
        if not outlier and rejected is None:
            relation = relations.row_for(pos, ev)
            if relation is not None:
                self.relations.append(relation)
            if ev.type in series.READING_TYPES:
                self.series.extend(series.rows_for(pos, ev))
        if announce and not outlier and rejected is None:
            self.notify.append((pos, ev))

    def _write_events(self, conn: sqlite3.Connection) -> None:
        """Insert the events. An event that came from elsewhere may be stored already: an outlier
        (an auth event we fetched) placed for real later becomes a timeline row at its new
        position; any other duplicate is ignored. New events are indexed later, in bulk
        (store/event_index.py); one from elsewhere may have a position the index covers."""
        rows: list[tuple[Any, ...]] = []
        arrived: list[tuple[int, str, str]] = []  # stored now, not built here: maybe inside the span
        seen: set[str] = set()
        for row, fresh in zip(self.events, self.fresh):
            pos, event_id, outlier = row[0], row[1], row[10]
            if not fresh:
                if event_id in seen:
                    continue
                stored = conn.execute(
                    f"SELECT stream_ordering, outlier FROM events WHERE {event_index.BY_ID_PARAM}", (event_id,)
                ).fetchone()
                if stored is not None:
                    if stored[1] == 1 and outlier == 0:
                        conn.execute(
                            "UPDATE events SET stream_ordering = ?, state_group = ?, state_group_before = ?, "
                            "outlier = 0, rejected_reason = ? WHERE stream_ordering = ?",
                            (pos, row[8], row[9], row[11], stored[0]),
                        )
                        arrived.append((pos, event_id, row[2]))
                    continue
                arrived.append((pos, event_id, row[2]))
            seen.add(event_id)
            rows.append(row)
        conn.executemany(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth, "
            "origin_server_ts, state_group, state_group_before, outlier, rejected_reason, txn_key, json) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        event_index.index_late(conn, arrived)

    def write(self, conn: sqlite3.Connection) -> None:
        if self.new_room is not None:
            conn.execute("INSERT INTO rooms (room_id, room_version, creator) VALUES (?, ?, ?)", self.new_room)
        self._write_events(conn)
        if self.groups:
            conn.executemany(
                "INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES (?,?,?,?)", self.groups
            )
            conn.executemany(
                "INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES (?,?,?,?)",
                self.entries,
            )
        if self.current_deleted:
            conn.executemany(
                "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?", self.current_deleted
            )
        if self.current:
            conn.executemany(
                "INSERT OR REPLACE INTO current_state (room_id, type, state_key, event_id, membership) "
                "VALUES (?,?,?,?,?)",
                self.current,
            )
        if self.relations:
            relations.insert(conn, self.relations)
        if self.series:
            series.insert(conn, self.series)
        if self.redactions:
            series.forget_redacted(conn, [target for target, _ in self.redactions])
            conn.executemany(
                "INSERT OR IGNORE INTO redactions (redacted_event_id, redaction_event_id) VALUES (?,?)",
                self.redactions,
            )
        if self.room_update is not None:
            conn.execute(
                "UPDATE rooms SET forward_extremities = ?, current_state_group = ? WHERE room_id = ?",
                self.room_update,
            )
        for fn in self.also:
            fn(conn)

