#!/usr/bin/env python3
"""The uplink ([[mqtt_bridge]]) to a real mosquitto: forwarding rate and catch-up time.

    python bench/mqtt_uplink.py [--live N] [--backlog N] [--qos 0|1]

* live msgs/s: the remote is up; one paho publisher on the hub sends N messages (64-byte payloads,
  100 in flight, QoS 1: each a committed room event) to `bench/...`, forwarded by an `out` rule;
  the clock runs from the first publish to the last message received by a paho subscriber on
  mosquitto. It is the slower of the hub's ingest and the uplink's forwarding.
* catch-up: mosquitto is stopped; N messages are published on the hub (stored: they are room
  history); mosquitto is started again on the same port with a subscriber; the clock runs from
  mosquitto's start until a persistent subscriber (subscribed before the stop) has all N (the uplink reconnects after its backoff,
  restart_timeout = 1 s here, then reads the history in order and forwards it). The backlog
  figure is forwarding alone: history read from SQLite, mapped, published, acknowledged.

The hub runs with `messages_per_second = 0` (no rate limit).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

PASSWORD = "bench-password-1"
PAYLOAD = b"x" * 64
IN_FLIGHT = 100
QUEUED_MAX = 20000


def paho(port: int, user: str | None, client_id: str, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.max_inflight_messages_set(IN_FLIGHT)
    c.max_queued_messages_set(0)
    if user:
        c.username_pw_set(user, PASSWORD)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("no CONNACK")
    return c


class Counter:
    """A subscriber on mosquitto counting what arrives on bench/#."""

    def __init__(self, port: int, expect: int, client_id: str, clean: bool = True) -> None:
        self.count = 0
        self.expect = expect
        self.done = threading.Event()
        self.client = paho(port, None, client_id, clean)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe("bench/#", 1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK")

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == "bench/data":
            self.count += 1
            if self.count >= self.expect:
                self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(port: int, n: int, qos: int) -> float:
    """Publish n messages on the hub; seconds until the last is acknowledged (stored)."""
    c = paho(port, "sensor", "bench-pub")
    done = threading.Event()
    acked = [0]
    room = threading.Condition()

    def on_publish(cl: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        acked[0] += 1
        if acked[0] == n:
            done.set()
        if acked[0] % 1000 == 0:
            with room:
                room.notify()

    c.on_publish = on_publish
    start = time.perf_counter()
    for i in range(n):
        # paho numbers queued messages at publish time: more than 65,535 queued reuse message ids
        # and its bookkeeping stalls (seen at 67,456 of 100,000), so keep fewer queued
        if qos and i - acked[0] > QUEUED_MAX:
            with room:
                room.wait_for(lambda: i - acked[0] <= QUEUED_MAX // 2, timeout=60)
        c.publish("bench/data", PAYLOAD, qos)
    if qos == 0:
        c.publish("bench/marker", b"m", 1).wait_for_publish(600)
    elif not done.wait(600):
        raise RuntimeError(f"only {acked[0]} of {n} PUBACKs")
    took = time.perf_counter() - start
    c.disconnect()
    c.loop_stop()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--live", type=int, default=20000, help="messages for the live forwarding rate")
    parser.add_argument("--backlog", type=int, default=100000, help="messages published while the remote is down")
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1, help="QoS of the bridge's topic rule")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    remote = Mosquitto(tmp / "mosquitto", persistent=True).start()
    data = tmp / "hub"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0\n")
    gw = GatewayProcess(data)
    with gw:
        gw.add_user("sensor", PASSWORD)
    (data / "gateway.toml").write_text(
        "messages_per_second = 0\n[[mqtt_bridge]]\nname = \"bench\"\n"
        f"address = \"127.0.0.1:{remote.port}\"\nrestart_timeout = 1\n"
        f"topic = [{{ pattern = \"bench/#\", direction = \"out\", qos = {args.qos} }}]\n")
    gw.start()
    try:
        # live
        counter = Counter(remote.port, args.live, "bench-live")
        start = time.perf_counter()
        stored = publish_all(gw.mqtt_port, args.live, 1)
        if not counter.done.wait(600):
            raise RuntimeError(f"live: only {counter.count} of {args.live} arrived")
        live = args.live / (time.perf_counter() - start)
        counter.close()
        print(f"live forwarding: {args.live} messages, {live:.0f} msgs/s end to end "
              f"(hub ingest alone {args.live / stored:.0f} msgs/s)", flush=True)
        # backlog: a persistent subscriber, so what the uplink sends before it reconnects is kept for it
        Counter(remote.port, 0, "bench-backlog", clean=False).close()
        remote.stop()
        stored = publish_all(gw.mqtt_port, args.backlog, 1)
        print(f"backlog: {args.backlog} messages stored on the hub in {stored:.1f} s while the remote was down",
              flush=True)
        started = time.perf_counter()
        remote.start()
        counter = Counter(remote.port, args.backlog, "bench-backlog", clean=False)
        if not counter.done.wait(1800):
            raise RuntimeError(f"catch-up: only {counter.count} of {args.backlog} arrived")
        took = time.perf_counter() - started
        counter.close()
        print(f"catch-up: {args.backlog} messages forwarded in {took:.1f} s after the remote came back "
              f"({args.backlog / took:.0f} msgs/s, reconnect backoff included)", flush=True)
    finally:
        gw.stop()
        remote.stop()


if __name__ == "__main__":
    main()
