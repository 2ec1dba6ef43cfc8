"""Event id -> position and room -> positions, laid out so that storing an event dirties few pages
(SD-card wear).

Why not plain SQLite indexes on `events`: an index on the event id (a hash) puts each new event on
a random page, and one on (room, position) puts it on its room's last page; every commit then
rewrites a whole page per event and per room for them, on top of the events table's own last
page. Here new events are not indexed when they are stored at all:

* the *span* [lo, hi] (table `event_index_span`) is the range of positions that are indexed;
  events above it (new ones) and below it (backfill, always < 0) are the *edges*, found by a
  bounded scan of the events table by position (under TAIL rows once the hub has been quiet,
  about Compactor.BUSY_CAP under sustained traffic);
* once an edge holds TAIL events, `compact_step` indexes TAIL of them in one write: a new sorted
  run of (hash key, position) and the rooms' (room, position) entries, written in order (whole
  new pages, not one rewritten page per event), and widens the span;
* id runs form a small log-structured tree: when RUNS_PER_LEVEL runs gather on one level they
  are merged into one run on the next level, in bounded steps (one per write, so other writes
  interleave); every level >= 1 is its own table, emptied at once when merged up (SQLite frees
  those pages without rewriting them); `event_index_runs` lists the runs readers probe, and a
  run being built is not in it until the transaction that also retires its sources;
* an event stored at a position inside the span (rare: a reserved position written late) is
  indexed at once, in a run of its own;
* lookups compare `events.event_id` too: keys are 48-bit hashes, and retention leaves entries
  whose events are gone (merges drop those).

`event_key` is registered as an SQL function on every connection (`register`).
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import sqlite3
from typing import Any, Awaitable, Callable, Iterable

from .. import errors

log = logging.getLogger(__name__)

TAIL = 1024  # events an edge gathers before they are indexed, and the most one step indexes
RUNS_PER_LEVEL = 8
LEVELS = 7  # the top level only gathers runs (8 runs there would be 2^31 events)
CHUNK = 1024  # entries copied per merge step (a few ms: writes sharing its commit wait for it)

_TABLES = [f"event_index_{level}" for level in range(LEVELS)]
# The events a room's timeline shows (not outliers, not rejected or soft-failed), over `events e`.
TIMELINE = "e.outlier = 0 AND e.rejected_reason IS NULL"
_LO = "(SELECT lo FROM event_index_span)"
_HI = "(SELECT hi FROM event_index_span)"


def event_key(event_id: str) -> int:
    """A stable 48-bit hash of an event id (stored in 6 bytes; collisions are resolved by the
    comparison with `events.event_id` every lookup makes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=6).digest(), "big")


def register(conn: sqlite3.Connection) -> None:
    """Make `event_key(text)` callable from SQL on this connection (queries and migrations)."""
    conn.create_function("event_key", 1, event_key, deterministic=True)


def schema_sql() -> str:
    """The index's tables and views, for the migration that introduces them (the span starts
    empty: the migration sets it once it has indexed what the store held)."""
    tables = "".join(
        f"CREATE TABLE {t} (run INTEGER NOT NULL, key INTEGER NOT NULL, pos INTEGER NOT NULL, "
        f"PRIMARY KEY (run, key, pos)) WITHOUT ROWID;\n" for t in _TABLES
    )
    runs = "\nUNION ALL ".join(
        f"SELECT i.key AS key, i.pos AS pos FROM event_index_runs r JOIN {t} i ON i.run = r.run "
        f"WHERE r.level = {level}" for level, t in enumerate(_TABLES)
    )
    return (
        "CREATE TABLE event_index_runs (level INTEGER NOT NULL, run INTEGER NOT NULL, "
        "PRIMARY KEY (level, run)) WITHOUT ROWID;\n"
        + tables
        + "CREATE TABLE event_index_merge (level INTEGER NOT NULL, run INTEGER NOT NULL, sources TEXT NOT NULL, "
        "after_key INTEGER NOT NULL, after_pos INTEGER NOT NULL);\n"
        "CREATE TABLE room_index (room_id TEXT NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (room_id, pos)) "
        "WITHOUT ROWID;\n"
        "CREATE TABLE event_index_span (lo INTEGER NOT NULL, hi INTEGER NOT NULL);\n"
        "INSERT INTO event_index_span (lo, hi) VALUES (0, 0);\n"
        f"CREATE VIEW event_positions AS {runs};\n"
        f"CREATE VIEW unindexed_events AS SELECT stream_ordering AS pos, event_id FROM events "
        f"WHERE stream_ordering > {_HI} UNION ALL SELECT stream_ordering, event_id FROM events "
        f"WHERE stream_ordering < {_LO};\n"
    )


# -- queries --------------------------------------------------------------------------------------

def by_id(id_sql: str, alias: str = "") -> str:
    """SQL condition: the events row (optionally `alias.`) whose id is the SQL expression `id_sql`
    (a `?`, or a column of a joined table). A `?` here is bound more than once: use `BY_ID_PARAM`."""
    col = f"{alias}." if alias else ""
    return (f"{col}stream_ordering IN (SELECT pos FROM event_positions WHERE key = event_key({id_sql}) "
            f"UNION ALL SELECT pos FROM unindexed_events WHERE event_id = {id_sql}) "
            f"AND {col}event_id = {id_sql}")


# The condition for one bound id: `?1` names the first parameter, so pass the id once.
BY_ID_PARAM = by_id("?1")


def by_ids(alias: str = "") -> str:
    """SQL condition for rows whose id is in a JSON array bound once as `?1` (any length)."""
    col = f"{alias}." if alias else ""
    return (f"{col}stream_ordering IN (SELECT pos FROM event_positions WHERE key IN "
            f"(SELECT event_key(value) FROM json_each(?1)) "
            f"UNION ALL SELECT pos FROM unindexed_events WHERE event_id IN (SELECT value FROM json_each(?1))) "
            f"AND {col}event_id IN (SELECT value FROM json_each(?1))")


def ids_param(event_ids: Iterable[str]) -> str:
    return json.dumps(list(event_ids))


def room_events(columns: str, room: str, where: str = "1", order: str = "ASC", limit: str | None = None,
                *, after: str | None = None, upto: str | None = None) -> str:
    """A SELECT of `columns` (over `events e`; the first must be `e.stream_ordering`) for the
    events of room `room` (an SQL expression) meeting `where`, in position `order`, at most `limit`.

    `where` names the position `{pos}` and may use any `e.` column. `after` / `upto` (SQL
    expressions) bound the positions to (after, upto]: give a page's window there rather than in
    `where`, so that every branch seeks straight to it.

    Three branches, each stopping at `limit`, so a page of a long room's history reads about
    `limit` rows: the indexed span through the room index, then each edge (events above the span,
    and backfilled ones below it) by a range of positions that the edge's own bound and the window
    bound on both sides. In the edge branches `{pos}` is written `+e.stream_ordering`, which SQLite
    cannot use to seek: a condition in `where` such as `{pos} <= ?3` must not be chosen as the
    range instead of the edge's bound, or a page from the middle of the history scans the events
    table from there down to its first event (12.6x slower at 300,000 events than at 10,000)."""
    tail = f" LIMIT {limit}" if limit is not None else ""

    def branch(source: str, pos: str, cond: str, in_where: str | None = None) -> str:
        return (f"SELECT * FROM (SELECT {columns} FROM {source} WHERE {cond} "
                f"AND ({where.format(pos=in_where or pos)}) ORDER BY {pos} {order}{tail})")

    window_ri = (f" AND ri.pos > {after}" if after else "") + (f" AND ri.pos <= {upto}" if upto else "")
    indexed = branch("room_index ri JOIN events e ON e.stream_ordering = ri.pos", "ri.pos",
                     f"ri.room_id = {room}{window_ri}")
    top_lower = f"MAX({after}, {_HI})" if after else _HI
    top = branch("events e", "e.stream_ordering",
                 f"e.stream_ordering > {top_lower}" + (f" AND e.stream_ordering <= {upto}" if upto else "")
                 + f" AND e.room_id = {room}", "+e.stream_ordering")
    bottom_upper = f"MIN({upto}, {_LO} - 1)" if upto else f"{_LO} - 1"
    bottom = branch("events e", "e.stream_ordering",
                    f"e.stream_ordering <= {bottom_upper}" + (f" AND e.stream_ordering > {after}" if after else "")
                    + f" AND e.room_id = {room}", "+e.stream_ordering")
    return f"{indexed} UNION ALL {top} UNION ALL {bottom} ORDER BY 1 {order}{tail}"


def timeline_page(order: str) -> str:
    """A page of a room's timeline (`/messages`, sync, MQTT replay): parameters (room id, after,
    upto, limit), positions in (after, upto], newest first for "DESC"; columns position, event id,
    room id, JSON. Reads about `limit` rows wherever the window lies in the history."""
    return room_events("e.stream_ordering, e.event_id, e.room_id, e.json", "?1", TIMELINE, order, "?4",
                       after="?2", upto="?3")


def find(conn: sqlite3.Connection, event_id: str) -> list[int]:
    """Positions of stored events with this id (from the writer, inside its transaction)."""
    return [pos for (pos,) in conn.execute(f"SELECT stream_ordering FROM events WHERE {BY_ID_PARAM}", (event_id,))]


# -- writes ---------------------------------------------------------------------------------------

def span(conn: sqlite3.Connection) -> tuple[int, int]:
    lo, hi = conn.execute("SELECT lo, hi FROM event_index_span").fetchone()
    return int(lo), int(hi)


def index_late(conn: sqlite3.Connection, entries: list[tuple[int, str, str]]) -> None:
    """Events just stored, as (position, event id, room id): those at a position the span already
    covers (written after their edge was indexed) are indexed now; the rest wait in their edge."""
    if not entries:
        return
    lo, hi = span(conn)
    late = [entry for entry in entries if lo <= entry[0] <= hi]
    if late:
        _write_run(conn, late)


def _write_run(conn: sqlite3.Connection, entries: list[tuple[int, str, str]]) -> None:
    """A new level-0 id run and the rooms' entries for (position, event id, room id) triples,
    each inserted in key order so that they fill fresh pages one after another."""
    run = _next_run(conn, 0)
    conn.execute("INSERT INTO event_index_runs (level, run) VALUES (0, ?)", (run,))
    conn.executemany("INSERT OR IGNORE INTO event_index_0 (run, key, pos) VALUES (?, ?, ?)",
                     sorted((run, event_key(event_id), pos) for pos, event_id, _ in entries))
    conn.executemany("INSERT OR IGNORE INTO room_index (room_id, pos) VALUES (?, ?)",
                     sorted((room_id, pos) for pos, _, room_id in entries))


def _next_run(conn: sqlite3.Connection, level: int) -> int:
    (top,) = conn.execute(
        f"SELECT COALESCE(MAX(run), 0) FROM (SELECT run FROM event_index_runs WHERE level = ?1 "
        f"UNION ALL SELECT MAX(run) FROM {_TABLES[level]})", (level,)
    ).fetchone()
    return int(top) + 1


def index_edges(conn: sqlite3.Connection, tail: int = TAIL) -> bool:
    """Index the `tail` events of an edge nearest the span, if it has gathered that many
    positions (the top first); True if one was. One step stays small (a few ms)."""
    lo, hi = span(conn)
    # Two subqueries: SQLite reads MIN or MAX from the rowid's ends only when the aggregate is
    # alone in its SELECT; `SELECT MIN(x), MAX(x)` scans the whole table.
    bottom, top = conn.execute(
        "SELECT (SELECT MIN(stream_ordering) FROM events), (SELECT MAX(stream_ordering) FROM events)"
    ).fetchone()
    if top is not None and top - hi >= tail:
        _index_edge(conn, "stream_ordering > ? ORDER BY stream_ordering", hi, "hi", max, tail)
    elif bottom is not None and lo - bottom >= tail:
        _index_edge(conn, "stream_ordering < ? ORDER BY stream_ordering DESC", lo, "lo", min, tail)
    else:
        return False
    return True


def _index_edge(conn: sqlite3.Connection, beyond: str, bound: int, end: str,
                furthest: Callable[[Iterable[int]], int], tail: int) -> None:
    rows = conn.execute(f"SELECT stream_ordering, event_id, room_id FROM events WHERE {beyond} LIMIT ?",
                        (bound, tail)).fetchall()
    _write_run(conn, rows)
    conn.execute(f"UPDATE event_index_span SET {end} = ?", (furthest(pos for pos, _, _ in rows),))


def forget(conn: sqlite3.Connection, room_id: str, positions: list[int]) -> None:
    """Drop purged events' room entries (their id entries go at the next merge)."""
    conn.executemany("DELETE FROM room_index WHERE room_id = ? AND pos = ?", [(room_id, p) for p in positions])


def pick_merge(runs_by_level: dict[int, list[int]]) -> tuple[int, list[int]] | None:
    """(target level, source runs) of the next merge, or None: the lowest level holding
    RUNS_PER_LEVEL runs."""
    for level in range(LEVELS - 1):
        runs = sorted(runs_by_level.get(level, []))
        if len(runs) >= RUNS_PER_LEVEL:
            return level + 1, runs
    return None


def merge_chunk(batches: list[list[tuple[int, int]]], limit: int) -> tuple[list[tuple[int, int]], bool]:
    """One step of a k-way merge. Each batch is the next `limit` (key, pos) rows of one source, in
    order; returns the rows that can be written now, in order, and whether the sources are done.
    A source that filled its batch may hold more rows past its last one, so only rows up to the
    smallest such last row are safe to write."""
    full = [batch[-1] for batch in batches if len(batch) >= limit]
    bound = min(full) if full else None
    merged = heapq.merge(*batches)
    rows = [row for row in merged if bound is None or row <= bound]
    return rows, bound is None


def compact_step(conn: sqlite3.Connection, limit: int = CHUNK, tail: int = TAIL) -> bool:
    """Do one bounded piece of indexing or merging inside the caller's transaction; True if more
    may remain."""
    if index_edges(conn, tail):
        return True
    merge = conn.execute("SELECT level, run, sources, after_key, after_pos FROM event_index_merge").fetchone()
    if merge is None:
        return _start_merge(conn)
    level, run, sources_json, after_key, after_pos = merge
    sources: list[int] = json.loads(sources_json)
    source_table = _TABLES[level - 1]
    batches = [
        conn.execute(
            f"SELECT key, pos FROM {source_table} WHERE run = ? AND (key, pos) > (?, ?) ORDER BY key, pos LIMIT ?",
            (source, after_key, after_pos, limit),
        ).fetchall()
        for source in sources
    ]
    rows, done = merge_chunk(batches, limit)
    _copy(conn, level, run, rows)
    if not done:
        last_key, last_pos = rows[-1]
        conn.execute("UPDATE event_index_merge SET after_key = ?, after_pos = ?", (last_key, last_pos))
        return True
    _finish_merge(conn, level, run, sources)
    return True  # the next level may now be due


def _copy(conn: sqlite3.Connection, level: int, run: int, rows: list[tuple[int, int]]) -> None:
    # Entries whose event was purged (retention) are dropped on the way up.
    conn.executemany(
        f"INSERT OR IGNORE INTO {_TABLES[level]} (run, key, pos) SELECT ?, ?, ?3 "
        "WHERE EXISTS (SELECT 1 FROM events WHERE stream_ordering = ?3)",
        [(run, key, pos) for key, pos in rows],
    )


def _start_merge(conn: sqlite3.Connection) -> bool:
    runs_by_level: dict[int, list[int]] = {}
    for level, run in conn.execute("SELECT level, run FROM event_index_runs"):
        runs_by_level.setdefault(level, []).append(run)
    picked = pick_merge(runs_by_level)
    if picked is None:
        return False
    level, sources = picked
    conn.execute(
        "INSERT INTO event_index_merge (level, run, sources, after_key, after_pos) VALUES (?, ?, ?, -1, 0)",
        (level, _next_run(conn, level), json.dumps(sources)),
    )
    return True


def _finish_merge(conn: sqlite3.Connection, level: int, run: int, sources: list[int]) -> None:
    """Publish the new run and retire its sources, in one transaction."""
    below = level - 1
    marks = ",".join("?" * len(sources))
    conn.execute("INSERT INTO event_index_runs (level, run) VALUES (?, ?)", (level, run))
    conn.execute(f"DELETE FROM event_index_runs WHERE level = ? AND run IN ({marks})", (below, *sources))
    (others,) = conn.execute("SELECT COUNT(*) FROM event_index_runs WHERE level = ?", (below,)).fetchone()
    if others == 0:
        conn.execute(f"DELETE FROM {_TABLES[below]}")  # whole table: its pages are freed, not rewritten
    else:
        conn.execute(f"DELETE FROM {_TABLES[below]} WHERE run IN ({marks})", sources)
    conn.execute("DELETE FROM event_index_merge")


class Compactor:
    """Runs `compact_step` as ordinary queued writes, one at a time, while there is work, once
    the hub has been quiet for QUIET seconds: each step holds the writer (and the interpreter)
    for a few milliseconds, which a burst of device messages should not wait for. Under
    sustained traffic it runs anyway every BUSY_CAP positions, so the edges stay bounded.

    The first step of a run rides along with the next commit (or waits RIDE_ALONG seconds): a
    write of its own would end the wait of QoS 0 publishes gathering for a shared commit
    (`mqtt_qos0_commit_ms`), one extra commit per quiet spell, which at a few readings a second
    is most of them. Only when a step did work and more remains do the next ones commit at once."""

    QUIET = 0.5
    RIDE_ALONG = 10.0  # the longest a QoS 0 publish may wait for a shared commit
    BUSY_CAP = 8 * TAIL

    def __init__(self, submit: Callable[[Callable[[sqlite3.Connection], Any], float], Awaitable[Any]]) -> None:
        self._submit = submit
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last: tuple[int, int] | None = None  # positions at the last run
        self._noted: tuple[int, int] = (0, 0)  # the newest positions noted
        self._noted_at = 0.0  # loop time they were noted
        self.steps = 0

    def note_positions(self, top: int, bottom: int) -> None:
        """Called as positions are handed out (the next new one, the next backfill one): an edge
        may have gathered enough to be indexed. Cheap on the send path: one timer at a time,
        which looks again when it fires instead of being re-armed per write."""
        if self._last is None or top - self._last[0] + self._last[1] - bottom >= self.BUSY_CAP:
            self._last = (top, bottom)
            self.poke()
            return
        loop = asyncio.get_running_loop()
        self._noted, self._noted_at = (top, bottom), loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.QUIET, self._quiet)

    def _quiet(self) -> None:
        loop = asyncio.get_running_loop()
        still = self._noted_at + self.QUIET - loop.time()
        if still > 0:  # written to since the timer was set: wait out the rest of the quiet time
            self._timer = loop.call_later(still, self._quiet)
            return
        self._timer = None
        self._last = self._noted
        self.poke()

    def poke(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = self.RIDE_ALONG
        try:
            while await self._submit(compact_step, delay):
                self.steps += 1
                delay = 0.0
        except errors.StorageFull:  # the disk is full: the store logs that; the next poke retries
            pass
        except Exception:  # a failed step leaves the index as it was; the next poke retries
            log.exception("event index compaction step failed")

    async def wait_idle(self) -> None:
        """For tests and benches: until no step is running."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop between steps (a merge in progress is resumed at the next start)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
