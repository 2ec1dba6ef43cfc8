#!/usr/bin/env python3
"""What a page of history costs a client: `GET /messages` and an initial `GET /sync`, per request.

    python bench/read_latency.py [--events 1000] [--requests 300] [--limit 50] [--relations]

Starts the hub through the CLI (tests/support/gateway.py), fills one room with `--events`
messages (with `--relations`, every fifth is a thread reply, an edit or a reaction to an earlier
message, so that pages carry bundled aggregations), then times `--requests` sequential
`/messages?dir=b&limit=LIMIT` pages and as many initial `/sync` calls with a timeline limit of
LIMIT, over one keep-alive connection. Prints the median and p99 latency of each, and the hub's
CPU time (user + system, from /proc) per send while filling the room and per read: on a machine
shared with other work the CPU per request varies much less than the latency does.

Why: bundled aggregations are added to every page these endpoints answer; a room without
relations (a device's readings) must not pay for them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

PASSWORD = "bench-password-1"


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, token: str, args: argparse.Namespace, pid: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(url, headers=headers, connector=aiohttp.TCPConnector(limit=1)) as http:
        async with http.post("/_matrix/client/v3/createRoom", json={"preset": "private_chat"}) as resp:
            room = (await resp.json())["room_id"]
        base = f"/_matrix/client/v3/rooms/{q(room)}"
        sent: list[str] = []
        cpu: dict[str, float] = {}
        started_cpu = cpu_seconds(pid)
        for i in range(args.events):
            content: dict[str, object] = {"msgtype": "m.text", "body": f"reading {i}"}
            event_type = "m.room.message"
            if args.relations and sent and i % 5 == 0:
                target = sent[-3] if len(sent) > 3 else sent[0]
                kind = (i // 5) % 3
                if kind == 0:
                    content["m.relates_to"] = {"rel_type": "m.thread", "event_id": sent[0]}
                elif kind == 1:
                    content = {**content, "m.new_content": {"msgtype": "m.text", "body": "fixed"},
                               "m.relates_to": {"rel_type": "m.replace", "event_id": target}}
                else:
                    event_type = "m.reaction"
                    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": str(i)}}
            async with http.put(f"{base}/send/{event_type}/t{i}", json=content) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                if event_type == "m.room.message" and "m.relates_to" not in content:
                    sent.append(body["event_id"])
        cpu["send"] = (cpu_seconds(pid) - started_cpu) / args.events
        times: dict[str, list[float]] = {"messages": [], "sync": []}
        sync_filter = q(json.dumps({"room": {"timeline": {"limit": args.limit}}}))
        paths = {"messages": f"{base}/messages?dir=b&limit={args.limit}",
                 "sync": f"/_matrix/client/v3/sync?timeout=0&filter={sync_filter}"}
        for name, path in paths.items():
            for _ in range(args.warmup):
                async with http.get(path) as resp:
                    await resp.read()
            started_cpu = cpu_seconds(pid)
            for _ in range(args.requests):
                started = time.perf_counter()
                async with http.get(path) as resp:
                    await resp.read()
                    assert resp.status == 200
                times[name].append(time.perf_counter() - started)
            cpu[name] = (cpu_seconds(pid) - started_cpu) / args.requests
        times["cpu"] = [cpu["send"], cpu["messages"], cpu["sync"]]
        return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--relations", action="store_true", help="make every fifth event a relation")
    args = ap.parse_args(argv)
    from tests.support.gateway import GatewayProcess

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "bench.toml"
        conf.write_text("messages_per_second = 0\n")
        with GatewayProcess(Path(tmp) / "data", ["--config", str(conf)]) as gw:
            gw.add_user("reader", PASSWORD)
            assert gw.http_url is not None
            times = asyncio.run(run(gw.http_url, gw.login("reader", PASSWORD), args, gw.pid))
    print(f"{args.events} events{' (every fifth a relation)' if args.relations else ''}, page limit {args.limit}, "
          f"{args.requests} requests each")
    cpu = times.pop("cpu")
    print(f"  hub CPU per request: send {cpu[0] * 1e6:.0f} us, messages {cpu[1] * 1e6:.0f} us, "
          f"sync {cpu[2] * 1e6:.0f} us")
    for name, samples in times.items():
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        print(f"  {name:9s} median {statistics.median(samples) * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
