#!/usr/bin/env python3
"""The series API's read cost: p50/p99 of one request (index range + bucketing), for a day and
a week of one-minute readings of one field, in a hub holding 10k and 1M points in all.

    python bench/series.py [--requests N] [--sizes 10000,1000000]

Runs the store read (matrix_core/store/series.py, through the hub's Database and its reader
connection) and the pure bucketing (matrix_core/series.py) that the HTTP handler runs, on a
temporary SQLite file with the hub's schema. The room asked about holds a week of one-minute
readings (10,080 points); the rest of the points are other rooms' and fields' (the history the
request must not pay for). A plot asks for 120 buckets.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_core.series import SeriesQuery, bucketize  # noqa: E402
from matrix_core.store import series as store  # noqa: E402
from matrix_core.store.database import Database, open_sync  # noqa: E402

WEEK = 10_080
MINUTE = 60_000
END = 1_700_000_000_000


def fill(path: Path, total: int) -> None:
    conn = open_sync(path, "OFF")
    conn.execute("BEGIN")
    rows = [("!plot:hub", "t", END - (WEEK - i) * MINUTE, i, 20.0 + (i % 60) / 10) for i in range(WEEK)]
    others = total - WEEK
    rooms = max(1, others // WEEK)
    rows += [(f"!other{r}:hub", "t", END - (WEEK - i) * MINUTE, WEEK + r * WEEK + i, float(i))
             for r in range(rooms) for i in range(min(WEEK, others - r * WEEK))]
    conn.executemany("INSERT INTO series_points (room_id, field, ts, pos, value) VALUES (?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    conn.close()


async def measure(path: Path, requests: int) -> dict[str, list[float]]:
    db = Database(path)
    await db.open()
    out: dict[str, list[float]] = {}
    try:
        for name, span in (("day", 1440 * MINUTE), ("week", WEEK * MINUTE)):
            query = SeriesQuery("t", END - span, END, 120)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                rows = await store.points(db, "!plot:hub", "t", query.start, query.end)
                buckets = bucketize(query, ((ts, v) for ts, _p, v in rows))
                times.append((time.perf_counter() - started) * 1000)
            assert len(buckets) == 120 and sum(b["count"] for b in buckets) == span // MINUTE, len(buckets)
            out[name] = times
    finally:
        await db.close()
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--sizes", default="10000,1000000")
    args = parser.parse_args()
    print(f"series read (store range + 120 buckets), {args.requests} requests each")
    print(f"{'points in hub':>14} {'range':>6} {'points read':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for total in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "hub.db"
            fill(path, max(total, WEEK))
            results = asyncio.run(measure(path, args.requests))
        for name, times in results.items():
            read = 1440 if name == "day" else WEEK
            print(f"{total:>14,} {name:>6} {read:>12,} {statistics.median(times):>8.2f} {pct(times, 0.99):>8.2f}")


if __name__ == "__main__":
    main()
