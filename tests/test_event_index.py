"""The event-id index (matrix_core/store/event_index.py): pure merge logic, and the index on a real
SQLite file: every stored id is found at every moment of a compaction, purged ids drop out, a
database from before the index is migrated, and a commit of many events dirties few index pages."""
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


def test_event_key_is_stable_and_48_bit() -> None:
    key = ix.event_key("$abc")
    assert key == ix.event_key("$abc") and 0 <= key < 2 ** 48
    assert ix.event_key("$abd") != key


def test_epochs_floor_like_sqlite() -> None:
    conn = sqlite3.connect(":memory:")
    for pos in (-2049, -1025, -1024, -1, 0, 1023, 1024, 5000):
        (sql,) = conn.execute(f"SELECT {pos} >> {ix.EPOCH_BITS}").fetchone()
        assert ix.epoch_of(pos) == sql


def test_pick_merge_skips_open_epochs_and_picks_the_lowest_full_level() -> None:
    closed = list(range(ix.RUNS_PER_LEVEL - 1))
    assert ix.pick_merge({0: closed + [99]}, open_epochs={99}) is None
    assert ix.pick_merge({0: closed + [7, 99]}, open_epochs={99}) == (1, closed + [7])
    full = list(range(1, ix.RUNS_PER_LEVEL + 1))
    assert ix.pick_merge({0: [5], 2: full, 3: full}, open_epochs={5}) == (3, full)
    assert ix.pick_merge({ix.LEVELS - 1: full * 2}, open_epochs=set()) is None  # the top level only gathers


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


def _store(conn: sqlite3.Connection, positions: list[int]) -> dict[str, int]:
    """Bare events rows plus their index entries, as the rooms service writes them."""
    ids = {f"${pos}:{random.random()}": pos for pos in positions}
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts, json) "
        "VALUES (?, ?, '!r:hub', 'm.room.message', '@u:hub', 1, 0, '{}')",
        [(pos, eid) for eid, pos in ids.items()],
    )
    ix.add(conn, list(ids.items()))
    conn.execute("COMMIT")
    return ids


def _step(conn: sqlite3.Connection, limit: int) -> bool:
    conn.execute("BEGIN")
    more = ix.compact_step(conn, limit)
    conn.execute("COMMIT")
    return more


def _all_found(conn: sqlite3.Connection, ids: dict[str, int]) -> None:
    sample = list(ids.items())
    for event_id, pos in sample:
        assert ix.find(conn, event_id) == [pos], event_id
    found = conn.execute(f"SELECT event_id, stream_ordering FROM events WHERE {ix.by_ids()}",
                         (ix.ids_param(list(ids)),)).fetchall()
    assert dict(found) == ids


def test_every_id_is_found_at_every_step_of_compaction_while_events_keep_arriving(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    epoch = 1 << ix.EPOCH_BITS
    ids: dict[str, int] = {}
    next_pos = 1
    steps = 0
    # Enough epochs for level 0 to merge twice and level 1 once.
    for _ in range(ix.RUNS_PER_LEVEL * ix.RUNS_PER_LEVEL + 2):
        ids.update(_store(conn, list(range(next_pos, next_pos + epoch))))
        next_pos += epoch
        while _step(conn, limit=700):  # small chunks: many intermediate states
            steps += 1
            if steps % 7 == 0:
                ids.update(_store(conn, [next_pos]))  # a send between two steps of a merge
                next_pos += 1
                probe = random.sample(list(ids.items()), 50)
                _all_found(conn, dict(probe))
    _all_found(conn, ids)
    runs = dict(conn.execute("SELECT level, COUNT(*) FROM event_index_runs GROUP BY level").fetchall())
    assert runs.get(2) == 1, runs  # RUNS_PER_LEVEL level-1 runs became one level-2 run
    assert all(count <= ix.RUNS_PER_LEVEL + 1 for count in runs.values()), runs
    # Merged levels were emptied: no entry is held twice.
    entries = sum(conn.execute(f"SELECT COUNT(*) FROM event_index_{level}").fetchone()[0]
                  for level in range(ix.LEVELS))
    assert entries == len(ids)


def test_a_merge_interrupted_by_a_stop_resumes(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    epoch = 1 << ix.EPOCH_BITS
    ids = _store(conn, list(range(1, epoch * (ix.RUNS_PER_LEVEL + 2))))
    assert _step(conn, 500) and _step(conn, 500)  # planned, then one chunk copied
    conn.close()
    conn = _db(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM event_index_merge").fetchone() == (1,)
    _all_found(conn, ids)
    while _step(conn, 500):
        pass
    assert conn.execute("SELECT COUNT(*) FROM event_index_runs WHERE level = 1").fetchone() == (1,)
    _all_found(conn, ids)


def test_purged_events_are_not_found_and_merges_drop_their_entries(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    epoch = 1 << ix.EPOCH_BITS
    ids = _store(conn, list(range(1, epoch * (ix.RUNS_PER_LEVEL + 1))))
    purged = [eid for eid, pos in ids.items() if pos % 3 == 0]
    conn.execute("DELETE FROM events WHERE stream_ordering % 3 = 0")
    assert ix.find(conn, purged[0]) == []
    while _step(conn, 4096):
        pass
    (level1,) = conn.execute("SELECT COUNT(*) FROM event_index_1").fetchone()
    assert level1 == sum(1 for pos in ids.values() if pos % 3 and 0 <= ix.epoch_of(pos) < ix.RUNS_PER_LEVEL)
    _all_found(conn, {eid: pos for eid, pos in ids.items() if pos % 3})


def test_backfilled_positions_are_indexed_too(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ids = _store(conn, list(range(-3000, 0)) + list(range(1, 50)))
    _all_found(conn, ids)


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
        "VALUES (?, ?, '!r:hub', 'm.room.message', '@u:hub', 1, 0, '{}')",
        [(pos, f"$old{pos}") for pos in range(-5, 2500) if pos],
    )
    old.close()
    conn = open_sync(path)
    _all_found(conn, {f"$old{pos}": pos for pos in range(-5, 2500) if pos})
    assert conn.execute("SELECT version FROM schema_versions WHERE component = 'core'").fetchone()[0] >= 2
    # The constraint is gone with the old table: the index is what finds ids now.
    assert not [row for row in conn.execute("PRAGMA index_list(events)") if row[2]]


def _wal_pages(wal: Path) -> list[int]:
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages, offset = [], 32
    while offset + 24 + page_size <= len(data):
        pages.append(struct.unpack(">I", data[offset:offset + 4])[0])
        offset += 24 + page_size
    return pages


def test_a_commit_of_many_events_dirties_few_index_pages(tmp_path: Path) -> None:
    """The point of the index: ids are random, but one commit's entries share their epoch's pages."""
    conn = _db(tmp_path)
    for start in range(1, 20_001, 1000):  # an index large enough for random keys to spread out
        _store(conn, list(range(start, start + 1000)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _store(conn, list(range(20_001, 20_101)))  # one commit of 100 events
    index_pages = {page for (page,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name LIKE 'event_index%' OR name LIKE 'sqlite_autoindex_event_index%'")}
    written = [p for p in _wal_pages(tmp_path / "db.sqlite-wal") if p in index_pages]
    assert len(written) <= 6, written  # a UNIQUE index on event_id rewrote ~100 pages here
