#!/usr/bin/env python3
"""/sync latency with many unread events: R rooms x E messages from bob that alice has not read.

    python bench/sync_unread.py [--rooms 10] [--events 1000] [--repeat 5]

Alice's initial /sync computes each room's notification counts from scratch (the first one; the
next initial syncs find them cached), an incremental /sync after one new message per room
evaluates only those. Times are the median of --repeat calls (the first initial sync: once),
measured from the client (aiohttp) on loopback against the CLI-started hub; the hub's CPU time
per call is shown too. On main's code (no counts) the same script gives the baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "bench-password-1"
CONCURRENCY = 16


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "gateway.toml").write_text("messages_per_second = 0\n")
        gw = GatewayProcess(data)
        gw.start()
        try:
            gw.add_user("alice", PASSWORD)
            gw.add_user("bob", PASSWORD)
            alice, bob = gw.login("alice", PASSWORD), gw.login("bob", PASSWORD)
            base = f"{gw.http_url}/_matrix/client/v3"
            async with aiohttp.ClientSession() as http:
                async def call(method: str, path: str, token: str, body: Any = None) -> Any:
                    async with http.request(method, base + path, json=body,
                                            headers={"Authorization": f"Bearer {token}"}) as resp:
                        got = await resp.json()
                        if resp.status != 200:
                            raise RuntimeError(f"{method} {path}: {resp.status} {got}")
                        return got

                rooms = []
                for _ in range(args.rooms):
                    room = (await call("POST", "/createRoom", bob, {"preset": "public_chat"}))["room_id"]
                    await call("POST", f"/join/{urllib.parse.quote(room, safe='')}", alice, {})
                    rooms.append(urllib.parse.quote(room, safe=""))
                started = time.perf_counter()
                queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
                for room in rooms:
                    for i in range(args.events):
                        queue.put_nowait((room, i))

                async def sender() -> None:
                    while not queue.empty():
                        room, i = queue.get_nowait()
                        await call("PUT", f"/rooms/{room}/send/m.room.message/t{rooms.index(room)}-{i}", bob,
                                   {"msgtype": "m.text", "body": f"reading {i}"})

                await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
                print(f"sent {args.rooms * args.events} messages in {time.perf_counter() - started:.1f} s")

                async def timed(path: str) -> tuple[float, float, Any]:
                    cpu = cpu_seconds(gw.pid)
                    t0 = time.perf_counter()
                    body = await call("GET", path, alice)
                    return (time.perf_counter() - t0) * 1000, (cpu_seconds(gw.pid) - cpu) * 1000, body

                first_ms, first_cpu, body = await timed("/sync?timeout=0")
                counts = [r.get("unread_notifications", {}).get("notification_count")
                          for r in body["rooms"]["join"].values()]
                initial = [await timed("/sync?timeout=0") for _ in range(args.repeat)]
                incremental = []
                since = body["next_batch"]
                for n in range(args.repeat):
                    for room in rooms:
                        await call("PUT", f"/rooms/{room}/send/m.room.message/inc{n}-{rooms.index(room)}", bob,
                                   {"msgtype": "m.text", "body": "one more"})
                    ms, cpu, got = await timed(f"/sync?timeout=0&since={since}")
                    since = got["next_batch"]
                    incremental.append((ms, cpu, got))
                last_counts = [r.get("unread_notifications", {}).get("notification_count")
                               for r in incremental[-1][2]["rooms"]["join"].values()]
        finally:
            gw.stop()
    med = statistics.median
    print(f"\n/sync for alice, {args.rooms} rooms x {args.events} unread messages from bob")
    print(f"{'call':<34} {'ms':>8} {'hub CPU ms':>11}")
    print(f"{'initial, first (counts computed)':<34} {first_ms:>8.1f} {first_cpu:>11.0f}")
    print(f"{'initial, again (median)':<34} {med(x[0] for x in initial):>8.1f} {med(x[1] for x in initial):>11.0f}")
    print(f"{'incremental, +1 msg/room (median)':<34} {med(x[0] for x in incremental):>8.1f} "
          f"{med(x[1] for x in incremental):>11.0f}")
    print(f"notification_count per room: first {counts}, last {last_counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
