#!/usr/bin/env python3
"""The appliance's footprint, measured on the real hub started through the CLI (issue 6 limits).

    python bench/footprint.py [--readings 2000] [--concurrency 16] [--mdns]

Prints:
* start to ready: spawn of `matrix-gateway run` to its ready line (limit 1 s, hard 3 s), and the
  hub's own figure from that line;
* idle resident memory of the hub with all its listeners (limit 50 MB, hard 80 MB), just after
  ready and after a few requests and logins; with --mdns also with discovery on;
* SD-card writes per reading at steady state: `write_bytes` of /proc/PID/io (bytes the hub caused
  to be sent to the block layer) over N HTTP sends after a warm-up, sequential (one device) and
  concurrent (C devices); `wchar`-style syscall counts are not used: they include sockets;
* SIGTERM to exit (limit 5 s, exit 0), and that every acknowledged reading is there afterwards.

Nothing here runs in the test suite: it loads the machine and takes a minute.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "footprint bench passphrase"
IDLE_AFTER_S = 7.0  # gateway.memory.SettleWhenQuiet runs 3-6 s after the last write


def io_counters(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sender:
    """Keep-alive-free plain urllib sends: the simplest device, one request per reading."""

    def __init__(self, gw: GatewayProcess, token: str, room: str) -> None:
        self.gw, self.token, self.room = gw, token, room

    def send(self, txn: str, value: int) -> None:
        status, body = self.gw.request("PUT", f"/_matrix/client/v3/rooms/{self.room}/send/m.room.message/{txn}",
                                       {"msgtype": "m.text", "body": f"t={value}"}, self.token)
        if status != 200:
            raise RuntimeError(f"send failed: {status} {body}")


def writes_per_reading(gw: GatewayProcess, senders: list[Sender], readings: int, tag: str) -> float:
    """Steady state: warm up (the WAL reaches its checkpoint size), then count."""
    def run(n: int, prefix: str) -> None:
        per = n // len(senders)
        with concurrent.futures.ThreadPoolExecutor(len(senders)) as pool:
            futures = [pool.submit(lambda s=s, k=k: [s.send(f"{prefix}{k}-{i}", i) for i in range(per)])
                       for k, s in enumerate(senders)]
            for fut in futures:
                fut.result()

    run(max(readings // 2, len(senders)), f"{tag}warm")
    before = io_counters(gw.pid)["write_bytes"]
    started = time.monotonic()
    run(readings, tag)
    elapsed = time.monotonic() - started
    written = io_counters(gw.pid)["write_bytes"] - before
    per = written / readings
    print(f"  {tag:11} {readings} readings in {elapsed:.1f} s ({readings / elapsed:.0f}/s): "
          f"{written / 1e6:.2f} MB written, {per:.0f} bytes per reading")
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mdns", action="store_true", help="also measure idle memory with discovery on")
    parser.add_argument("--page-size", type=int, default=None,
                        help="create the database with this SQLite page size first (default: SQLite's 4096)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--commit-window-ms", type=int, default=0,
                        help="the hub's commit_window_ms (writes gathered per commit; default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "gateway.toml").write_text(  # a bench, not a flood-guard test
            f'messages_per_second = 0\nsqlite_synchronous = "{args.synchronous}"\n'
            f"commit_window_ms = {args.commit_window_ms}\n")
        if args.page_size:
            import sqlite3

            conn = sqlite3.connect(data / "homeserver.db")
            conn.execute(f"PRAGMA page_size={args.page_size}")
            conn.execute("PRAGMA journal_mode=WAL")  # fixes the page size in the new file
            conn.close()
        print(f"database: page size {args.page_size or 4096}, synchronous={args.synchronous}")
        gw = GatewayProcess(data)
        gw.start()
        ready_line = next(line for line in gw.stdout_lines if "ready" in line).strip()
        print(f"start to ready: {gw.ready_seconds:.2f} s from spawn (hub's own: {ready_line.split(':')[0]})")
        print(f"  {ready_line}")
        print(f"idle RSS just after the first ready (first run makes keys and a TLS certificate): "
              f"{rss_mb(gw.pid):.1f} MB")
        users = [gw.add_user(f"dev{i}", PASSWORD) for i in range(args.concurrency)]
        tokens = [gw.device_token(f"dev{i}", f"sensor{i}") for i in range(args.concurrency)]
        for _ in range(3):
            gw.login("dev0", PASSWORD)
        status, room = gw.request("POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat", "room_alias_name": "bench"}, tokens[0])
        room_id = room["room_id"]
        for token in tokens[1:]:
            gw.request("POST", f"/_matrix/client/v3/join/{room_id}", {}, token)
        print(f"idle RSS after {len(users)} users, 3 logins, a room: {rss_mb(gw.pid):.1f} MB")

        print("SD-card writes per reading (write_bytes of /proc/PID/io, steady state):")
        seq = writes_per_reading(gw, [Sender(gw, tokens[0], room_id)], args.readings, "sequential")
        conc = writes_per_reading(gw, [Sender(gw, t, room_id) for t in tokens], args.readings, "concurrent")
        busy_rss = rss_mb(gw.pid)
        time.sleep(IDLE_AFTER_S)  # a measurement, not synchronisation: "idle" is after the quiet-time settle
        print(f"RSS right after {3 * args.readings} readings: {busy_rss:.1f} MB; idle {IDLE_AFTER_S:.0f} s later "
              f"(the hub hands memory back once traffic stops): {rss_mb(gw.pid):.1f} MB")

        last_txn = "final"
        Sender(gw, tokens[0], room_id).send(last_txn, -1)
        started = time.monotonic()
        code = gw.stop()
        stop_s = time.monotonic() - started
        print(f"SIGTERM to exit: {stop_s:.2f} s, exit status {code}")
        with GatewayProcess(data) as again:
            print(f"second start (the usual one: no first-run key and certificate generation): ready "
                  f"{again.ready_seconds:.2f} s from spawn, idle RSS {rss_mb(again.pid):.1f} MB")
            time.sleep(IDLE_AFTER_S)
            print(f"  and {IDLE_AFTER_S:.0f} s later: {rss_mb(again.pid):.1f} MB")
            token = again.login("dev0", PASSWORD)
            _, body = again.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=1", token=token)
            last = body["chunk"][0]["content"]["body"] if body.get("chunk") else None
            print(f"after restart the newest reading is {last!r} (expected 't=-1'): "
                  f"{'nothing lost' if last == 't=-1' else 'LOST'}")

        if args.mdns:
            mdns_dir = Path(tmp) / "mdns"
            mdns_dir.mkdir()
            (mdns_dir / "gateway.toml").write_text('mdns = true\nmdns_hostname = "benchhub"\n')
            with GatewayProcess(mdns_dir) as gw2:
                time.sleep(2.0)  # a measurement, not synchronisation: let registration's probing finish
                print(f"idle RSS with mDNS discovery on: {rss_mb(gw2.pid):.1f} MB "
                      f"(ready in {gw2.ready_seconds:.2f} s)")
        print(json.dumps({"sequential_bytes_per_reading": round(seq), "concurrent_bytes_per_reading": round(conc),
                          "stop_seconds": round(stop_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
