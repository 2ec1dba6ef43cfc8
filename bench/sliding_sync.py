#!/usr/bin/env python3
"""Simplified Sliding Sync (MSC4186, issue 19): first answer and bump latency, against /sync v2.

    python bench/sliding_sync.py [--rooms 100] [--events 20] [--repeat 20] [--pollers 20] [--senders 8]

The issue's size is `--rooms 100 --events 1000` (100,000 messages, sent by --senders concurrent
requests so the hub's group commit batches them).

- initial sliding sync (no pos) of a user in --rooms rooms of --events messages each, one list of
  range [0, 19], timeline_limit 1, required_state name/avatar/own member; p50/p99 over --repeat;
- initial /sync v2 of the same user (timeline limit 1 by filter) for comparison;
- bump: a sliding sync long-polls with its pos; a message goes into the oldest room; the time from
  the send's 200 until the answer carrying that room is back, p50/p99; and the same for /sync v2;
- RSS of the hub with --pollers users (each in every room) long-polling sliding sync, before they
  connect and while they wait, and the time until all of them have one new message.

Client: aiohttp on loopback against the CLI-started hub (its own data dir, registration open).
"""
from __future__ import annotations

import argparse
import asyncio
import json
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
SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V3 = "/_matrix/client/v3"
LIST = {"lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1, "required_state": [
    ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.member", "$ME"]]}}}


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(name: str, samples: list[float]) -> None:
    print(f"{name:<52} p50 {pct(samples, 50) * 1000:8.2f} ms   p99 {pct(samples, 99) * 1000:8.2f} ms   (n={len(samples)})")


async def call(http: aiohttp.ClientSession, base: str, method: str, path: str, token: str | None = None,
               body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, base + path, json=body, headers=headers) as resp:
        got = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {got}")
        return got


async def seed(http: aiohttp.ClientSession, base: str, token: str, rooms: list[str], events: int,
               senders: int) -> None:
    """Fill every room with `events` messages through PUT /send, `senders` requests in flight at
    once (the hub's group commit then writes several per transaction: 100 x 1,000 events take
    minutes, not the best part of an hour, sent one by one). Each room's messages stay in order."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, room in enumerate(rooms):
        queue.put_nowait((i, room))

    async def sender() -> None:
        while not queue.empty():
            i, room = queue.get_nowait()
            for j in range(events):
                await call(http, base, "PUT", f"{V3}/rooms/{urllib.parse.quote(room)}/send/m.room.message/"
                           f"t{i}-{j}", token, {"msgtype": "m.text", "body": f"message {j}"})

    await asyncio.gather(*(sender() for _ in range(max(1, senders))))


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ss-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "gateway.toml").write_text("messages_per_second = 0\nenable_registration = true\n"
                                          "http_max_connections_per_address = 0\n")  # 20 long-polls, one address
        gw = GatewayProcess(data)
        gw.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                base = gw.http_url
                user = await call(http, base, "POST", f"{V3}/register", body={
                    "username": "bench", "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
                token = user["access_token"]
                rooms = []
                for i in range(args.rooms):
                    room = (await call(http, base, "POST", f"{V3}/createRoom", token,
                                  {"name": f"room {i}", "preset": "public_chat"}))["room_id"]
                    rooms.append(room)
                seeding = time.perf_counter()
                await seed(http, base, token, rooms, args.events, args.senders)
                seeded = time.perf_counter() - seeding
                print(f"{args.rooms} rooms x {args.events} messages, sent through the client API by {args.senders} "
                      f"concurrent senders in {seeded:.1f} s ({args.rooms * args.events / seeded:.0f} events/s)")

                samples = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    answer = await call(http, base, "POST", SS, token, LIST)
                    samples.append(time.perf_counter() - started)
                assert len(answer["rooms"]) == min(20, args.rooms)
                report("sliding sync, initial (list [0,19])", samples)
                v2_filter = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": 1}}}))
                samples = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    await call(http, base, "GET", f"{V3}/sync?filter={v2_filter}", token)
                    samples.append(time.perf_counter() - started)
                report("/sync v2, initial (timeline limit 1)", samples)

                pos = answer["pos"]
                since = (await call(http, base, "GET", f"{V3}/sync?filter={v2_filter}", token))["next_batch"]
                ss_samples, v2_samples = [], []
                for k in range(args.repeat):
                    target = rooms[k % len(rooms)]
                    ss_poll = asyncio.ensure_future(call(http, base, "POST", f"{SS}?pos={pos}&timeout=10000", token, LIST))
                    v2_poll = asyncio.ensure_future(call(
                        http, base, "GET", f"{V3}/sync?filter={v2_filter}&timeout=10000&since={since}", token))
                    await asyncio.sleep(0.05)  # both are waiting
                    await call(http, base, "PUT", f"{V3}/rooms/{urllib.parse.quote(target)}/send/m.room.message/b{k}",
                               token, {"msgtype": "m.text", "body": "bump"})
                    sent = time.perf_counter()
                    done_at: dict[str, float] = {}
                    ss_poll.add_done_callback(lambda _: done_at.setdefault("ss", time.perf_counter()))
                    v2_poll.add_done_callback(lambda _: done_at.setdefault("v2", time.perf_counter()))
                    got, v2 = await asyncio.gather(ss_poll, v2_poll)
                    assert target in got["rooms"], got
                    ss_samples.append(max(0.0, done_at["ss"] - sent))
                    v2_samples.append(max(0.0, done_at["v2"] - sent))
                    pos, since = got["pos"], v2["next_batch"]
                report("sliding sync, bump: send 200 -> answer", ss_samples)
                report("/sync v2, same message: send 200 -> answer", v2_samples)

                pollers = []
                for n in range(args.pollers):
                    other = await call(http, base, "POST", f"{V3}/register", body={
                        "username": f"poller{n}", "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
                    for room in rooms:
                        await call(http, base, "POST", f"{V3}/rooms/{urllib.parse.quote(room)}/join",
                                   other["access_token"], {})
                    first = await call(http, base, "POST", SS, other["access_token"], LIST)
                    pollers.append((other["access_token"], first["pos"]))
                caught_up = []  # past the other pollers' joins, so each poll waits for the message
                for t, p in pollers:
                    caught_up.append((t, (await call(http, base, "POST", f"{SS}?pos={p}&timeout=0", t, LIST))["pos"]))
                pollers = caught_up
                rss_before = gw.rss_bytes()
                polls = [asyncio.ensure_future(call(http, base, "POST", f"{SS}?pos={p}&timeout=20000", t, LIST))
                         for t, p in pollers]
                await asyncio.sleep(1.0)
                rss_waiting = gw.rss_bytes()
                await call(http, base, "PUT", f"{V3}/rooms/{urllib.parse.quote(rooms[0])}/send/m.room.message/all",
                           token, {"msgtype": "m.text", "body": "to everyone"})
                sent = time.perf_counter()
                answers = await asyncio.gather(*polls)
                fanout = time.perf_counter() - sent
                assert all(rooms[0] in a["rooms"] for a in answers)
                print(f"RSS with {args.pollers} sliding sync long-polls: {rss_before / 2**20:.1f} MiB before, "
                      f"{rss_waiting / 2**20:.1f} MiB waiting; one message reaches all in {fanout * 1000:.1f} ms")
        finally:
            gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--senders", type=int, default=8, help="concurrent clients filling the rooms")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
