#!/usr/bin/env python3
"""Does a page of `/messages` cost the same however long the room's history is?

    python bench/messages_growth.py [--sizes 10000,100000,1000000] [--pages 200] [--limit 10]

For each size, a store is built in a temporary directory: a real room (created through the rooms
service, so its state and first events are genuine), then SIZE copies of one real message event
written straight into the events table and indexed as one run, as the store's migration indexes
a database (building 1M events through the send path would take most of an hour). The newest
EDGE events are left unindexed, as a running hub always has some. Then a fresh Homeserver opens
the store and `Rooms.messages` (the function behind `GET /rooms/{id}/messages`; HTTP adds the same
constant on top at every size) pages backwards and forwards from the start, the middle and the
end of the history. Printed: ms per page (median of `--pages`) and the ratio to the smallest size.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from matrix_core.homeserver import Homeserver, HomeserverSettings  # noqa: E402
from matrix_core.service.accounts import Requester  # noqa: E402
from matrix_core.signing import generate_signing_key  # noqa: E402
from matrix_core.store import event_index  # noqa: E402
from matrix_core.store.accounts import insert_user  # noqa: E402

EDGE = 300  # newest events left for the edge scan
USER = "@bench:bench.local"


def _settings(path: Path) -> HomeserverSettings:
    return HomeserverSettings(server_name="bench.local", database_path=path,
                              signing_key=generate_signing_key("a_bench"), sqlite_synchronous="OFF")


async def _make_room(path: Path) -> str:
    hs = Homeserver(_settings(path))
    await hs.start()
    await hs.db.write(lambda c: insert_user(c, USER, None, False))
    requester = Requester(USER, "DEV", False, "")
    room_id = (await hs.rooms.create_room(requester, {"preset": "private_chat"}))["room_id"]
    await hs.rooms.send_event(requester, room_id, "m.room.message", {"msgtype": "m.text", "body": "template"})
    await hs.stop()
    return room_id


def _fill(path: Path, room_id: str, size: int) -> None:
    """SIZE copies of the room's last message, indexed as one run, the last EDGE left as an edge."""
    conn = sqlite3.connect(path, isolation_level=None)
    event_index.register(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    (top, template) = conn.execute(
        "SELECT stream_ordering, json FROM events WHERE type = 'm.room.message' ORDER BY stream_ordering DESC LIMIT 1"
    ).fetchone()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts, json) "
        "VALUES (?, ?, ?, 'm.room.message', ?, ?, 0, ?)",
        ((top + i, f"$bench{i}", room_id, USER, 10 + i, template) for i in range(1, size + 1)),
    )
    indexed_upto = top + size - EDGE
    (lo, hi) = conn.execute("SELECT lo, hi FROM event_index_span").fetchone()
    (run,) = conn.execute(f"SELECT COALESCE(MAX(run), 0) + 1 FROM event_index_{event_index.LEVELS - 1}").fetchone()
    conn.execute("INSERT INTO event_index_runs (level, run) VALUES (?, ?)", (event_index.LEVELS - 1, run))
    conn.execute(f"INSERT INTO event_index_{event_index.LEVELS - 1} (run, key, pos) "
                 "SELECT ?, event_key(event_id), stream_ordering FROM events WHERE stream_ordering > ?2 "
                 "AND stream_ordering <= ?3 ORDER BY 2, 3", (run, hi, indexed_upto))
    conn.execute("INSERT OR IGNORE INTO room_index (room_id, pos) SELECT room_id, stream_ordering FROM events "
                 "WHERE stream_ordering > ?1 AND stream_ordering <= ?2", (hi, indexed_upto))
    conn.execute("UPDATE event_index_span SET lo = ?, hi = ?", (min(lo, 1), indexed_upto))
    conn.execute("UPDATE rooms SET forward_extremities = '[]' WHERE room_id = ?", (room_id,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def _measure(path: Path, room_id: str, pages: int, limit: int) -> dict[str, float]:
    hs = Homeserver(_settings(path))
    await hs.start()
    hs.rooms.compactor.note_positions = lambda *_: None  # type: ignore[method-assign]  # measure reads only
    requester = Requester(USER, "DEV", False, "")
    top = hs.stream.position
    points = {"start": 1 + limit * 2, "middle": top // 2, "end": None}
    out: dict[str, float] = {}
    await hs.rooms.messages(requester, room_id, None, "b", limit, None)  # loads the room
    for where, pos in points.items():
        for direction in ("b", "f"):
            if direction == "f" and pos is None:
                pos = top - limit * 2
            times = []
            for _ in range(pages):
                t0 = time.perf_counter()
                page = await hs.rooms.messages(requester, room_id, pos, direction, limit, None)
                times.append(time.perf_counter() - t0)
            assert len(page["chunk"]) == limit, (where, direction, len(page["chunk"]))
            out[f"{where} {direction}"] = statistics.median(times) * 1000
    await hs.stop()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bench-messages-"))
        try:
            path = tmp / "hub.sqlite"
            t0 = time.perf_counter()
            room_id = await _make_room(path)
            _fill(path, room_id, size)
            built = time.perf_counter() - t0
            results[size] = await _measure(path, room_id, args.pages, args.limit)
            mb = os.path.getsize(path) / 1e6
            print(f"{size:>9,} events: built in {built:.1f} s ({mb:.0f} MB)", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    keys = list(next(iter(results.values())))
    print(f"\nms per /messages page of {args.limit} (median of {args.pages}); ratio to {sizes[0]:,} events")
    print(f"{'from, dir':<10}" + "".join(f"{s:>14,}" for s in sizes) + "   ratio")
    for key in keys:
        first = results[sizes[0]][key]
        row = "".join(f"{results[s][key]:>14.3f}" for s in sizes)
        print(f"{key:<10}{row}   {results[sizes[-1]][key] / first:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
