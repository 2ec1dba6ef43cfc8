#!/usr/bin/env python3
"""Inbound federation: PDUs stored per second by our hub and by a real Synapse, same run.

    python bench/federation.py [--messages 200] [--concurrency 8] [--json FILE]

One hub (`matrix-gateway run`, TLS federation on loopback) and one Synapse (PyPI
``matrix-synapse``) federate with each other on 127.0.0.1. Two rooms are shared: one hosted by
the hub (a Synapse user joined it by alias) and one hosted by Synapse (the hub user was invited
and joined). For each room, each direction and each mode, N messages (bodies ``TAG i``) are sent
on the *sending* server's client API by C concurrent clients, and the *receiving* server is
watched with /sync long-polls (inline filter, timeline limit > N, so every event is seen the
moment it is visible there). No fixed sleeps: every wait is a long-poll or a short poll under a
deadline.

Modes:

* ``live``: the receiver runs throughout. The sender's client API (Synapse: some 50-100
  sends/s) usually paces the flow, so the end-to-end rate says little about the receiver; its
  cost shows in the lag (arrival on the receiver minus the event's ``origin_server_ts``) and,
  for the hub, in the busy time of its /send handler.
* ``backlog``: the receiver is paused (SIGSTOP) while the N messages are sent and acknowledged,
  then resumed (SIGCONT). The sender has queued everything, so transactions go out full (both
  servers put up to 50 PDUs in one) back to back: "resume -> last event visible" is the
  receiver's own inbound rate, with the sender out of the way. This is the comparison with
  Synapse's inbound rate (`../shared/PEERS.md`: "about 52 PDUs/s stored").

Receiver-side figures, read from the logs (byte offsets taken before each flow; Synapse runs
with a few INFO loggers switched on, the rest at WARNING):

* hub receiving: Synapse's outbound log gives the PDUs of each transaction it sent
  (``Sending transaction ... (PDUs: n)``) and how long the hub took to answer each
  ``PUT /send`` (``Completed request ... in X secs``, 10 ms resolution). The hub answers /send
  only after the PDUs are committed, so PDUs / sum(answer times) is the hub's processing rate,
  whatever paces the sender. With ``--hub-log-level DEBUG`` the hub's own line from
  ``matrix_core/federation/inbound.py`` (``transaction from X: N PDUs handled in T ms``) is read
  too; DEBUG also turns on aiosqlite's per-query lines, which slow the hub, so it is off by default.
  The hub's requests back to Synapse (``/get_missing_events``, ``/event``, ``/state_ids``) come
  from Synapse's access log.
* Synapse receiving: ``Received txn ... (PDUs: n)`` lines, the access log's time for each
  ``PUT /send`` (Synapse answers /send once the PDUs are *staged*; a background loop persists
  them later, so that time is not storage), and ``Requesting missing events`` lines (its
  /get_missing_events calls to the hub).

The same machine runs both servers and the load generator (two cores here): figures are for
comparison within one run, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import yarl  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.synapse import SynapseProcess  # noqa: E402

HUB_FLAGS = ["--no-federation-tls-verify", "--federation-allow-loopback"]
PASSWORD = "bench federation password"
SETUP_DEADLINE = 120.0

NAN = float("nan")

HUB_TXN_RE = re.compile(r"transaction from (\S+): (\d+) PDUs handled in ([\d.]+) ms")
SYN_TXN_RE = re.compile(r"Received txn (\S+) from (\S+)\. \(PDUs: (\d+), EDUs: (\d+)\)")
SYN_ACCESS_RE = re.compile(r'Processed request: ([\d.]+)sec/.*? (\d{3})!? "(\w+) (\S+) HTTP')
SYN_MISSING_RE = re.compile(r"Requesting missing events between")
SYN_OUT_TXN_RE = re.compile(r"Sending transaction \[\S+\], \(PDUs: (\d+), EDUs: (\d+)\)")
SYN_OUT_DONE_RE = re.compile(r"Completed request: (\d+) .*? in ([\d.]+) secs, got \d+ bytes - (\w+) (\S+)")

# Synapse logging: WARNING as usual, plus the few INFO loggers read above.
SYNAPSE_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log_file}
    encoding: utf8
loggers:
  synapse.access:
    level: INFO
  synapse.federation.transport.server.federation:
    level: INFO
  synapse.handlers.federation_event:
    level: INFO
  synapse.http.matrixfederationclient:
    level: INFO
  synapse.federation.sender.transaction_manager:
    level: INFO
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def pct(values: list[float], p: float) -> float:
    if not values:
        return NAN
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def div(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else NAN


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------


@dataclass
class Flow:
    sender: str  # "hub" | "synapse"
    receiver: str
    room_host: str
    mode: str  # "live" | "backlog"
    messages: int
    concurrency: int
    send_seconds: float = NAN  # first send started -> last send acknowledged by the sender
    visible_seconds: float = NAN  # first send started -> all N visible on the receiver (the burst time)
    drain_seconds: float = NAN  # backlog: SIGCONT -> all N visible; live: last ack -> all N visible
    arrival_span_seconds: float = NAN  # first -> last event visible on the receiver
    lag_p50_ms: float = NAN  # visible on the receiver - origin_server_ts (live mode)
    lag_p99_ms: float = NAN
    lag_max_ms: float = NAN
    seen: int = 0
    missing: int = 0
    sync_limited: int = 0
    sync_responses: int = 0
    # the receiver's /send transactions in the window
    txns: int = 0
    txn_pdus: int = 0
    txn_max_pdus: int = 0
    txn_ms_total: float = NAN  # hub: answered (stored before), timed by Synapse; Synapse: answered (staged only)
    txn_ms_p50: float = NAN
    txn_ms_max: float = NAN
    hub_log_txns: int = 0  # the hub's own DEBUG line (only with --hub-log-level DEBUG)
    hub_log_ms_total: float = NAN
    # requests the receiver made back to the sender
    missing_events_calls: int = 0
    other_fetches: int = 0  # hub receiving: GET /event, /state_ids, /state, /backfill on Synapse
    errors: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.sender}->{self.receiver}/{self.room_host}-room/{self.mode}"

    @property
    def send_rate(self) -> float:
        return div(self.messages, self.send_seconds)

    @property
    def e2e_rate(self) -> float:
        return div(self.seen, self.visible_seconds)

    @property
    def drain_rate(self) -> float:
        return div(self.seen, self.drain_seconds)

    @property
    def arrival_rate(self) -> float:
        return div(self.seen - 1, self.arrival_span_seconds)

    @property
    def busy_rate(self) -> float:
        """PDUs per second of /send handling (hub: stored; Synapse: staged)."""
        return div(self.txn_pdus, self.txn_ms_total / 1000)

    @property
    def hub_log_busy_rate(self) -> float:
        return div(self.txn_pdus, self.hub_log_ms_total / 1000) if self.hub_log_txns else NAN

    @property
    def stored_rate(self) -> float:
        """The receiver's inbound PDUs stored per second in this flow."""
        return self.drain_rate if self.mode == "backlog" else self.e2e_rate

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key, "send_rate": self.send_rate, "e2e_rate": self.e2e_rate,
                "drain_rate": self.drain_rate, "arrival_rate": self.arrival_rate, "busy_rate": self.busy_rate,
                "hub_log_busy_rate": self.hub_log_busy_rate,
                "stored_rate": self.stored_rate}


# --------------------------------------------------------------------------
# HTTP (the same client code against both servers)
# --------------------------------------------------------------------------


class Api:
    """One Matrix client session (keep-alive) on a server's client API."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                             connector=aiohttp.TCPConnector(limit=4))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        url = yarl.URL(self.base + path, encoded=True)  # paths are quoted by us
        deadline = time.monotonic() + timeout
        while True:
            async with self.session.request(method, url, json=body,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
            if status == 429 and time.monotonic() < deadline:
                await asyncio.sleep((data or {}).get("retry_after_ms", 100) / 1000)  # as told by the server
                continue
            if status != 200:
                raise RuntimeError(f"{method} {path} -> {status}: {data}")
            return data


def sync_filter(room_id: str, limit: int) -> str:
    return json.dumps({
        "room": {"rooms": [room_id], "timeline": {"limit": limit}, "state": {"lazy_load_members": True}},
        "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]},
    }, separators=(",", ":"))


async def sync_once(api: Api, since: str | None, flt: str, timeout_ms: int) -> Any:
    path = f"/_matrix/client/v3/sync?timeout={timeout_ms}&filter={q(flt)}" + (f"&since={q(since)}" if since else "")
    return await api.call("GET", path, timeout=timeout_ms / 1000 + 60)


async def watch(api: Api, room_id: str, since: str, flt: str, tag: str, n: int, deadline: float,
                flow: Flow | None) -> dict[str, tuple[float, float, int]]:
    """Long-poll /sync until the N bodies `TAG i` are visible; body -> (monotonic, wall ms, origin_server_ts)."""
    seen: dict[str, tuple[float, float, int]] = {}
    prefix = tag + " "
    while len(seen) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        res = await sync_once(api, since, flt, int(min(10.0, left) * 1000))
        now_m, now_w = time.monotonic(), time.time() * 1000
        since = res["next_batch"]
        timeline = res.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
        if flow is not None:
            flow.sync_responses += 1
            flow.sync_limited += bool(timeline.get("limited"))
        events = list(timeline.get("events", []))
        if timeline.get("limited") and timeline.get("prev_batch"):
            # A gap (Synapse marks one after get_missing_events): the skipped events were visible
            # by the time of this response; read them from /messages before the timeline's start.
            events += await events_before(api, room_id, timeline["prev_batch"], prefix, seen)
        for ev in events:
            body = ev.get("content", {}).get("body")
            if ev.get("type") == "m.room.message" and isinstance(body, str) and body.startswith(prefix):
                seen.setdefault(body, (now_m, now_w, int(ev.get("origin_server_ts", 0))))
    return seen


async def events_before(api: Api, room_id: str, token: str, prefix: str,
                        seen: dict[str, Any]) -> list[dict[str, Any]]:
    """Our run's events older than `token` not seen yet (pages back until a page holds none of the run)."""
    out: list[dict[str, Any]] = []
    for _ in range(100):
        res = await api.call("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=100&from={q(token)}")
        chunk = res.get("chunk", [])
        ours = [ev for ev in chunk if isinstance(ev.get("content", {}).get("body"), str)
                and ev["content"]["body"].startswith(prefix)]
        out += [ev for ev in ours if ev["content"]["body"] not in seen]
        if not ours or not res.get("end") or res.get("end") == token:
            break
        token = res["end"]
    return out


async def count_in_messages(api: Api, room_id: str, tag: str) -> int:
    """How many `TAG i` bodies the receiver's /messages holds (the store, not the sync stream)."""
    bodies: set[str] = set()
    token: str | None = None
    prefix = tag + " "
    for _ in range(50):
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=500" + (f"&from={q(token)}" if token else "")
        res = await api.call("GET", path)
        chunk = res.get("chunk", [])
        for ev in chunk:
            body = ev.get("content", {}).get("body")
            if isinstance(body, str) and body.startswith(prefix):
                bodies.add(body)
        if not chunk or res.get("end") in (None, token):
            break
        # our runs are the newest events: stop once a page holds none of them
        if not any(isinstance(ev.get("content", {}).get("body"), str)
                   and ev["content"]["body"].startswith(prefix) for ev in chunk):
            break
        token = res.get("end")
    return len(bodies)


async def send_burst(apis: list[Api], room_id: str, tag: str, n: int) -> None:
    indexes = iter(range(n))

    async def worker(api: Api) -> None:
        for i in indexes:  # shared iterator: each index sent once
            await api.call("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/{tag}-{i}",
                           {"msgtype": "m.text", "body": f"{tag} {i}"})

    await asyncio.gather(*(worker(api) for api in apis))


# --------------------------------------------------------------------------
# logs
# --------------------------------------------------------------------------


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def hub_txns(text: str) -> list[tuple[int, float]]:
    return [(int(m.group(2)), float(m.group(3))) for m in HUB_TXN_RE.finditer(text)]


def line_time(line: str) -> float | None:
    """Epoch seconds of a Synapse log line (`2026-01-01 12:00:00,123 - ...`, local time)."""
    try:
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def clipped(secs: float, line: str, active_from: float | None) -> float:
    """A request's duration, minus any part of it spent while the receiver was paused
    (the transaction in flight at SIGSTOP is answered only after SIGCONT)."""
    end = line_time(line)
    if active_from is None or end is None:
        return secs
    return max(0.0, min(secs, end - active_from))


def synapse_outbound(text: str, destination: str, active_from: float | None) -> tuple[list[int], list[float]]:
    """Synapse as the sender: (PDUs per transaction it sent, seconds until each PUT /send was answered)."""
    pdus = [int(m.group(1)) for m in SYN_OUT_TXN_RE.finditer(text)]
    secs = []
    for line in text.splitlines():
        m = SYN_OUT_DONE_RE.search(line)
        if m and m.group(3) == "PUT" and f"//{destination}/_matrix/federation/v1/send/" in m.group(4):
            secs.append(clipped(float(m.group(2)), line, active_from))
    return pdus, secs


def synapse_txns(text: str, active_from: float | None = None) -> tuple[list[int], list[float], int, int, int]:
    """(PDUs per received txn, seconds per PUT /send, missing-events requests by Synapse,
    /get_missing_events served by Synapse, other event fetches served by Synapse)."""
    pdus = [int(m.group(3)) for m in SYN_TXN_RE.finditer(text)]
    send_secs: list[float] = []
    gme_served = other = 0
    for line in text.splitlines():
        m = SYN_ACCESS_RE.search(line)
        if not m:
            continue
        method, path = m.group(3), m.group(4)
        if method == "PUT" and path.startswith("/_matrix/federation/v1/send/"):
            send_secs.append(clipped(float(m.group(1)), line, active_from))
        elif "/federation/v1/get_missing_events/" in path:
            gme_served += 1
        elif re.match(r"/_matrix/federation/v1/(event|state_ids|state|backfill|event_auth)/", path):
            other += 1
    return pdus, send_secs, len(SYN_MISSING_RE.findall(text)), gme_served, other


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------


def start_hub(data_dir: Path, log_level: str, synchronous: str) -> GatewayProcess:
    gw = GatewayProcess(data_dir, extra_args=HUB_FLAGS)
    gw.server_name = f"localhost:{gw.federation_port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    # As in tests/test_federation_rooms_synapse.py; plus DEBUG for the per-transaction line.
    (data_dir / "gateway.toml").write_text(
        f'server_name = "{gw.server_name}"\nmessages_per_second = 0\nlog_level = "{log_level}"\n'
        f'sqlite_synchronous = "{synchronous}"\n')
    return gw


@contextmanager
def running(proc: GatewayProcess) -> Iterator[GatewayProcess]:
    proc.start()
    try:
        yield proc
    finally:
        os_pid = proc.proc.pid if proc.proc is not None else None
        if os_pid is not None:
            try:
                os.kill(os_pid, signal.SIGCONT)  # never leave it paused
            except ProcessLookupError:
                pass
        proc.stop()


@contextmanager
def paused(pid: int | None, enabled: bool) -> Iterator[None]:
    if not enabled or pid is None:
        yield
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class Side:
    name: str
    client_url: str
    token: str
    user_id: str
    pid_fn: Any


@dataclass
class Env:
    hub: Side
    synapse: Side
    hub_log: Path
    synapse_log: Path
    rooms: dict[str, str]  # room host -> room id
    hub_server_name: str = ""


async def setup_rooms(env: Env) -> None:
    hub = Api(env.hub.client_url, env.hub.token)
    syn = Api(env.synapse.client_url, env.synapse.token)
    try:
        hub_name = env.hub.user_id.split(":", 1)[1]
        created = await hub.call("POST", "/_matrix/client/v3/createRoom",
                                 {"room_alias_name": "fedbench", "preset": "public_chat", "name": "fed bench"})
        env.rooms["hub"] = created["room_id"]
        await syn.call("POST", f"/_matrix/client/v3/join/{q('#fedbench:' + hub_name)}", {})

        created = await syn.call("POST", "/_matrix/client/v3/createRoom",
                                 {"preset": "public_chat", "name": "fed bench (synapse)"})
        room = env.rooms["synapse"] = created["room_id"]
        since = (await sync_once(hub, None, "{}", 0))["next_batch"]
        await syn.call("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": env.hub.user_id})
        deadline = time.monotonic() + SETUP_DEADLINE
        while time.monotonic() < deadline:
            res = await sync_once(hub, since, "{}", 10_000)
            since = res["next_batch"]
            if room in res.get("rooms", {}).get("invite", {}):
                break
        else:
            raise RuntimeError("the hub never saw Synapse's invite")
        await hub.call("POST", f"/_matrix/client/v3/join/{q(room)}", {})
    finally:
        await hub.close()
        await syn.close()


async def run_flow(env: Env, sender: str, room_host: str, mode: str, n: int, concurrency: int,
                   deadline_s: float, record: bool = True) -> Flow:
    send_side = env.hub if sender == "hub" else env.synapse
    recv_side = env.synapse if sender == "hub" else env.hub
    room_id = env.rooms[room_host]
    flow = Flow(sender, recv_side.name, room_host, mode, n, concurrency)
    tag = f"fb{time.time_ns() % 10**12}{sender[0]}{room_host[0]}{mode[0]}"
    flt = sync_filter(room_id, n + 50)
    watcher_api = Api(recv_side.client_url, recv_side.token)
    senders = [Api(send_side.client_url, send_side.token) for _ in range(concurrency)]
    try:
        since = (await sync_once(watcher_api, None, flt, 0))["next_batch"]
        hub_off, syn_off = file_size(env.hub_log), file_size(env.synapse_log)
        deadline = time.monotonic() + deadline_s
        watcher = asyncio.create_task(watch(watcher_api, room_id, since, flt, tag, n, deadline,
                                            flow if record else None))
        await asyncio.sleep(0)  # let the first long-poll go out before the sends
        t_resume = NAN
        resume_wall: float | None = None
        with paused(recv_side.pid_fn(), mode == "backlog"):
            t0 = time.monotonic()
            await send_burst(senders, room_id, tag, n)
            t_sent = time.monotonic()
        if mode == "backlog":
            t_resume = time.monotonic()  # just after SIGCONT
            resume_wall = time.time()
        seen = await watcher
        flow.seen, flow.missing = len(seen), n - len(seen)
        flow.send_seconds = t_sent - t0
        if seen:
            arrivals = sorted(v[0] for v in seen.values())
            flow.visible_seconds = arrivals[-1] - t0
            flow.arrival_span_seconds = arrivals[-1] - arrivals[0]
            flow.drain_seconds = arrivals[-1] - (t_resume if mode == "backlog" else t_sent)
            if mode == "live":
                lags = [w - ots for _, w, ots in seen.values() if ots]
                flow.lag_p50_ms, flow.lag_p99_ms, flow.lag_max_ms = pct(lags, 50), pct(lags, 99), max(lags)
        if flow.missing:
            stored = await count_in_messages(watcher_api, room_id, tag)
            flow.errors.append(f"{flow.missing} of {n} not visible in /sync before the deadline "
                               f"({stored} in /messages)")
        if not record:
            return flow
        # The receiver's transactions in this window. The log lines are written just after the
        # answer that made the last event visible: poll briefly until they add up.
        log_deadline = time.monotonic() + 5.0
        while True:
            hub_text, syn_text = read_from(env.hub_log, hub_off), read_from(env.synapse_log, syn_off)
            if recv_side.name == "hub":
                out_pdus, out_secs = synapse_outbound(syn_text, env.hub_server_name, resume_wall)
                complete = sum(out_pdus) >= flow.seen and len(out_secs) >= len(out_pdus)
            else:
                spdus, ssecs, _, _, _ = synapse_txns(syn_text, resume_wall)
                complete = sum(spdus) >= flow.seen and len(ssecs) >= len(spdus)
            if complete or time.monotonic() > log_deadline:
                break
            await asyncio.sleep(0.05)
        spdus, ssecs, syn_missing_req, syn_gme_served, syn_other = synapse_txns(syn_text, resume_wall)
        if recv_side.name == "hub":
            nonempty = [p for p in out_pdus if p > 0]
            ms = [sec * 1000 for sec in out_secs]  # Synapse's timing of the hub's answers (10 ms resolution)
            own = [t for t in hub_txns(hub_text) if t[0] > 0]
            if own:
                flow.hub_log_txns = len(own)
                flow.hub_log_ms_total = sum(m for _, m in own)
            flow.missing_events_calls = syn_gme_served  # hub -> Synapse, from Synapse's access log
            flow.other_fetches = syn_other
        else:
            nonempty = [p for p in spdus if p > 0]
            ms = [sec * 1000 for sec in ssecs]
            flow.missing_events_calls = syn_missing_req  # Synapse -> hub, from Synapse's own log
        flow.txns = len(nonempty)
        flow.txn_pdus = sum(nonempty)
        flow.txn_max_pdus = max(nonempty, default=0)
        if ms:
            flow.txn_ms_total, flow.txn_ms_p50, flow.txn_ms_max = sum(ms), pct(ms, 50), max(ms)
        return flow
    finally:
        await watcher_api.close()
        await asyncio.gather(*(a.close() for a in senders))


async def run_all(env: Env, args: argparse.Namespace) -> list[Flow]:
    await setup_rooms(env)
    # Warm-up, unrecorded: connections, keys, caches, both directions in both rooms.
    for room_host in ("hub", "synapse"):
        for sender in ("synapse", "hub"):
            await run_flow(env, sender, room_host, "live", 5, 2, args.deadline, record=False)
    flows: list[Flow] = []
    for mode in ("live", "backlog"):
        for room_host in args.rooms:
            for sender in ("synapse", "hub"):
                print(f"[flow] {sender} -> {'hub' if sender == 'synapse' else 'synapse'}, "
                      f"{room_host}-hosted room, {mode}...", file=sys.stderr, flush=True)
                flow = await run_flow(env, sender, room_host, mode, args.messages, args.concurrency, args.deadline)
                print(f"[flow]   {flow.seen}/{flow.messages} visible in {flow.visible_seconds:.2f}s; "
                      f"stored {flow.stored_rate:.1f}/s; {flow.txns} txns", file=sys.stderr, flush=True)
                flows.append(flow)
    return flows


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def fmt(v: float, spec: str) -> str:
    if isinstance(v, float) and v != v:
        return "-"
    return format(v, spec)


def find(flows: list[Flow], receiver: str, room_host: str, mode: str) -> Flow | None:
    for f in flows:
        if f.receiver == receiver and f.room_host == room_host and f.mode == mode:
            return f
    return None


def print_report(flows: list[Flow], args: argparse.Namespace, versions: dict[str, str]) -> dict[str, Any]:
    print()
    print(f"Inbound federation benchmark: {args.messages} messages per flow, {args.concurrency} concurrent "
          f"senders on the sending server's client API, loopback TLS federation")
    print(f"  hub: {versions['hub']};  synapse: {versions['synapse']}")
    rows: list[tuple[str, Any, str]] = [
        ("sender's client API (sends/s)", lambda f: f.send_rate, ".1f"),
        ("all N visible after first send (s)", lambda f: f.visible_seconds, ".2f"),
        ("  -> end-to-end rate (msgs/s)", lambda f: f.e2e_rate, ".1f"),
        ("drain: last ack/resume -> all visible (s)", lambda f: f.drain_seconds, ".2f"),
        ("INBOUND STORED (PDUs/s)", lambda f: f.stored_rate, ".1f"),
        ("first -> last visible (s)", lambda f: f.arrival_span_seconds, ".2f"),
        ("lag origin_server_ts -> visible p50 (ms)", lambda f: f.lag_p50_ms, ".0f"),
        ("  p99 (ms)", lambda f: f.lag_p99_ms, ".0f"),
        ("receiver's /send txns with PDUs", lambda f: f.txns, "d"),
        ("  PDUs in them / largest", lambda f: f"{f.txn_pdus}/{f.txn_max_pdus}", "s"),
        ("  /send time total (ms)", lambda f: f.txn_ms_total, ".0f"),
        ("  /send time p50 / max (ms)", lambda f: f"{fmt(f.txn_ms_p50, '.1f')}/{fmt(f.txn_ms_max, '.0f')}", "s"),
        ("  PDUs per /send-busy second", lambda f: f.busy_rate, ".0f"),
        ("  hub's own log: /send total (ms)", lambda f: f.hub_log_ms_total, ".0f"),
        ("  hub's own log: PDUs per busy second", lambda f: f.hub_log_busy_rate, ".0f"),
        ("other fetches by receiver (/event, ...)", lambda f: f.other_fetches, "d"),
        ("get_missing_events by receiver", lambda f: f.missing_events_calls, "d"),
        ("sync responses (limited)", lambda f: f"{f.sync_responses} ({f.sync_limited})", "s"),
        ("not visible", lambda f: f.missing, "d"),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    summary: dict[str, Any] = {}
    for mode in ("live", "backlog"):
        for room_host in args.rooms:
            h, s = find(flows, "hub", room_host, mode), find(flows, "synapse", room_host, mode)
            print()
            what = ("receiver running; the sender's client API paces the flow" if mode == "live"
                    else "receiver SIGSTOPped during the sends, SIGCONT once all are acknowledged")
            print(f"[{mode}] room hosted by {room_host}: {what}")
            header = f"{'':<{w0}}{'hub receives':>14}{'synapse rcv':>14}{'hub/synapse':>13}"
            print(header)
            print("-" * len(header))
            for label, get, spec in rows:
                gv = get(h) if h else NAN
                sv = get(s) if s else NAN
                ratio = div(gv, sv) if isinstance(gv, (int, float)) and isinstance(sv, (int, float)) else NAN
                show_ratio = ratio if label.strip().startswith(("INBOUND", "all N", "  -> end", "drain")) else NAN
                print(f"{label:<{w0}}{fmt(gv, spec):>14}{fmt(sv, spec):>14}{fmt(show_ratio, '.2f'):>13}")
            if h and s:
                summary[f"{mode}/{room_host}-room"] = {"hub_stored_rate": h.stored_rate,
                                                       "synapse_stored_rate": s.stored_rate,
                                                       "ratio": div(h.stored_rate, s.stored_rate),
                                                       "hub_burst_visible_s": h.visible_seconds,
                                                       "synapse_burst_visible_s": s.visible_seconds,
                                                       "hub_busy_rate": h.busy_rate}
    print()
    print("Summary (inbound PDUs stored per second; target: hub >= 10x Synapse)")
    for room_host in args.rooms:
        hb, sb = find(flows, "hub", room_host, "backlog"), find(flows, "synapse", room_host, "backlog")
        hl, sl = find(flows, "hub", room_host, "live"), find(flows, "synapse", room_host, "live")
        if hb and sb:
            print(f"  {room_host}-hosted room, backlog drain: hub {hb.stored_rate:.1f}/s, "
                  f"Synapse {sb.stored_rate:.1f}/s -> {div(hb.stored_rate, sb.stored_rate):.1f}x")
        if hl and sl:
            print(f"  {room_host}-hosted room, live end-to-end: hub {hl.e2e_rate:.1f}/s (paced by Synapse's "
                  f"client API at {hl.send_rate:.1f}/s), Synapse {sl.e2e_rate:.1f}/s (hub sent at "
                  f"{sl.send_rate:.1f}/s) -> {div(hl.e2e_rate, sl.e2e_rate):.1f}x")
            print(f"  {room_host}-hosted room, hub /send processing (stored before answering): "
                  f"{hl.busy_rate:.0f} PDUs/s live, {fmt(hb.busy_rate if hb else NAN, '.0f')} PDUs/s backlog"
                  f" -> {div(hl.busy_rate, sl.e2e_rate):.1f}x / "
                  f"{div(hb.busy_rate if hb else NAN, sb.stored_rate if sb else NAN):.1f}x Synapse's stored rate")
            print(f"  {room_host}-hosted room, {args.messages}-message burst fully visible: "
                  f"Synapse->hub {hl.visible_seconds:.2f}s, hub->Synapse {sl.visible_seconds:.2f}s")
    errors = [f"{f.key}: {e}" for f in flows for e in f.errors]
    for e in errors:
        print(f"  error: {e}")
    print()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200, help="messages per flow (default 200)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent sending clients (default 8)")
    ap.add_argument("--rooms", default="hub,synapse",
                    help="which rooms: hub (hub-hosted), synapse (Synapse-hosted), or both (default)")
    ap.add_argument("--deadline", type=float, default=180.0, help="seconds allowed per flow (default 180)")
    ap.add_argument("--hub-log-level", default="INFO",
                    help="hub log level (default INFO). DEBUG adds the hub's own per-transaction line "
                    "(matrix_core/federation/inbound.py) but also aiosqlite's per-query lines, which slow the hub")
    ap.add_argument("--hub-sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL",
                    help="the hub's sqlite_synchronous (default FULL, its own default; Synapse's SQLite runs "
                    "WAL with SQLite's default synchronous=FULL too)")
    ap.add_argument("--workdir", type=Path, help="keep server data and logs here (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="also write raw results as JSON to this file")
    args = ap.parse_args(argv)
    args.rooms = [r.strip() for r in args.rooms.split(",") if r.strip()]
    if not set(args.rooms) <= {"hub", "synapse"} or not args.rooms:
        ap.error("--rooms takes hub, synapse or hub,synapse")
    if args.messages < 1 or args.concurrency < 1:
        ap.error("--messages and --concurrency must be positive")

    with ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-federation-"))).resolve()
        syn_dir = workdir / "synapse"
        syn_dir.mkdir(parents=True, exist_ok=True)
        syn_log_yaml = workdir / "synapse-log.yaml"
        syn_log_yaml.write_text(SYNAPSE_LOG_CONFIG.format(log_file=json.dumps(str(syn_dir / "homeserver.log"))))
        print("[setup] starting Synapse and the hub...", file=sys.stderr, flush=True)
        hs = stack.enter_context(SynapseProcess(syn_dir, extra_config={"log_config": str(syn_log_yaml)}))
        gw = stack.enter_context(running(start_hub(workdir / "hub", args.hub_log_level, args.hub_sqlite_synchronous)))
        gw.add_user("hubby", PASSWORD)
        hub_token = gw.login("hubby", PASSWORD)
        _, syn_token = hs.register_user("sam", PASSWORD)
        env = Env(
            hub=Side("hub", gw.http_url or "", hub_token, f"@hubby:{gw.server_name}",
                     lambda: gw.proc.pid if gw.proc is not None else None),
            synapse=Side("synapse", hs.client_url or "", syn_token, hs.user_id("sam"), lambda: hs.pid),
            hub_log=gw.log_path(), synapse_log=hs.log_path, rooms={}, hub_server_name=gw.server_name,
        )
        versions = {"hub": f"matrix-gateway (log_level {args.hub_log_level}, "
                           f"sqlite_synchronous {args.hub_sqlite_synchronous}, message rate limit off)",
                    "synapse": f"Synapse {hs.version}"}
        print(f"[setup] Synapse {hs.version} ready in {hs.ready_seconds:.2f}s, hub in {gw.ready_seconds:.2f}s",
              file=sys.stderr, flush=True)
        flows = asyncio.run(run_all(env, args))
        hub_log_bytes = file_size(env.hub_log)

    summary = print_report(flows, args, versions)
    print(f"(hub log written during the run: {hub_log_bytes / 1e6:.1f} MB at {args.hub_log_level})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()},
                                         "versions": versions, "summary": summary,
                                         "flows": [f.as_json() for f in flows]}, indent=2) + "\n")
    return 1 if any(f.errors for f in flows) else 0


if __name__ == "__main__":
    sys.exit(main())
