"""Event id -> stream position, laid out so that storing an event dirties few pages (SD-card wear).

Why not a plain UNIQUE index on `events.event_id`: event ids are hashes, so each new event lands
on a random page of that index, and every commit rewrites one whole page per event for it (the
largest share of what a reading cost to write). Here the index is a small log-structured tree:

* level 0 holds entries keyed (epoch, key): the epoch is the position >> EPOCH_BITS, so the
  events of one commit, however many, share the few pages of the current epoch;
* when RUNS_PER_LEVEL closed runs gather on one level, `compact_step` merges them into one run
  on the next level, in bounded steps (one per write, so other writes interleave), written in key
  order (sequential pages) and then dropped from the level below; every level >= 1 is its own
  table, emptied at once when merged up (SQLite frees those pages without rewriting them);
* `event_index_runs` lists the runs readers probe; a run being built is not in it until the
  transaction that also retires its sources, so readers never see half a merge;
* lookups go through the `event_positions` view (one seek per live run, at most a few dozen) and
  always compare `events.event_id` too: keys are 48-bit hashes, and retention leaves entries
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
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

EPOCH_BITS = 10  # 1,024 positions per level-0 run: a few index pages take a whole commit's inserts
RUNS_PER_LEVEL = 8
LEVELS = 7  # the top level only gathers runs (8 runs there would be 2^31 events)
CHUNK = 4096  # entries copied per compaction step

_TABLES = [f"event_index_{level}" for level in range(LEVELS)]


def event_key(event_id: str) -> int:
    """A stable 48-bit hash of an event id (stored in 6 bytes; collisions are resolved by the
    comparison with `events.event_id` every lookup makes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=6).digest(), "big")


def epoch_of(position: int) -> int:
    """The level-0 run of a stream position (negative positions, backfill, floor like SQLite's >>)."""
    return position >> EPOCH_BITS


def register(conn: sqlite3.Connection) -> None:
    """Make `event_key(text)` callable from SQL on this connection (queries and migrations)."""
    conn.create_function("event_key", 1, event_key, deterministic=True)


def schema_sql() -> str:
    """The index's tables and view, for the migration that introduces them."""
    tables = "".join(
        f"CREATE TABLE {t} (run INTEGER NOT NULL, key INTEGER NOT NULL, pos INTEGER NOT NULL, "
        f"PRIMARY KEY (run, key, pos)) WITHOUT ROWID;\n" for t in _TABLES
    )
    view = "\nUNION ALL ".join(
        f"SELECT i.key AS key, i.pos AS pos FROM event_index_runs r JOIN {t} i ON i.run = r.run "
        f"WHERE r.level = {level}" for level, t in enumerate(_TABLES)
    )
    return (
        "CREATE TABLE event_index_runs (level INTEGER NOT NULL, run INTEGER NOT NULL, "
        "PRIMARY KEY (level, run)) WITHOUT ROWID;\n"
        + tables
        + "CREATE TABLE event_index_merge (level INTEGER NOT NULL, run INTEGER NOT NULL, sources TEXT NOT NULL, "
        "after_key INTEGER NOT NULL, after_pos INTEGER NOT NULL);\n"
        + f"CREATE VIEW event_positions AS {view};\n"
    )


def by_id(id_sql: str, alias: str = "") -> str:
    """SQL condition: the events row (optionally `alias.`) whose id is the SQL expression `id_sql`
    (a `?`, or a column of a joined table). A `?` here is bound twice: use `by_id_param`."""
    col = f"{alias}." if alias else ""
    return (f"{col}stream_ordering IN (SELECT pos FROM event_positions WHERE key = event_key({id_sql})) "
            f"AND {col}event_id = {id_sql}")


# The condition for one bound id: `?1` names the first parameter, so pass the id once.
BY_ID_PARAM = by_id("?1")


def by_ids(alias: str = "") -> str:
    """SQL condition for rows whose id is in a JSON array bound once as `?1` (any length)."""
    col = f"{alias}." if alias else ""
    return (f"{col}stream_ordering IN (SELECT pos FROM event_positions WHERE key IN "
            f"(SELECT event_key(value) FROM json_each(?1))) "
            f"AND {col}event_id IN (SELECT value FROM json_each(?1))")


def ids_param(event_ids: list[str] | tuple[str, ...]) -> str:
    return json.dumps(list(event_ids))


# -- writes ---------------------------------------------------------------------------------------

def add(conn: sqlite3.Connection, entries: list[tuple[str, int]]) -> None:
    """Index (event id, position) pairs: level 0, in the run of each position's epoch."""
    rows = [(epoch_of(pos), event_key(event_id), pos) for event_id, pos in entries]
    for epoch in {row[0] for row in rows}:
        # OR IGNORE on a row that exists dirties no page: only an epoch's first event writes here.
        conn.execute("INSERT OR IGNORE INTO event_index_runs (level, run) VALUES (0, ?)", (epoch,))
    conn.executemany("INSERT OR IGNORE INTO event_index_0 (run, key, pos) VALUES (?, ?, ?)", rows)


def find(conn: sqlite3.Connection, event_id: str) -> list[int]:
    """Positions of stored events with this id (from the writer, inside its transaction)."""
    return [pos for (pos,) in conn.execute(f"SELECT stream_ordering FROM events WHERE {BY_ID_PARAM}", (event_id,))]


def pick_merge(runs_by_level: dict[int, list[int]], open_epochs: set[int]) -> tuple[int, list[int]] | None:
    """(target level, source runs) of the next merge, or None: the lowest level holding
    RUNS_PER_LEVEL runs that no longer take inserts (level 0's open epochs still do)."""
    for level in range(LEVELS - 1):
        runs = sorted(r for r in runs_by_level.get(level, []) if level > 0 or r not in open_epochs)
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


def compact_step(conn: sqlite3.Connection, limit: int = CHUNK) -> bool:
    """Do one bounded piece of compaction inside the caller's transaction; True if more remains."""
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
    low, high = conn.execute("SELECT MIN(stream_ordering), MAX(stream_ordering) FROM events").fetchone()
    # Where the next positions go: after the newest, and below the oldest (backfill, always < 0).
    open_epochs = {epoch_of(high or 0), epoch_of(min(-1, (low or 0) - 1))}
    picked = pick_merge(runs_by_level, open_epochs)
    if picked is None:
        return False
    level, sources = picked
    (top,) = conn.execute(
        f"SELECT COALESCE(MAX(run), 0) FROM (SELECT run FROM event_index_runs WHERE level = ?1 "
        f"UNION ALL SELECT MAX(run) FROM {_TABLES[level]})", (level,)
    ).fetchone()
    conn.execute(
        "INSERT INTO event_index_merge (level, run, sources, after_key, after_pos) VALUES (?, ?, ?, -1, 0)",
        (level, top + 1, json.dumps(sources)),
    )
    return True


def _finish_merge(conn: sqlite3.Connection, level: int, run: int, sources: list[int]) -> None:
    """Publish the new run and retire its sources, in one transaction."""
    below = level - 1
    marks = ",".join("?" * len(sources))
    if below == 0:
        # Level 0 keeps taking inserts in its open epochs; a late insert into a source (never
        # expected) is copied here rather than lost.
        rows = conn.execute(
            f"SELECT key, pos FROM event_index_0 WHERE run IN ({marks}) ORDER BY key, pos", sources
        ).fetchall()
        _copy(conn, level, run, rows)
    conn.execute("INSERT INTO event_index_runs (level, run) VALUES (?, ?)", (level, run))
    conn.execute(f"DELETE FROM event_index_runs WHERE level = ? AND run IN ({marks})", (below, *sources))
    (others,) = conn.execute("SELECT COUNT(*) FROM event_index_runs WHERE level = ?", (below,)).fetchone()
    if below > 0 and others == 0:
        conn.execute(f"DELETE FROM {_TABLES[below]}")  # whole table: its pages are freed, not rewritten
    else:
        conn.execute(f"DELETE FROM {_TABLES[below]} WHERE run IN ({marks})", sources)
    conn.execute("DELETE FROM event_index_merge")


class Compactor:
    """Runs `compact_step` as ordinary queued writes, one at a time, while there is work: each
    step is small, so sends queued meanwhile share the next commits instead of waiting."""

    def __init__(self, write: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]) -> None:
        self._write = write
        self._task: asyncio.Task[None] | None = None
        self._epoch: int | None = None
        self.steps = 0

    def note_position(self, position: int) -> None:
        """Called as positions are handed out: a new epoch may have closed a run."""
        epoch = epoch_of(position)
        if epoch != self._epoch:
            self._epoch = epoch
            self.poke()

    def poke(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while await self._write(compact_step):
                self.steps += 1
        except Exception:  # a failed step leaves the index as it was; the next epoch retries
            log.exception("event index compaction step failed")

    async def wait_idle(self) -> None:
        """For tests and benches: until no step is running."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop between steps (a merge in progress is resumed at the next start)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
