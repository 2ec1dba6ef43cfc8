"""The relations index: one row per placed event whose content has an `m.relates_to` with a
`rel_type` (edits, reactions, thread replies, references), so that bundled aggregations,
`/relations` and `/threads` read a few index rows instead of decoding events.

Why a table of its own rather than columns or indexes on `events`: only relation events enter it,
so a device's reading (no `m.relates_to`) costs no extra page on an SD card, and the send path
pays one dict lookup (`row_for`). Rows are written with the events, in the same transaction
(EventRows), for local events and for events from other servers alike; the component's first
migration fills it from the events already stored (`relation_json`, an SQL function registered
on every connection, reads their JSON; `instr` first spares it the events without the key, whose
packed form keeps the text `m.relates_to` intact: no skeleton piece of event_json overlaps it).

A redacted child no longer relates to anything: reads leave out rows whose event is in
`redactions` (an index seek per row), so a redaction needs no write here and one arriving before
its target still applies. Retention deletes the rows of purged events (`forget`).
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any, Iterable

from ..events import Event
from ..relations import THREAD, Child, edit_shape_ok, relation_of
from . import event_index, event_json

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "relations"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        # event_relations_parent: a parent's children by position (bundles, /relations pages);
        # event_relations_threads: only thread replies, by room (the /threads list).
        """
        CREATE TABLE event_relations (
            event_id TEXT NOT NULL PRIMARY KEY,
            parent_id TEXT NOT NULL,
            rel_type TEXT NOT NULL,
            room_id TEXT NOT NULL,
            pos INTEGER NOT NULL,
            sender TEXT NOT NULL,
            type TEXT NOT NULL,
            origin_server_ts INTEGER NOT NULL,
            aggregation_key TEXT,
            edit_ok INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX event_relations_parent ON event_relations (parent_id, pos);
        CREATE INDEX event_relations_threads ON event_relations (room_id, parent_id, pos)
            WHERE rel_type = 'm.thread';
        INSERT OR IGNORE INTO event_relations (event_id, parent_id, rel_type, room_id, pos, sender, type,
                                               origin_server_ts, aggregation_key, edit_ok)
            WITH found AS MATERIALIZED (
                SELECT e.event_id, e.room_id, e.stream_ordering AS pos, e.sender, e.type, e.origin_server_ts,
                       relation_json(e.json, e.state_key IS NOT NULL) AS r
                FROM events e WHERE e.outlier = 0 AND e.rejected_reason IS NULL
                                    AND instr(e.json, 'm.relates_to') > 0)
            SELECT event_id, json_extract(r, '$[0]'), json_extract(r, '$[1]'), room_id, pos, sender, type,
                   origin_server_ts, json_extract(r, '$[2]'), json_extract(r, '$[3]')
            FROM found WHERE r IS NOT NULL
        """,
    ),
]

_COLUMNS = "event_id, parent_id, rel_type, room_id, pos, sender, type, origin_server_ts, aggregation_key, edit_ok"
# Rows whose event was redacted (alias r) are no relation any more.
NOT_REDACTED = "NOT EXISTS (SELECT 1 FROM redactions x WHERE x.redacted_event_id = r.event_id)"


def relation_json(stored: Any, is_state: int) -> str | None:
    """SQL function for the backfill: [parent id, rel_type, key, edit_ok] of a stored event's
    relation as JSON text, or NULL when it has none."""
    try:
        raw = event_json.unpack(stored)
        if isinstance(raw, bytes):
            if b"m.relates_to" not in raw:
                return None
        elif "m.relates_to" not in raw:
            return None
        pdu = json.loads(raw)
    except ValueError:  # a row that does not decode is left out, not a hub that cannot start
        return None
    if not isinstance(pdu, dict):
        return None
    content = pdu.get("content")
    relation = relation_of(content)
    if relation is None:
        return None
    return json.dumps([relation.parent_id, relation.rel_type, relation.key,
                       int(edit_shape_ok(str(pdu.get("type", "")), bool(is_state), content))])


def register(conn: sqlite3.Connection) -> None:
    """Make `relation_json(json, is_state)` callable from SQL on this connection (the migration)."""
    conn.create_function("relation_json", 2, relation_json, deterministic=True)


# -- writes ---------------------------------------------------------------------------------------

def row_for(pos: int, ev: Event) -> tuple[Any, ...] | None:
    """The index row of an event being placed, or None (the common case: one dict lookup)."""
    content = ev.pdu.get("content")
    if type(content) is not dict or "m.relates_to" not in content:
        return None
    relation = relation_of(content)
    if relation is None:
        return None
    return (ev.event_id, relation.parent_id, relation.rel_type, ev.room_id, pos, ev.sender, ev.type,
            ev.origin_server_ts, relation.key, int(edit_shape_ok(ev.type, ev.is_state, content)))


def insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Index events just written (inside the writer's transaction). A row whose event was not
    written after all (a duplicate the events table ignored) is not indexed."""
    conn.executemany(
        f"INSERT OR IGNORE INTO event_relations ({_COLUMNS}) SELECT ?,?,?,?,?,?,?,?,?,? "
        "WHERE EXISTS (SELECT 1 FROM events WHERE stream_ordering = ?5 AND event_id = ?1)",
        rows,
    )


def forget(conn: sqlite3.Connection, event_ids: list[str]) -> None:
    """Retention purged these events: drop their rows."""
    conn.executemany("DELETE FROM event_relations WHERE event_id = ?", [(eid,) for eid in event_ids])


# -- reads ----------------------------------------------------------------------------------------

def _child(row: tuple[Any, ...]) -> Child:
    return Child(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))


_CHILD_COLUMNS = "r.event_id, r.parent_id, r.rel_type, r.pos, r.sender, r.type, r.origin_server_ts, r.edit_ok"


async def rooms_with_relations(db: Database) -> list[str]:
    """Rooms holding at least one relation (their bundles need a lookup; others' never do)."""
    rows = await db.fetchall("SELECT DISTINCT room_id FROM event_relations")
    return [room_id for (room_id,) in rows]


async def children(db: Database, parents: Iterable[tuple[str, str]], rel_types: tuple[str, ...]) -> list[Child]:
    """The non-redacted children of the given (room id, parent id) pairs with one of `rel_types`,
    in position order: one query for a whole page of parents."""
    pairs = [[room_id, parent_id] for room_id, parent_id in parents]
    if not pairs:
        return []
    marks = ",".join("?" * len(rel_types))
    rows = await db.fetchall(
        f"SELECT {_CHILD_COLUMNS} FROM json_each(?1) p JOIN event_relations r "
        "ON r.parent_id = json_extract(p.value, '$[1]') AND r.room_id = json_extract(p.value, '$[0]') "
        f"WHERE r.rel_type IN ({marks}) AND {NOT_REDACTED} ORDER BY r.pos",
        (json.dumps(pairs), *rel_types),
    )
    return [_child(row) for row in rows]


def page_sql(order: str) -> str:
    """A page of a parent's children (`/relations`): parameters (parent id, room id, rel_type or
    NULL, event type or NULL, depth, after, upto, limit); positions in (after, upto].

    With depth > 1 (recurse) the children of children are followed too, `depth` levels in all,
    each through events that match the filters themselves (the spec: an event reached only
    through a non-matching one is left out)."""
    match = ("r.room_id = ?2 AND (?3 IS NULL OR r.rel_type = ?3) AND (?4 IS NULL OR r.type = ?4) "
             f"AND {NOT_REDACTED}")
    return (
        "WITH RECURSIVE tree(id, depth) AS (SELECT ?1, 1 UNION "
        f"SELECT r.event_id, t.depth + 1 FROM tree t JOIN event_relations r ON r.parent_id = t.id "
        f"WHERE t.depth < ?5 AND {match}) "
        f"SELECT {_CHILD_COLUMNS} FROM event_relations r WHERE r.parent_id IN (SELECT id FROM tree) AND {match} "
        f"AND r.pos > ?6 AND r.pos <= ?7 ORDER BY r.pos {order} LIMIT ?8"
    )


async def page(db: Database, parent_id: str, room_id: str, rel_type: str | None, event_type: str | None,
               depth: int, after: int, upto: int, limit: int, forwards: bool) -> list[Child]:
    rows = await db.fetchall(page_sql("ASC" if forwards else "DESC"),
                             (parent_id, room_id, rel_type, event_type, depth, after, upto, limit))
    return [_child(row) for row in rows]


THREAD_ROOTS_SQL = (
    # Parameters: room id, newest latest-position wanted, limit, user id or NULL (participated).
    "SELECT r.parent_id, MAX(r.pos) AS latest FROM event_relations r "
    f"WHERE r.room_id = ?1 AND r.rel_type = '{THREAD}' AND {NOT_REDACTED} GROUP BY r.parent_id "
    "HAVING latest <= ?2 AND (?4 IS NULL OR MAX(r.sender = ?4) = 1 OR EXISTS (SELECT 1 FROM events e "
    f"WHERE {event_index.by_id('r.parent_id', 'e')} AND e.sender = ?4)) "
    "ORDER BY latest DESC LIMIT ?3"
)


async def thread_roots(db: Database, room_id: str, upto: int, limit: int,
                       participant: str | None) -> list[tuple[str, int]]:
    """(root id, position of its latest reply) of the room's threads whose latest reply is at or
    before `upto`, most recently active first; with `participant`, only threads that user
    started or replied in."""
    rows = await db.fetchall(THREAD_ROOTS_SQL, (room_id, upto, limit, participant))
    return [(root, latest) for root, latest in rows]


async def thread_replies(db: Database, room_id: str, after: int, upto: int, limit: int) -> list[tuple[str, int, str]]:
    """(root id, position, event type) of the room's thread replies in (after, upto], newest first,
    at most `limit` (sliding sync's threads extension: which threads moved since the last answer)."""
    rows = await db.fetchall(
        f"SELECT r.parent_id, r.pos, r.type FROM event_relations r WHERE r.room_id = ?1 AND r.rel_type = '{THREAD}' "
        f"AND r.pos > ?2 AND r.pos <= ?3 AND {NOT_REDACTED} ORDER BY r.pos DESC LIMIT ?4",
        (room_id, after, upto, limit))
    return [(root, pos, event_type) for root, pos, event_type in rows]


async def updated_threads(db: Database, room_id: str, after: int, ceiling: int, before: int,
                          limit: int) -> list[tuple[str, int, str, int]]:
    """(root id, position of its newest reply, that reply's type, replies) of the room's threads
    with replies in (after, ceiling] whose newest such reply is at or before `before`, the most
    recently updated first (MSC4360's /thread_updates: each thread once, wherever a page ends).
    SQLite gives the bare `type` from the row that holds MAX(pos)."""
    rows = await db.fetchall(
        f"SELECT r.parent_id, MAX(r.pos) AS latest, r.type, COUNT(*) FROM event_relations r "
        f"WHERE r.room_id = ?1 AND r.rel_type = '{THREAD}' AND r.pos > ?2 AND r.pos <= ?3 AND {NOT_REDACTED} "
        "GROUP BY r.parent_id HAVING latest <= ?4 ORDER BY latest DESC LIMIT ?5",
        (room_id, after, ceiling, before, limit))
    return [(root, latest, event_type, count) for root, latest, event_type, count in rows]


async def has_annotation(db: Database, parent_id: str, sender: str, event_type: str, key: str) -> bool:
    """Has `sender` already annotated `parent_id` with this type and key (not redacted)?"""
    row = await db.fetchone(
        "SELECT 1 FROM event_relations r WHERE r.parent_id = ? AND r.sender = ? AND r.type = ? "
        f"AND r.rel_type = 'm.annotation' AND r.aggregation_key = ? AND {NOT_REDACTED} LIMIT 1",
        (parent_id, sender, event_type, key),
    )
    return row is not None


async def is_parent(db: Database, event_id: str) -> bool:
    """Does any event relate to `event_id`?"""
    return await db.fetchone("SELECT 1 FROM event_relations WHERE parent_id = ? LIMIT 1", (event_id,)) is not None


async def placed_events(db: Database, event_ids: list[str]) -> list[tuple[int, str, str, Any]]:
    """(position, event id, room id, stored json) of the placed (timeline) events among the ids."""
    if not event_ids:
        return []
    return await db.fetchall(
        f"SELECT e.stream_ordering, e.event_id, e.room_id, e.json FROM events e WHERE {event_index.by_ids('e')} "
        f"AND {event_index.TIMELINE}",
        (event_index.ids_param(event_ids),),
    )


MAX_THREAD_DEPTH = 3  # an edit of a reaction of a thread reply... deeper chains are not in a thread


async def threads_of(db: Database, event_ids: Iterable[str]) -> dict[str, str]:
    """The thread root of each of these events that is in a thread: a thread reply, or (at any
    depth up to MAX_THREAD_DEPTH) an edit, reaction or reference of one (Synapse's
    get_thread_id). Events in the main timeline are left out."""
    found: dict[str, str] = {}
    current: dict[str, list[str]] = {}  # id looked up -> the asked ids it stands for
    for event_id in event_ids:
        current.setdefault(event_id, []).append(event_id)
    for _ in range(MAX_THREAD_DEPTH + 1):
        if not current:
            break
        ids = list(current)
        rows: list[Any] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows += await db.fetchall("SELECT event_id, parent_id, rel_type FROM event_relations "
                                      f"WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)
        following: dict[str, list[str]] = {}
        for event_id, parent_id, rel_type in rows:
            asked = current[str(event_id)]
            if rel_type == THREAD:
                found.update((a, str(parent_id)) for a in asked)
            else:
                following.setdefault(str(parent_id), []).extend(asked)
        current = following
    return found
