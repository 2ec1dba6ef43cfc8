"""examples/automation/fan_bot.py end to end: a mautrix application service added with
`matrix-gateway appservice add` to a running hub, invited into the kitchen sensor's room and the
fan's; mosquitto_pub is the sensor and mosquitto_sub the fan. Kitchen 21 °C → `home/fan/set OFF`,
24.5 °C → nothing (hysteresis), 26.5 °C → `home/fan/set ON`."""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO, Iterator

import pytest

from examples.automation.fan_bot import decide, reading
from tests.conftest import PASSWORD
from tests.support.gateway import REPO_ROOT, GatewayProcess, free_port, gateway_cli

EXAMPLE = REPO_ROOT / "examples" / "automation"


class Lines:
    """A process's stdout, line by line, with a timeout (a thread reads it: select() on a text
    stream misses lines already in its buffer)."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def next(self, timeout: float = 20.0) -> str:
        line = self.queue.get(timeout=timeout)
        if not line:
            raise EOFError("the process ended")
        return line.strip()

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (line := self.next(max(0.01, deadline - time.monotonic()))):
            pass
        return line


def test_the_decision_has_hysteresis() -> None:
    assert decide(26.0, None) == "ON" and decide(26.0, True) is None
    assert decide(24.5, True) is None and decide(23.5, True) == "OFF"
    assert reading({"mqtt": {"topic": "home/kitchen/temp", "payload": {"kind": "json", "value": {"t": {"$f": "26.5"}}}}}) == 26.5
    assert reading({"mqtt": {"topic": "home/other", "payload": {"kind": "text", "text": "30"}}}) is None


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path / "data") as gw:
        gw.add_user("alice", PASSWORD)
        yield gw


def test_kitchen_above_25_turns_the_fan_on(hub: GatewayProcess, tmp_path: Path) -> None:
    port = free_port()
    registration = tmp_path / "registration.yaml"
    registration.write_text((EXAMPLE / "registration.yaml").read_text()
                            .replace("29333", str(port)).replace("CHANGE-ME-as-token", "as-fan-4f1c")
                            .replace("CHANGE-ME-hs-token", "hs-fan-93ab"))
    gateway_cli("appservice", "add", str(registration), "--data-dir", str(hub.data_dir))
    deadline = time.monotonic() + 15
    while hub.request("GET", "/_matrix/client/v3/account/whoami", token="as-fan-4f1c")[0] != 200:
        assert time.monotonic() < deadline, "the hub did not apply the registration"
        time.sleep(0.2)

    mqtt = ["-h", "127.0.0.1", "-p", str(hub.mqtt_port), "-u", "alice", "-P", PASSWORD, "-q", "1"]
    subprocess.run(["mosquitto_pub", *mqtt, "-t", "home/fan/state", "-m", "OFF", "-r"], check=True, timeout=10)
    subprocess.run(["mosquitto_pub", *mqtt, "-t", "home/kitchen/temp", "-m", '{"t": 20.0}'], check=True, timeout=10)

    bot = subprocess.Popen([sys.executable, str(EXAMPLE / "fan_bot.py"), "--hub", hub.http_url or "",
                            "--registration", str(registration), "--state", str(tmp_path / "bot.json")],
                           cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    fan = subprocess.Popen(["mosquitto_sub", *mqtt, "-v", "-t", "home/fan/#", "-W", "60"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert bot.stdout is not None and fan.stdout is not None
        bot_out, fan_out = Lines(bot.stdout), Lines(fan.stdout)
        bot_out.wait_for("fan automation ready")
        alice = hub.login("alice", PASSWORD)
        for alias in ("#mqtt/home/kitchen:localhost", "#mqtt/home/fan:localhost"):
            status, found = hub.request("GET", f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias, safe='')}")
            assert status == 200, found
            status, _ = hub.request("POST", f"/_matrix/client/v3/rooms/{urllib.parse.quote(found['room_id'])}/invite",
                                    {"user_id": "@automation:localhost"}, token=alice)
            assert status == 200
            bot_out.wait_for(f"joined {found['room_id']}")
        assert fan_out.wait_for("home/fan/state") == "home/fan/state OFF"  # subscribed (the retained state)

        for temperature in ("21.0", "24.5", "26.5"):
            subprocess.run(["mosquitto_pub", *mqtt, "-t", "home/kitchen/temp", "-m", f'{{"t": {temperature}}}'],
                           check=True, timeout=10)
        assert fan_out.next() == "home/fan/set OFF"  # 21 °C: below 24
        assert fan_out.next() == "home/fan/set ON"  # 24.5 °C said nothing; 26.5 °C: on
    finally:
        for proc in (bot, fan):
            proc.terminate()
            proc.wait(10)
