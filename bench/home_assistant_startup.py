#!/usr/bin/env python3
"""Home Assistant start-up against 1,000 retained MQTT discovery configs: the hub and mosquitto.

    python bench/home_assistant_startup.py [--sensors N] [--only gateway|mosquitto]

For each broker (the hub, then a real mosquitto as the peer, one at a time: two cores):

* publish: the `sensor` account publishes N retained discovery configs
  (`homeassistant/sensor/bench_I/config`) and N retained states (`benchhome/sensors/sI`), paho,
  QoS 1, 100 in flight; the clock stops at the last PUBACK (on the hub each is a room state
  event, committed before its PUBACK).
* HA up: a fresh Home Assistant (tests/support/home_assistant.py: its own venv, config dir and
  port) is started and onboarded; not part of the figure.
* all entities: from the start of HA's MQTT config flow (the `ha` account; HA connects,
  subscribes to `homeassistant/#`, gets every retained config at subscribe time) until HA's REST
  /api/states lists all N `sensor.bench_I` with their states (polled every 0.5 s: HA has no long
  poll).
* RSS: Home Assistant's and the broker's resident memory once all entities exist.

The hub runs with `messages_per_second = 0` (no rate limit) and only `user add ha` / `user add
sensor`; mosquitto with the same two password accounts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.home_assistant import HomeAssistantProcess  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

PASSWORD = "bench-password-1"
IN_FLIGHT = 100
ENTITIES_TIMEOUT = 600.0


@dataclass
class Figures:
    broker: str
    publish_s: float = float("nan")
    ha_up_s: float = float("nan")
    all_entities_s: float = float("nan")
    ha_rss_mb: float = float("nan")
    broker_rss_mb: float = float("nan")
    note: str = ""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def messages(n: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        config = {"name": f"Bench {i}", "object_id": f"bench_{i}", "unique_id": f"bench-{i}",
                  "state_topic": f"benchhome/sensors/s{i}", "unit_of_measurement": "°C",
                  "device_class": "temperature"}
        out.append((f"homeassistant/sensor/bench_{i}/config", json.dumps(config).encode()))
    out += [(f"benchhome/sensors/s{i}", f"{i % 40}.5".encode()) for i in range(n)]
    return out


def publish_retained(port: int, items: list[tuple[str, bytes]]) -> float:
    """All retained, QoS 1, IN_FLIGHT at a time; seconds until the last PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sensor", protocol=mqtt.MQTTv311)
    client.username_pw_set("sensor", PASSWORD)
    client.max_inflight_messages_set(IN_FLIGHT)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    try:
        if not connected.wait(30):
            raise RuntimeError("sensor could not connect")
        started = time.monotonic()
        infos = [client.publish(topic, payload, 1, True) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(120)
            if not info.is_published():
                raise RuntimeError("a retained publish was not acknowledged")
        return time.monotonic() - started
    finally:
        client.disconnect()
        client.loop_stop()


def wait_all_entities(ha: HomeAssistantProcess, n: int) -> None:
    expected = {f"sensor.bench_{i}": f"{i % 40}.5" for i in range(n)}
    deadline = time.monotonic() + ENTITIES_TIMEOUT
    while True:
        status, states = ha.request("GET", "/api/states")
        if status == 200:
            have = {s["entity_id"]: s["state"] for s in states if s["entity_id"] in expected}
            if len(have) == n and have == expected:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(have)} of {n} entities after {ENTITIES_TIMEOUT} s")
        time.sleep(0.5)


def run_one(name: str, tmp: Path, n: int) -> Figures:
    fig = Figures(name)
    items = messages(n)
    gw: GatewayProcess | None = None
    mosq: Mosquitto | None = None
    if name == "gateway":
        data = tmp / "gateway-data"
        data.mkdir()
        (data / "gateway.toml").write_text("messages_per_second = 0\n")
        gw = GatewayProcess(data)
        gw.start()
        gw.add_user("ha", PASSWORD)
        gw.add_user("sensor", PASSWORD)
        port, broker_pid = gw.mqtt_port, gw.pid
    else:
        mosq = Mosquitto(tmp / "mosquitto", users={"ha": PASSWORD, "sensor": PASSWORD}).start()
        assert mosq.proc is not None
        port, broker_pid = mosq.port, mosq.proc.pid
    ha = HomeAssistantProcess(tmp / f"ha-{name}")
    try:
        fig.publish_s = publish_retained(port, items)
        started = time.monotonic()
        ha.start()
        ha.onboard()
        fig.ha_up_s = time.monotonic() - started
        started = time.monotonic()
        entry = ha.configure_mqtt(port, "ha", PASSWORD)
        if entry["result"]["state"] != "loaded":
            raise RuntimeError(f"MQTT entry not loaded: {entry}")
        wait_all_entities(ha, n)
        fig.all_entities_s = time.monotonic() - started
        assert ha.proc is not None
        fig.ha_rss_mb = rss_mb(ha.proc.pid)
        fig.broker_rss_mb = rss_mb(broker_pid)
    except Exception as exc:  # noqa: BLE001  a failed broker still lets the other run
        fig.note = f"failed: {exc}"[:200]
    finally:
        ha.stop()
        if gw is not None:
            gw.stop()
        if mosq is not None:
            mosq.stop()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--only", choices=["gateway", "mosquitto"])
    args = parser.parse_args()
    brokers = [args.only] if args.only else ["gateway", "mosquitto"]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        for name in brokers:
            (Path(tmp) / name).mkdir()
            results.append(run_one(name, Path(tmp) / name, args.sensors))
            print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"\nHome Assistant 2024.3.3 start-up with {args.sensors} retained discovery configs (+ states)")
    print(f"{'broker':<10} {'publish s':>10} {'HA up s':>8} {'all entities s':>15} {'HA RSS MB':>10} "
          f"{'broker RSS MB':>14}")
    for f in results:
        print(f"{f.broker:<10} {f.publish_s:>10.1f} {f.ha_up_s:>8.1f} {f.all_entities_s:>15.1f} "
              f"{f.ha_rss_mb:>10.0f} {f.broker_rss_mb:>14.1f} {f.note}")


if __name__ == "__main__":
    main()
