#!/usr/bin/env python3
"""End-to-end encryption, server side: key claim, key query, to-device fan-out, and /sync of a user
who never encrypts (issue 14).

    python bench/e2e_keys.py [--users 50] [--repeat 50]
    python bench/e2e_keys.py --sync-only [--repo /path/to/other/checkout]   # before/after for /sync

- /keys/claim of one key for each of 50 devices (50 users) in one request, p50/p99 over --repeat;
- /keys/query of 50 users (all their devices) in one request, p50/p99;
- /sync of a device with 100 to-device messages waiting (sent while it was away).
- to-device fan-out: one PUT /sendToDevice to `*` of 100 users (one device each), while all
  100 devices long-poll /sync: the PUT's time and the time until the last device has it, p50/p99;
- /sync of a user who never uploads keys, in a room with the encrypting users while they upload
  keys and send to-device messages: incremental (timeout=0) p50/p99. `--sync-only` runs just that
  (no E2EE endpoint is called: it runs on a checkout without them, via --repo, for the before).

Client: aiohttp on loopback against the CLI-started hub (its own data dir, registration open).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
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

import tests.support.gateway as gateway_support  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "bench-password-1"


def b64() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(name: str, samples: list[float]) -> None:
    print(f"{name:<48} p50 {pct(samples, 50) * 1000:8.2f} ms   p99 {pct(samples, 99) * 1000:8.2f} ms   (n={len(samples)})")


class Hub:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as resp:
            got = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {got}")
            return got

    async def register(self, name: str) -> dict[str, Any]:
        return await self.call("POST", "/register", body={"username": name, "password": PASSWORD,
                                                          "auth": {"type": "m.login.dummy"}})

  

async def upload_keys(hub: Hub, dev: dict[str, Any], otks: int) -> None:
    user_id, device_id = dev["user_id"], dev["device_id"]
    await hub.call("POST", "/keys/upload", dev["access_token"], {
        "device_keys": {"user_id": user_id, "device_id": device_id,
                        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                        "keys": {f"curve25519:{device_id}": b64(), f"ed25519:{device_id}": b64()},
                        "signatures": {user_id: {f"ed25519:{device_id}": b64()}}},
        "one_time_keys": {f"signed_curve25519:{i:06d}": {"key": b64(), "signatures": {}} for i in range(otks)}})


async def plain_sync_samples(hub: Hub, token: str, n: int) -> list[float]:
    since = (await hub.call("GET", "/sync?timeout=0", token))["next_batch"]
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        body = await hub.call("GET", f"/sync?timeout=0&since={urllib.parse.quote(since)}", token)
        samples.append(time.perf_counter() - started)
        since = body["next_batch"]
    return samples


async def main_async(args: argparse.Namespace) -> None:
    if args.repo:
        gateway_support.REPO_ROOT = Path(args.repo).resolve()  # the hub's code from another checkout
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "gateway.toml").write_text("messages_per_second = 0\nenable_registration = true\n"
                                          "http_max_connections_per_address = 0\n")  # 100 long-polls, one address
        gw = GatewayProcess(data)
        gw.start()
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
                hub = Hub(http, f"{gw.http_url}/_matrix/client/v3")
                first = await asyncio.gather(*(hub.register(f"user{i}") for i in range(args.users)))
                plain = await hub.register("plain")
                room = await hub.call("POST", "/createRoom", plain["access_token"], {"preset": "public_chat"})
                room_path = f"/rooms/{urllib.parse.quote(room['room_id'])}"
                await asyncio.gather(*(hub.call("POST", f"{room_path}/join", d["access_token"], {}) for d in first))
                for i in range(20):
                    await hub.call("PUT", f"{room_path}/send/m.room.message/t{i}", plain["access_token"],
                                   {"msgtype": "m.text", "body": f"m{i}"})
                if args.sync_only:
                    report("/sync (timeout=0) of a user who never encrypts", await plain_sync_samples(
                        hub, plain["access_token"], args.repeat * 4))
                    return

                # 100 devices for the fan-out: 50 more users (logins are throttled per address)
                second = await asyncio.gather(*(hub.register(f"more{i}") for i in range(args.users)))
                devices = list(first) + list(second)
                await asyncio.gather(*(upload_keys(hub, d, args.repeat + 5) for d in devices))
                asker = second[0]["access_token"]

                samples = []
                for _ in range(args.repeat):
                    wanted = {d["user_id"]: {d["device_id"]: "signed_curve25519"} for d in first}
                    started = time.perf_counter()
                    got = await hub.call("POST", "/keys/claim", asker, {"one_time_keys": wanted})
                    samples.append(time.perf_counter() - started)
                    assert len(got["one_time_keys"]) == args.users
                report(f"/keys/claim, {args.users} devices in one request", samples)

                samples = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    got = await hub.call("POST", "/keys/query", asker,
                                         {"device_keys": {d["user_id"]: [] for d in first}})
                    samples.append(time.perf_counter() - started)
                    assert sum(len(v) for v in got["device_keys"].values()) == args.users
                report(f"/keys/query, {args.users} users", samples)

                # to-device fan-out to every device of the 50 users (100), all long-polling
                since = {d["device_id"]: (await hub.call("GET", "/sync?timeout=0", d["access_token"]))["next_batch"]
                         for d in devices}
                put_times, delivered_times = [], []
                for round_no in range(max(5, args.repeat // 5)):
                    async def poll(d: dict[str, Any]) -> float:
                        while True:
                            body = await hub.call("GET", f"/sync?timeout=30000&since="
                                                  f"{urllib.parse.quote(since[d['device_id']])}", d["access_token"])
                            since[d["device_id"]] = body["next_batch"]
                            if any(e["content"].get("round") == round_no for e in body["to_device"]["events"]):
                                return time.perf_counter()
                    polls = [asyncio.create_task(poll(d)) for d in devices]
                    await asyncio.sleep(0.3)  # let the long-polls reach the hub (bench only)
                    started = time.perf_counter()
                    await hub.call("PUT", f"/sendToDevice/m.bench/r{round_no}", asker,
                                   {"messages": {d["user_id"]: {"*": {"round": round_no, "pad": "x" * 500}} for d in devices}})
                    put_times.append(time.perf_counter() - started)
                    done = await asyncio.gather(*polls)
                    delivered_times.append(max(done) - started)
                report(f"PUT /sendToDevice to {len(devices)} devices", put_times)
                report(f"  ... until the last of {len(devices)} long-polls has it", delivered_times)

                # /sync of a device with to-device messages waiting: 100 queued while it was away,
                # fetched (and acknowledged by the next sync) in one answer
                away = first[1]
                away_since = (await hub.call("GET", "/sync?timeout=0", away["access_token"]))["next_batch"]
                pending_samples = []
                for round_no in range(args.repeat):
                    for i in range(100):
                        await hub.call("PUT", f"/sendToDevice/m.bench.pending/p{round_no}-{i}", asker,
                                       {"messages": {away["user_id"]: {away["device_id"]: {"i": i, "pad": "x" * 200}}}})
                    started = time.perf_counter()
                    body = await hub.call("GET", f"/sync?timeout=0&since={urllib.parse.quote(away_since)}",
                                          away["access_token"])
                    pending_samples.append(time.perf_counter() - started)
                    assert len(body["to_device"]["events"]) == 100, len(body["to_device"]["events"])
                    away_since = body["next_batch"]
                report("/sync (timeout=0) of a device with 100 to-device messages waiting", pending_samples)

                report("/sync (timeout=0) of a user who never encrypts", await plain_sync_samples(
                    hub, plain["access_token"], args.repeat * 4))
        finally:
            gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--sync-only", action="store_true")
    parser.add_argument("--repo", help="run the hub from this checkout (for the before figures)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
