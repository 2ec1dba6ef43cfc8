#!/usr/bin/env python3
"""Client-server send throughput: our gateway against a real Synapse, same run.

    python bench/http_send.py [--messages N] [--concurrency 16] [--only gateway|synapse]

For each server, one after the other (never both at once: this machine has two
cores and the load generator shares them):

* start-to-ready: spawn to first good answer (the launchers' ``ready_seconds``);
* idle RSS: resident memory after the users and the room exist, before load;
* sequential: one client, one keep-alive connection, N sends of
  ``PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}``, each
  awaited before the next;
* concurrent: C clients sending into the same room at once, N sends in total
  (N/C each). Each client is a *distinct user* (own account, own access token,
  own aiohttp session with one keep-alive connection), all joined to one public
  room: the IoT case of many devices each with its own identity reporting into
  a shared room. (Separate users rather than devices of one user so that
  neither server can serialise on a per-user lock.)

Latency percentiles are per request. Figures are printed as a table with the
gateway/Synapse ratio (higher is better for the gateway on sends/s, lower is
better on memory and start time).
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
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import yarl  # noqa: E402

PASSWORD = "bench-password-1"


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@dataclass
class Result:
    server: str
    version: str = ""
    ready_seconds: float = float("nan")
    idle_rss_bytes: int = 0
    after_rss_bytes: int = 0
    seq_messages: int = 0
    seq_seconds: float = float("nan")
    seq_p50_ms: float = float("nan")
    seq_p99_ms: float = float("nan")
    conc_clients: int = 0
    conc_messages: int = 0
    conc_seconds: float = float("nan")
    conc_p50_ms: float = float("nan")
    conc_p99_ms: float = float("nan")
    throttled: int = 0  # 429 answers (retried after retry_after_ms)
    errors: list[str] = field(default_factory=list)

    @property
    def seq_rate(self) -> float:
        return self.seq_messages / self.seq_seconds if self.seq_seconds else float("nan")

    @property
    def conc_rate(self) -> float:
        return self.conc_messages / self.conc_seconds if self.conc_seconds else float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# --------------------------------------------------------------------------
# HTTP client side (same code for both servers)
# --------------------------------------------------------------------------


class Client:
    """One Matrix user with its own keep-alive aiohttp session."""

    def __init__(self, base_url: str, token: str, name: str) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.name = name
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=False),
            headers={"Authorization": f"Bearer {token}"},
        )
        self.txn = 0
        self.throttled = 0
        self.last_event_id: str | None = None

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        # Paths are pre-quoted: stop yarl from re-encoding %21/%3A.
        url = yarl.URL(self.base + path, encoded=True)
        for _ in range(1000):
            async with self.session.request(method, url, json=body) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
            if status == 429:  # a well-behaved client: wait as told, retry the same txn
                self.throttled += 1
                await asyncio.sleep((data or {}).get("retry_after_ms", 100) / 1000)
                continue
            if status != 200:
                raise RuntimeError(f"{method} {path} -> {status}: {data}")
            return data
        raise RuntimeError(f"{method} {path}: still rate limited after 1000 retries")

    async def create_room(self) -> str:
        res = await self.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            {"preset": "public_chat", "name": "bench"},
        )
        return res["room_id"]

    async def join(self, room_id: str) -> None:
        await self.call("POST", f"/_matrix/client/v3/join/{q(room_id)}", {})

    async def send(self, room_id: str, body: str) -> str:
        self.txn += 1
        path = (  # txn ids unique across runs: the same user/device may be reused
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/"
            f"{self.name}-{time.time_ns()}-{self.txn}"
        )
        res = await self.call("PUT", path, {"msgtype": "m.text", "body": body})
        return res["event_id"]


async def timed_sends(client: Client, room_id: str, n: int, latencies: list[float]) -> None:
    for i in range(n):
        t = time.perf_counter()
        client.last_event_id = await client.send(room_id, f"{client.name} message {i}")
        latencies.append(time.perf_counter() - t)


async def run_load(
    base_url: str,
    tokens: list[str],
    messages: int,
    concurrency: int,
    warmup: int,
    result: Result,
) -> None:
    clients = [Client(base_url, tok, f"c{i}") for i, tok in enumerate(tokens)]
    try:
        room_id = await clients[0].create_room()
        for c in clients[1:]:
            await c.join(room_id)

        # Warm-up: every client opens its connection and sends a few.
        await asyncio.gather(*(timed_sends(c, room_id, warmup, []) for c in clients))

        # (1) one client, sequential.
        lat: list[float] = []
        t0 = time.perf_counter()
        await timed_sends(clients[0], room_id, messages, lat)
        result.seq_seconds = time.perf_counter() - t0
        result.seq_messages = messages
        result.seq_p50_ms = pct(lat, 50) * 1000
        result.seq_p99_ms = pct(lat, 99) * 1000

        # (2) `concurrency` users at once, `messages` sends in total.
        per = max(1, messages // concurrency)
        lat = []
        t0 = time.perf_counter()
        await asyncio.gather(*(timed_sends(c, room_id, per, lat) for c in clients[:concurrency]))
        result.conc_seconds = time.perf_counter() - t0
        result.conc_messages = per * concurrency
        result.conc_clients = concurrency
        result.conc_p50_ms = pct(lat, 50) * 1000
        result.conc_p99_ms = pct(lat, 99) * 1000

        # Sanity check outside the timing: each client's last event reads back.
        for c in clients[:concurrency]:
            assert c.last_event_id is not None
            ev = await c.call(
                "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(c.last_event_id)}"
            )
            if ev.get("event_id") != c.last_event_id or "message" not in ev.get("content", {}).get("body", ""):
                raise RuntimeError(f"read-back of {c.last_event_id} gave {ev}")
    finally:
        result.throttled = sum(c.throttled for c in clients)
        await asyncio.gather(*(c.close() for c in clients))


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------


def bench_synapse(workdir: Path, args: argparse.Namespace) -> Result:
    from tests.support.synapse import SynapseProcess

    res = Result("synapse")
    # Client API only: federation is not exercised here, and a TLS listener
    # would only add start-up work.
    with SynapseProcess(workdir / "synapse", federation=False) as hs:
        res.version = f"Synapse {hs.version}"
        res.ready_seconds = float(hs.ready_seconds) if hs.ready_seconds is not None else float("nan")
        tokens = [hs.register_user(f"bench{i}", PASSWORD)[1] for i in range(args.concurrency)]
        res.idle_rss_bytes = settle_rss(hs.rss_bytes, args.settle)
        asyncio.run(
            run_load(hs.client_url, tokens, args.messages, args.concurrency, args.warmup, res)
        )
        res.after_rss_bytes = hs.rss_bytes()
    return res


def bench_gateway(workdir: Path, args: argparse.Namespace) -> Result:
    from tests.support.gateway import GatewayProcess  # written by the lead developer

    res = Result("gateway")
    res.version = "matrix-gateway"
    extra = list(args.gateway_arg)
    if not args.gateway_rate_limit:
        # Like the generous rc_* given to Synapse: measure the server, not its
        # limiter (messages_per_second <= 0 disables the per-user limit).
        conf = workdir / "gateway-bench.toml"
        conf.write_text("messages_per_second = 0\n")
        extra = ["--config", str(conf), *extra]
        res.version += " (message rate limit off)"
    with GatewayProcess(workdir / "gateway", extra) as gw:
        if getattr(gw, "http_url", None) is None:  # tolerate a non-auto-starting __enter__
            gw.start()
        res.ready_seconds = float(gw.ready_seconds) if gw.ready_seconds is not None else float("nan")
        tokens = []
        for i in range(args.concurrency):
            gw.add_user(f"bench{i}", PASSWORD)
            tokens.append(gw.login(f"bench{i}", PASSWORD))
        res.idle_rss_bytes = settle_rss(gw.rss_bytes, args.settle)
        asyncio.run(
            run_load(gw.http_url, tokens, args.messages, args.concurrency, args.warmup, res)
        )
        res.after_rss_bytes = gw.rss_bytes()
    return res


def settle_rss(rss: Callable[[], int], settle: float) -> int:
    """RSS after ``settle`` seconds of idling (sampled; the last sample is returned)."""
    deadline = time.monotonic() + settle
    value = rss()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        value = rss()
    return value


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def fmt(v: float, spec: str) -> str:
    if v != v:  # NaN
        return "-"
    return format(v, spec)


def print_table(results: dict[str, Result], args: argparse.Namespace) -> None:
    gw, sy = results.get("gateway"), results.get("synapse")
    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("start-to-ready (s)", lambda r: r.ready_seconds, ".2f"),
        ("idle RSS (MB)", lambda r: r.idle_rss_bytes / 1e6 if r.idle_rss_bytes else float("nan"), ".1f"),
        ("RSS after load (MB)", lambda r: r.after_rss_bytes / 1e6 if r.after_rss_bytes else float("nan"), ".1f"),
        ("sequential sends/s (1 client)", lambda r: r.seq_rate, ".1f"),
        ("  latency p50 (ms)", lambda r: r.seq_p50_ms, ".1f"),
        ("  latency p99 (ms)", lambda r: r.seq_p99_ms, ".1f"),
        (f"concurrent sends/s ({args.concurrency} users)", lambda r: r.conc_rate, ".1f"),
        ("  latency p50 (ms)", lambda r: r.conc_p50_ms, ".1f"),
        ("  latency p99 (ms)", lambda r: r.conc_p99_ms, ".1f"),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    print()
    print(
        f"HTTP send benchmark: {args.messages} messages per phase, "
        f"{args.concurrency} concurrent users, keep-alive (aiohttp)"
    )
    for r in results.values():
        print(f"  {r.server}: {r.version}")
    header = f"{'':<{w0}}{'gateway':>12}{'synapse':>12}{'gw/synapse':>12}"
    print(header)
    print("-" * len(header))
    for label, get, spec in rows:
        g = get(gw) if gw else float("nan")
        s = get(sy) if sy else float("nan")
        ratio = g / s if (g == g and s == s and s) else float("nan")
        print(f"{label:<{w0}}{fmt(g, spec):>12}{fmt(s, spec):>12}{fmt(ratio, '.2f'):>12}")
    for r in results.values():
        if r.throttled:
            print(f"  {r.server}: {r.throttled} requests answered 429 and retried (time included)")
        for e in r.errors:
            print(f"  {r.server} error: {e}")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300, help="sends per phase (default 300)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent users (default 16)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up sends per client (default 3)")
    ap.add_argument("--settle", type=float, default=1.0, help="idle seconds before reading RSS (default 1)")
    ap.add_argument("--only", choices=["gateway", "synapse"], help="run one side only")
    ap.add_argument(
        "--gateway-arg", action="append", default=[], metavar="ARG",
        help="extra argument for `python -m gateway run` (repeatable)",
    )
    ap.add_argument(
        "--gateway-rate-limit", action="store_true",
        help="keep the gateway's default per-user message rate limit (default: disabled, "
        "as Synapse's rc_* limits are made generous); 429s are retried and counted",
    )
    ap.add_argument("--workdir", type=Path, help="keep server data here (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="also write raw results as JSON to this file")
    args = ap.parse_args(argv)
    if args.messages < args.concurrency:
        ap.error("--messages must be >= --concurrency")

    sides = [args.only] if args.only else ["gateway", "synapse"]
    results: dict[str, Result] = {}
    with ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-http-send-")))
        runners: dict[str, Callable[[Path, argparse.Namespace], Result]] = {
            "gateway": bench_gateway,
            "synapse": bench_synapse,
        }
        for side in sides:
            print(f"[{side}] starting...", file=sys.stderr, flush=True)
            try:
                results[side] = runners[side](workdir, args)
            except Exception as exc:  # report and carry on with the other side
                r = Result(side)
                r.errors.append(f"{type(exc).__name__}: {exc}")
                results[side] = r
                print(f"[{side}] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            else:
                r = results[side]
                print(
                    f"[{side}] ready {r.ready_seconds:.2f}s, idle {r.idle_rss_bytes / 1e6:.1f} MB, "
                    f"seq {r.seq_rate:.1f}/s, {r.conc_clients}x {r.conc_rate:.1f}/s",
                    file=sys.stderr,
                    flush=True,
                )

    print_table(results, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {k: {**asdict(v), "seq_rate": v.seq_rate, "conc_rate": v.conc_rate} for k, v in results.items()},
                indent=2,
            )
            + "\n"
        )
    return 1 if any(r.errors for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
