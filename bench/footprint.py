#!/usr/bin/env python3
"""The appliance's footprint, measured on the real hub started through the CLI (issue 6 limits).

    python bench/footprint.py [--readings 2000] [--concurrency 16] [--mdns]
                              [--mqtt-devices 16 --mqtt-rate 5 --mqtt-seconds 30 --qos0-commit-ms 1000]

Prints:
* start to ready: spawn of `matrix-gateway run` to its ready line (limit 1 s, hard 3 s), and the
  hub's own figure from that line;
* idle resident memory of the hub with all its listeners (limit 50 MB, hard 80 MB), just after
  ready and after a few requests and logins; with --mdns also with discovery on;
* SD-card writes per reading at steady state: `write_bytes` of /proc/PID/io (bytes the hub caused
  to be sent to the block layer) over N HTTP sends after a warm-up, sequential (one device) and
  concurrent (C devices); `wchar`-style syscall counts are not used: they include sockets;
  then MQTT QoS 0 devices (paho, each its own topic and so its own room) publishing at a steady
  rate, with the hub's mqtt_qos0_commit_ms as given (and, in the same run, 0);
* SIGTERM to exit (limit 5 s, exit 0), and that every acknowledged reading is there afterwards.

Nothing here runs in the test suite: it loads the machine and takes a minute.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import threading
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


def mqtt_writes_per_reading(gw: GatewayProcess, devices: int, rate: float, seconds: float) -> tuple[float, float]:
    """`devices` paho clients publish QoS 0 readings to their own topics at `rate` per second
    each, for a warm-up and then `seconds`; a QoS 1 publish after each phase commits whatever
    is still waiting to share a commit. Returns (bytes per reading, readings per second)."""
    import paho.mqtt.client as mqtt

    clients = []
    for i in range(devices):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"footprint-{i}")
        c.username_pw_set(f"dev{i}", PASSWORD)
        c.connect("127.0.0.1", gw.mqtt_port)
        c.loop_start()
        clients.append(c)

    def phase(duration: float) -> int:
        stop_at = time.monotonic() + duration
        counts = [0] * devices

        def device(i: int) -> None:
            tick = time.monotonic()
            while tick < stop_at:
                clients[i].publish(f"home/dev{i}/temp", json.dumps({"t": 20 + counts[i] % 50 / 10}), qos=0)
                counts[i] += 1
                tick += 1 / rate
                time.sleep(max(0.0, tick - time.monotonic()))

        threads = [threading.Thread(target=device, args=(i,)) for i in range(devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # QoS 1 on the same connection: after every QoS 0 before it. Sent together, so they
        # share commits as the readings do (waiting for each in turn would add 16 commits).
        marks = [c.publish(f"home/dev{i}/temp", b'{"mark": 1}', qos=1) for i, c in enumerate(clients)]
        for mark in marks:
            mark.wait_for_publish(30)
        return sum(counts) + devices

    try:
        phase(min(seconds, 10.0))  # rooms created, tables and WAL at their steady shape
        before = io_counters(gw.pid)["write_bytes"]
        readings = phase(seconds)
        written = io_counters(gw.pid)["write_bytes"] - before
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
    return written / readings, readings / seconds


def mqtt_phase(args: argparse.Namespace, tmp: str) -> list[tuple[int, float, float]]:
    """The QoS 0 fleet against fresh hubs with mqtt_qos0_commit_ms = 0 and the given value."""
    results = []
    for window in sorted({0, args.qos0_commit_ms}):
        data = Path(tmp) / f"mqtt{window}"
        data.mkdir()
        (data / "gateway.toml").write_text(f"messages_per_second = 0\nmqtt_qos0_commit_ms = {window}\n")
        with GatewayProcess(data) as gw:
            for i in range(args.mqtt_devices):
                gw.add_user(f"dev{i}", PASSWORD)
            per, rate = mqtt_writes_per_reading(gw, args.mqtt_devices, args.mqtt_rate, args.mqtt_seconds)
        print(f"  MQTT QoS 0, {args.mqtt_devices} devices x {args.mqtt_rate:g}/s ({rate:.0f} readings/s, "
              f"{args.mqtt_devices} rooms), mqtt_qos0_commit_ms = {window}: {per:.0f} bytes per reading")
        results.append((window, per, rate))
    return results


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
    parser.add_argument("--mqtt-devices", type=int, default=16, help="MQTT QoS 0 devices (0: no MQTT phase)")
    parser.add_argument("--mqtt-rate", type=float, default=5.0, help="readings per second per MQTT device")
    parser.add_argument("--mqtt-seconds", type=float, default=30.0)
    parser.add_argument("--qos0-commit-ms", type=int, default=1000, help="mqtt_qos0_commit_ms of the second hub")
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
        mqtt = mqtt_phase(args, tmp) if args.mqtt_devices else []
        print(json.dumps({"sequential_bytes_per_reading": round(seq), "concurrent_bytes_per_reading": round(conc),
                          "stop_seconds": round(stop_s, 2),
                          "mqtt_qos0_bytes_per_reading": {str(w): round(per) for w, per, _ in mqtt}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
