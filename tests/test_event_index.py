"""The event index (matrix_core/store/event_index.py): pure merge logic, and the index on a real
SQLite file: every stored id and every room page is found at every moment (edges not yet indexed,
indexing steps, merges), purged events drop out, late positions inside the span are indexed at
once, a database from before the index is migrated, and storing events writes no index page."""
from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_core.store import event_index as ix
from matrix_core.store.database import open_sync
from matrix_core.store.migrations import CORE_MIGRATIONS

ROOMS = ["!a:hub", "!b:hub", "!c:hub"]


def test_event_key_is_stable_and_48_bit() -> None:
    key = ix.event_key("$abc")
    assert key == ix.event_key("$abc") and 0 <= key < 2 ** 48
    assert ix.event_key("$abd") != key


def test_pick_merge_picks_the_lowest_full_level_and_never_the_top() -> None:
    assert ix.pick_merge({0: list(range(ix.RUNS_PER_LEVEL - 1))}) is None
    full = list(range(1, ix.RUNS_PER_LEVEL + 1))
    assert ix.pick_merge({0: [5], 2: full, 3: full}) == (3, full)
    assert ix.pick_merge({ix.LEVELS - 1: full * 2}) is None  # the top level only gathers


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 50), st.integers(-5, 5)), max_size=40), min_size=1, max_size=5),
       st.integers(1, 7))
def test_merge_chunks_reassemble_the_sorted_union(sources: list[list[tuple[int, int]]], limit: int) -> None:
    """Feeding merge_chunk the next `limit` rows of each source after the last row written, as
    compact_step does, writes every row exactly once, in order."""
    sources = [sorted(set(s)) for s in sources]
    written: list[tuple[int, int]] = []
    after = (-1, 0)
    for _ in range(1000):
        batches = [[row for row in s if row > after][:limit] for s in sources]
        rows, done = ix.merge_chunk(batches, limit)
        written.extend(rows)
        if done:
            break
        assert rows, "a step must make progress"
        after = rows[-1]
    assert written == sorted(row for s in sources for row in s)


# -- on a real database ---------------------------------------------------------------------------

def _db(tmp_path: Path) -> sqlite3.Connection:
    return open_sync(tmp_path / "db.sqlite")


def _store(conn: sqlite3.Connection, positions: list[int], late: bool = False) -> dict[str, int]:
    """Bare events rows (rooms in turn), as the rooms service writes them: not indexed, unless
    `late` (then as events from elsewhere, which index_late looks at)."""
    ids = {f"${pos}:{random.random()}": pos for pos in positions}
    rows = [(pos, eid, ROOMS[pos % len(ROOMS)]) for eid, pos in ids.items()]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts, json) "
        "VALUES (?, ?, ?, 'm.room.message', '@u:hub', 1, 0, '{}')", rows)
    if late:
        ix.index_late(conn, rows)
    conn.execute("COMMIT")
    return ids


def _step(conn: sqlite3.Connection, limit: int = ix.CHUNK, tail: int = ix.TAIL) -> bool:
    conn.execute("BEGIN")
    more = ix.compact_step(conn, limit, tail)
    conn.execute("COMMIT")
    return more


def _all_found(conn: sqlite3.Connection, ids: dict[str, int]) -> None:
    for event_id, pos in ids.items():
        assert ix.find(conn, event_id) == [pos], event_id
    found = conn.execute(f"SELECT event_id, stream_ordering FROM events WHERE {ix.by_ids()}",
                         (ix.ids_param(ids),)).fetchall()
    assert dict(found) == ids


def _rooms_paged_right(conn: sqlite3.Connection) -> None:
    """A few pages of each room, both ways, against the same query without the index."""
    for room in ROOMS:
        for order in ("ASC", "DESC"):
            upto = random.randint(-50, 20_000)
            sql = ix.room_events("e.stream_ordering, e.event_id", "?1", "{pos} <= ?2", order, "?3")
            got = conn.execute(sql, (room, upto, 7)).fetchall()
            want = conn.execute(
                f"SELECT stream_ordering, event_id FROM events NOT INDEXED WHERE room_id = ? AND stream_ordering <= ? "
                f"ORDER BY stream_ordering {order} LIMIT 7", (room, upto)).fetchall()
            assert got == want, (room, order, upto)
            after = upto - random.randint(0, 3000)
            got = [row[:2] for row in conn.execute(ix.timeline_page(order), (room, after, upto, 7))]
            want = conn.execute(
                f"SELECT stream_ordering, event_id FROM events NOT INDEXED WHERE room_id = ? AND stream_ordering > ? "
                f"AND stream_ordering <= ? ORDER BY stream_ordering {order} LIMIT 7", (room, after, upto)).fetchall()
            assert got == want, (room, order, after, upto)


def test_every_id_and_room_page_is_found_at_every_step_while_events_keep_arriving(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    tail = 40
    ids: dict[str, int] = {}
    next_pos, next_back = 1, -1
    steps = 0
    # Enough edges for level 0 to merge several times and level 1 once.
    for round_no in range(ix.RUNS_PER_LEVEL * ix.RUNS_PER_LEVEL + 3):
        ids.update(_store(conn, list(range(next_pos, next_pos + tail))))
        next_pos += tail
        if round_no % 5 == 0:  # backfill below everything, oldest first
            ids.update(_store(conn, list(range(next_back - tail + 1, next_back + 1))))
            next_back -= tail
        while _step(conn, limit=23, tail=tail):  # small chunks: many intermediate states
            steps += 1
            if steps % 7 == 0:
                ids.update(_store(conn, [next_pos]))  # a send between two steps
                next_pos += 1
                _all_found(conn, dict(random.sample(list(ids.items()), 30)))
                _rooms_paged_right(conn)
    _all_found(conn, ids)
    _rooms_paged_right(conn)
    lo, hi = ix.span(conn)
    assert lo < -tail and hi > next_pos - 2 * tail  # both edges were indexed
    runs = dict(conn.execute("SELECT level, COUNT(*) FROM event_index_runs GROUP BY level").fetchall())
    assert runs.get(2) == 1, runs  # RUNS_PER_LEVEL level-1 runs became one level-2 run
    assert all(count < ix.RUNS_PER_LEVEL for count in runs.values()), runs
    # Merged levels were emptied: no id is held twice; the room index holds each indexed event once.
    entries = sum(conn.execute(f"SELECT COUNT(*) FROM event_index_{level}").fetchone()[0]
                  for level in range(ix.LEVELS))
    indexed = sum(1 for pos in ids.values() if lo <= pos <= hi)
    assert entries == indexed
    assert conn.execute("SELECT COUNT(*) FROM room_index").fetchone() == (indexed,)


def test_a_merge_interrupted_by_a_stop_resumes(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ids: dict[str, int] = {}
    for start in range(1, 100 * (ix.RUNS_PER_LEVEL + 1), 100):
        ids.update(_store(conn, list(range(start, start + 100))))
        assert _step(conn, tail=100)  # indexes this edge
    assert _step(conn, 50) and _step(conn, 50)  # a merge planned, then one chunk copied
    conn.close()
    conn = _db(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM event_index_merge").fetchone() == (1,)
    _all_found(conn, ids)
    while _step(conn, 50, tail=100):
        pass
    assert conn.execute("SELECT COUNT(*) FROM event_index_runs WHERE level = 1").fetchone() == (1,)
    _all_found(conn, ids)


def test_purged_events_are_not_found_and_merges_drop_their_entries(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ids: dict[str, int] = {}
    for start in range(1, 100 * ix.RUNS_PER_LEVEL + 1, 100):
        ids.update(_store(conn, list(range(start, start + 100))))
        _step(conn, tail=100)
    purged = {eid: pos for eid, pos in ids.items() if pos % 3 == 0}
    conn.execute("DELETE FROM events WHERE stream_ordering % 3 = 0")
    for room in ROOMS:
        ix.forget(conn, room, list(purged.values()))
    assert ix.find(conn, next(iter(purged))) == []
    while _step(conn, tail=100):
        pass
    (level1,) = conn.execute("SELECT COUNT(*) FROM event_index_1").fetchone()
    assert level1 == len(ids) - len(purged)
    assert conn.execute("SELECT COUNT(*) FROM room_index").fetchone() == (len(ids) - len(purged),)
    _all_found(conn, {eid: pos for eid, pos in ids.items() if pos % 3})
    _rooms_paged_right(conn)


def test_edges_are_found_before_they_are_indexed(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ids = _store(conn, list(range(-300, 0)) + list(range(1, 50)))
    assert ix.span(conn) == (0, 0) and not _step(conn, tail=1000)
    _all_found(conn, ids)
    _rooms_paged_right(conn)


def test_a_late_position_inside_the_span_is_indexed_at_once(tmp_path: Path) -> None:
    """Backfill reserves positions below everything and may store them after that edge was
    indexed: such an event is indexed as it is stored, not lost between span and edge."""
    conn = _db(tmp_path)
    ids = _store(conn, [p for p in range(-200, 0) if p != -150])
    while _step(conn, tail=100):
        pass
    assert ix.span(conn)[0] == -200
    late = _store(conn, [-150], late=True)
    _all_found(conn, {**ids, **late})
    _rooms_paged_right(conn)


def test_a_database_from_before_the_index_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in CORE_MIGRATIONS[0][1].split(";"):
        if statement.strip():
            old.execute(statement)
    old.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_versions VALUES ('core', 1)")
    old.executemany(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts, json) "
        "VALUES (?, ?, ?, 'm.room.message', '@u:hub', 1, 0, '{}')",
        [(pos, f"$old{pos}", ROOMS[pos % len(ROOMS)]) for pos in range(-5, 2500) if pos],
    )
    old.close()
    conn = open_sync(path)
    assert ix.span(conn) == (-5, 2499)
    _all_found(conn, {f"$old{pos}": pos for pos in range(-5, 2500) if pos})
    _rooms_paged_right(conn)
    assert conn.execute("SELECT version FROM schema_versions WHERE component = 'core'").fetchone()[0] >= 2
    # The old indexes are gone with the old table: only the rowid finds events rows now, but for
    # migration 3's two partial indexes (membership and visibility events only: no message enters them).
    indexes = {row[1]: row[4] for row in conn.execute("PRAGMA index_list(events)")}
    assert indexes == {"events_member_changes": 1, "events_visibility_changes": 1}


def _wal_pages(wal: Path) -> list[int]:
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages, offset = [], 32
    while offset + 24 + page_size <= len(data):
        pages.append(struct.unpack(">I", data[offset:offset + 4])[0])
        offset += 24 + page_size
    return pages


def _index_pages(conn: sqlite3.Connection) -> set[int]:
    return {page for (page,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name LIKE 'event_index%' OR name LIKE 'room_index%'")}


def test_storing_events_writes_no_index_page_and_indexing_writes_few(tmp_path: Path) -> None:
    """The point of the index: events are stored without touching it; an edge is indexed in one
    write whose pages are mostly new ones, filled in order."""
    conn = _db(tmp_path)
    for start in range(1, 20_001, 1000):  # an index large enough for random keys to spread out
        _store(conn, list(range(start, start + 1000)))
        while _step(conn):
            pass
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _store(conn, list(range(20_001, 20_101)))  # one commit of 100 events
    assert not set(_wal_pages(tmp_path / "db.sqlite-wal")) & _index_pages(conn)
    _store(conn, list(range(20_101, 21_025)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _step(conn)  # 1,024 events indexed at once
    written = [p for p in _wal_pages(tmp_path / "db.sqlite-wal") if p in _index_pages(conn)]
    assert len(written) <= 40, written  # per-event indexes rewrote at least one page per event: 1,024+


def test_a_step_with_nothing_to_do_reads_a_few_rows_whatever_the_store_holds(tmp_path: Path) -> None:
    """The compactor asks after every quiet spell and every BUSY_CAP positions: finding the edges
    must cost the same on a store of 20,000 events as on one of 1,000 (a `MIN(), MAX()` pair in
    one SELECT made SQLite scan the whole events table each time)."""
    conn = _db(tmp_path)

    def vm_steps_of_an_idle_step() -> int:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(count, 10)
        try:
            assert not ix.index_edges(conn)
        finally:
            conn.set_progress_handler(None, 0)
        return steps

    _store(conn, list(range(1, 1001)))
    while _step(conn):
        pass
    small = vm_steps_of_an_idle_step()
    _store(conn, list(range(1001, 20_001)))
    while _step(conn):
        pass
    assert vm_steps_of_an_idle_step() <= small + 5


def _vm_steps(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> tuple[int, list[tuple[object, ...]]]:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 10)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 0)
    return steps, rows


def test_a_page_from_the_middle_of_the_history_reads_the_same_whatever_the_history_holds(tmp_path: Path) -> None:
    """`/messages` from a token in the middle of a room's history slowed with the history (1.9 ms
    at 10,000 events, 24 ms at 300,000): the edge branch sought by the page's own bound and scanned
    the events table from there down to its first event, looking for events beyond the span. A
    page (and a `where`-only query, as state_at and retention make) must cost the same at 30,000
    events as at 3,000, with the same unindexed edge above the span."""
    conn = _db(tmp_path)
    room = ROOMS[0]

    def grow_to(size: int, start: int) -> None:
        _store(conn, list(range(start, size + 1)))
        conn.execute("BEGIN")  # index all but the newest 200 (an edge as a running hub has)
        rows = conn.execute("SELECT stream_ordering, event_id, room_id FROM events WHERE stream_ordering > ? "
                            "AND stream_ordering <= ?", (ix.span(conn)[1], size - 200)).fetchall()
        ix._write_run(conn, rows)
        conn.execute("UPDATE event_index_span SET lo = 1, hi = ?", (size - 200,))
        conn.execute("COMMIT")

    def costs(size: int) -> list[int]:
        middle = size // 2
        out = []
        for order, params in (("DESC", (room, -(2 ** 62), middle, 10)), ("ASC", (room, middle, size, 10))):
            steps, rows = _vm_steps(conn, ix.timeline_page(order), params)
            assert len(rows) == 10
            out.append(steps)
        steps, rows = _vm_steps(conn, ix.room_events("e.stream_ordering", "?1", "{pos} <= ?2", "DESC", "1"),
                                (room, middle))
        assert rows
        out.append(steps)
        return out

    grow_to(3_000, 1)
    small = costs(3_000)
    grow_to(30_000, 3_001)
    large = costs(30_000)
    # Before the fix: 30,000 vs 3,000 events made the middle pages ~10x dearer (thousands of steps).
    for a, b in zip(small, large):
        assert b <= a + 10, (small, large)


def test_the_compactor_rides_along_with_the_next_commit_then_keeps_going_at_once() -> None:
    """A quiet spell's first step must not commit on its own: that would end the wait of QoS 0
    publishes gathering for a shared commit (mqtt_qos0_commit_ms). Once a step found work, the
    rest of it follows without waiting."""
    import asyncio

    async def main() -> list[float]:
        delays: list[float] = []
        answers = iter([True, True, False])  # two steps with work, then nothing left

        def submit(fn: object, delay: float) -> "asyncio.Future[bool]":
            assert fn is ix.compact_step
            delays.append(delay)
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.set_result(next(answers))
            return fut

        compactor = ix.Compactor(submit)
        compactor.poke()
        await compactor.wait_idle()
        assert compactor.steps == 2
        return delays

    assert asyncio.run(main()) == [ix.Compactor.RIDE_ALONG, 0.0, 0.0]
