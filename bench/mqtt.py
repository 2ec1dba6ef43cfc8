#!/usr/bin/env python3
"""MQTT throughput and latency: the gateway's broker against a bare amqtt broker and mosquitto,
in one run, one broker at a time (two cores: the load generator shares them).

    python bench/mqtt.py [--messages N] [--latency-messages N] [--rounds R] [--only gateway|amqtt|mosquitto]
                         [--members N [--syncing]]

For each broker:

* QoS 0 msgs/s: one paho publisher sends N QoS 0 messages (64-byte payloads), then one QoS 1
  marker; the clock stops at the marker's PUBACK (brokers handle a client's packets in order).
* QoS 1 msgs/s: one paho publisher, 100 messages in flight, N messages; the clock stops at the
  last PUBACK. On the gateway every message is a signed room event, committed before PUBACK.
* latency: a paho subscriber (QoS 0) and a publisher sending QoS 1 messages carrying their send
  time, one every 2 ms; p50/p99 of publish -> receive.
* idle resident memory of the broker process after the run.

A shared two-core VM swings by +-20% from one minute to the next, so the brokers are measured in
R rounds (default 3), taking turns (gateway, amqtt, mosquitto, gateway, ...), each round on a
fresh broker; the table shows each figure's median over the rounds and the QoS 1 range.

`--members N` (gateway only): N more local users join the publisher's room before the runs, each
a recipient whose push rules apply to every message (issue 13's "3 local members"); with
`--syncing` each of them long-polls /sync (timeout 30 s, one thread each) during the QoS 1 run, so
what a syncing client costs the hub per message (its notification counts included) is in the
broker's CPU figure.

The gateway runs with `messages_per_second = 0` (rate limit off) in its gateway.toml, written
before the first start. amqtt is the PyPI package (the `bench` extra); mosquitto is Debian's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.support.gateway import GatewayProcess, free_port  # noqa: E402

PASSWORD = "bench-password-1"
PAYLOAD = b"x" * 64
IN_FLIGHT = 100


@dataclass
class Figures:
    broker: str
    qos0: float = float("nan")
    qos1: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rss_mb: float = float("nan")
    cpu_us_q1: float = float("nan")  # broker CPU time per QoS 1 message
    note: str = ""


class Broker:
    name = ""
    port = 0
    user: str | None = None
    password: str | None = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: ...

    def setup_room(self) -> None:
        """Before the runs: make the bench room (and its members, on the gateway)."""

    def start_syncers(self) -> None: ...
    def stop_syncers(self) -> None: ...


class Gateway(Broker):
    name = "gateway"

    def __init__(self, tmp: Path, members: int = 0, syncing: bool = False) -> None:
        data = Path(tempfile.mkdtemp(prefix="gateway-data-", dir=tmp))  # a fresh hub each round
        (data / "gateway.toml").write_text("messages_per_second = 0\n")
        self.gw = GatewayProcess(data)
        self.user, self.password = "bench", PASSWORD
        self.members = members
        self.syncing = syncing
        self.member_tokens: list[str] = []
        self._stop_sync = threading.Event()
        self._sync_threads: list[threading.Thread] = []
        self.syncs = 0

    def setup_room(self) -> None:
        if not self.members:
            return
        c = client(self, "bench-setup")
        try:
            c.publish("bench/room/warm", PAYLOAD, 1).wait_for_publish(30)  # the broker makes the room
        finally:
            c.disconnect()
            c.loop_stop()
        alias = urllib.parse.quote(f"#mqtt/bench/room:{self.gw.server_name}", safe="")
        owner = self.gw.login("bench", PASSWORD)
        status, body = self.gw.request("GET", f"/_matrix/client/v3/directory/room/{alias}", token=owner)
        if status != 200:
            raise RuntimeError(f"bench room not found: {status} {body}")
        room = urllib.parse.quote(body["room_id"], safe="")
        for i in range(self.members):
            user_id = self.gw.add_user(f"member{i}", PASSWORD)
            token = self.gw.login(f"member{i}", PASSWORD)
            # A household member is joined to the hub's topic rooms on its own (docs/mqtt.md), maybe
            # before this invite: "already joined" is fine, and the join is idempotent.
            for method, path, who, payload in (("POST", f"rooms/{room}/invite", owner, {"user_id": user_id}),
                                               ("POST", f"rooms/{room}/join", token, {})):
                status, body = self.gw.request(method, f"/_matrix/client/v3/{path}", payload, token=who)
                if status != 200 and "already joined" not in str(body.get("error", "")):
                    raise RuntimeError(f"{path}: {status} {body}")
            self.member_tokens.append(token)

    def start_syncers(self) -> None:
        if not self.syncing:
            return
        self._stop_sync.clear()

        def loop(token: str) -> None:
            status, body = self.gw.request("GET", "/_matrix/client/v3/sync?timeout=0", token=token)
            since = body["next_batch"]
            while not self._stop_sync.is_set():
                status, body = self.gw.request("GET", f"/_matrix/client/v3/sync?timeout=30000&since={since}",
                                               token=token)
                if status == 200:
                    since = body["next_batch"]
                    self.syncs += 1

        self._sync_threads = [threading.Thread(target=loop, args=(t,), daemon=True) for t in self.member_tokens]
        for t in self._sync_threads:
            t.start()

    def stop_syncers(self) -> None:
        self._stop_sync.set()  # each thread ends after its current long-poll (woken by the next message)

    def start(self) -> None:
        self.gw.start()
        self.gw.add_user("bench", PASSWORD)
        self.port = self.gw.mqtt_port

    def stop(self) -> None:
        self.gw.stop()

    def pid(self) -> int:
        return self.gw.pid


class Subprocess(Broker):
    def __init__(self, name: str, argv: Callable[[int], list[str]], tmp: Path) -> None:
        self.name = name
        self.argv = argv
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(self.argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.tmp)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # readiness: a client's CONNACK
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            try:
                c.connect("127.0.0.1", self.port)
                c.disconnect()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def amqtt_broker(tmp: Path) -> Broker:
    def argv(port: int) -> list[str]:
        conf = tmp / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n" % port
        )
        exe = Path(sys.executable).parent / "amqtt"
        return [str(exe), "-c", str(conf)]
    return Subprocess("amqtt", argv, tmp)


def mosquitto_broker(tmp: Path) -> Broker:
    return Subprocess("mosquitto", lambda port: ["mosquitto", "-p", str(port)], tmp)


def client(broker: Broker, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(IN_FLIGHT)
    c.max_queued_messages_set(0)
    if broker.user:
        c.username_pw_set(broker.user, broker.password)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("no CONNACK")
    return c


def throughput(broker: Broker, qos: int, n: int) -> float:
    c = client(broker, f"bench-pub-q{qos}")
    try:
        c.publish("bench/room/warm", PAYLOAD, 1).wait_for_publish(30)  # creates the room on the gateway
        done = threading.Event()
        acked = [0]
        if qos == 1:
            def on_publish(cl: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
                acked[0] += 1
                if acked[0] == n:
                    done.set()
            c.on_publish = on_publish
        start = time.perf_counter()
        for _ in range(n):
            c.publish("bench/room/data", PAYLOAD, qos)
        if qos == 0:
            c.publish("bench/room/data", b"marker", 1).wait_for_publish(120)
        elif not done.wait(120):
            raise RuntimeError(f"only {acked[0]} of {n} PUBACKs")
        return n / (time.perf_counter() - start)
    finally:
        c.disconnect()
        c.loop_stop()


def latency(broker: Broker, n: int) -> tuple[float, float]:
    sub = client(broker, "bench-sub")
    pub = client(broker, "bench-lat-pub")
    samples: list[float] = []
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(cl: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        sent = int(msg.payload.split(b" ", 1)[0])
        samples.append((time.perf_counter_ns() - sent) / 1e6)
        if len(samples) >= n:
            got.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    try:
        pub.publish("bench/room/lat", b"0 warm", 1).wait_for_publish(30)  # room exists before SUBSCRIBE
        samples.clear()
        sub.subscribe("bench/room/lat", 0)
        subscribed.wait(10)
        for _ in range(n):
            pub.publish("bench/room/lat", b"%d " % time.perf_counter_ns() + PAYLOAD[:40], 1)
            time.sleep(0.002)
        if not got.wait(60):
            raise RuntimeError(f"received {len(samples)} of {n}")
        ordered = sorted(samples[:n])
        return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(broker: Broker, args: argparse.Namespace) -> Figures:
    fig = Figures(broker.name)
    broker.start()
    try:
        broker.setup_room()
        fig.qos0 = throughput(broker, 0, args.messages)
        broker.start_syncers()
        cpu = cpu_seconds(broker.pid())
        try:
            fig.qos1 = throughput(broker, 1, args.messages)
            fig.cpu_us_q1 = (cpu_seconds(broker.pid()) - cpu) / args.messages * 1e6
        finally:
            broker.stop_syncers()
        fig.p50_ms, fig.p99_ms = latency(broker, args.latency_messages)
        fig.rss_mb = rss_mb(broker.pid())
    except Exception as exc:  # a baseline failing must not hide the others' figures
        fig.note = f"failed: {exc}"
    finally:
        broker.stop()
    return fig


def median_figures(runs: list[Figures]) -> Figures:
    """Each figure's median over the rounds; the note gives the QoS 1 range and any failure."""
    def med(attr: str) -> float:
        values = [getattr(f, attr) for f in runs if getattr(f, attr) == getattr(f, attr)]  # drop NaN
        return statistics.median(values) if values else float("nan")

    out = Figures(runs[0].broker, qos0=med("qos0"), qos1=med("qos1"), p50_ms=med("p50_ms"), p99_ms=med("p99_ms"),
                  rss_mb=med("rss_mb"), cpu_us_q1=med("cpu_us_q1"))
    qos1 = [f.qos1 for f in runs if f.qos1 == f.qos1]
    notes = [f.note for f in runs if f.note]
    if len(qos1) > 1:
        out.note = f"QoS1 {min(qos1):.0f}-{max(qos1):.0f} over {len(runs)} rounds"
    if notes:
        out.note = (out.note + "; " if out.note else "") + "; ".join(notes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--latency-messages", type=int, default=1000)
    parser.add_argument("--only", choices=["gateway", "amqtt", "mosquitto"])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per broker, taking turns (medians shown)")
    parser.add_argument("--members", type=int, default=0,
                        help="gateway: local users joined to the bench room besides the publisher")
    parser.add_argument("--syncing", action="store_true",
                        help="gateway: each member long-polls /sync during the QoS 1 run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp_name:
        tmp = Path(tmp_name)
        makers: dict[str, Callable[[], Broker]] = {
            "gateway": lambda: Gateway(tmp, args.members, args.syncing),
            "amqtt": lambda: amqtt_broker(tmp),
            "mosquitto": lambda: mosquitto_broker(tmp),
        }
        if not shutil.which("mosquitto"):
            makers.pop("mosquitto")
        chosen = [name for name in makers if args.only in (None, name)]
        rounds: dict[str, list[Figures]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name in chosen:
                rounds[name].append(run(makers[name](), args))
        results = [median_figures(rounds[name]) for name in chosen]
    print(f"\nMQTT, one paho {mqtt.__name__} publisher, {len(PAYLOAD)}-byte payloads, {args.messages} messages, "
          f"{IN_FLIGHT} in flight (QoS 1); latency over {args.latency_messages} QoS 1 messages")
    if args.members:
        print(f"gateway room: {args.members} more local members{', each long-polling /sync' if args.syncing else ''}")
    print(f"{'broker':<10} {'QoS0 msg/s':>11} {'QoS1 msg/s':>11} {'CPU us/QoS1':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MB':>8}")
    for f in results:
        print(f"{f.broker:<10} {f.qos0:>11.0f} {f.qos1:>11.0f} {f.cpu_us_q1:>12.0f} {f.p50_ms:>8.2f} {f.p99_ms:>8.2f} "
              f"{f.rss_mb:>8.1f} {f.note}")
    by_name = {f.broker: f for f in results}
    gw = by_name.get("gateway")
    if gw is not None:
        for other in ("amqtt", "mosquitto"):
            if other in by_name:
                o = by_name[other]
                print(f"gateway/{other}: QoS0 x{gw.qos0 / o.qos0:.2f}, QoS1 x{gw.qos1 / o.qos1:.2f}, "
                      f"p99 x{gw.p99_ms / o.p99_ms:.2f}")
        target_ok = "amqtt" in by_name and gw.qos1 >= by_name["amqtt"].qos1 and gw.p99_ms <= 5.0
        print(f"target (QoS1 >= bare amqtt, p99 <= 5 ms): {'met' if target_ok else 'NOT met'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
