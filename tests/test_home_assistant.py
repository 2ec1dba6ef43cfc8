"""A real Home Assistant (2024.3.3, PyPI) with the hub as its MQTT broker (issue 16).

Set up as a new user would: `matrix-gateway user add ha` and `user add sensor`, nothing else on
the hub; Home Assistant onboarded and its MQTT integration configured through its REST API (the
config flow its dialog drives). A sensor and a switch announced by retained discovery configs
published by the `sensor` account before Home Assistant connected become entities with their
states; a switch command from Home Assistant reaches the device's topic and the device's answer
comes back; HA's birth message reaches the device; after a restart of the hub HA reconnects and
follows new readings; after a restart of Home Assistant (same config dir) its entities come back
from the retained discovery configs with the states published while it was down, and commands go
both ways again. Last, the same Home Assistant is switched (its MQTT options flow) to a
`user add guest --guest` account, on MQTT 3.1.1 and on MQTT 5: its publishes (a QoS 1 birth
message, commands) are refused, acknowledged, logged once with the account, and its one
connection stays up (no reconnect loop).

Slow the first time (the venv: about 2 minutes and 600 MB under ~/.cache/matrix-gateway-peers,
tests/support/home_assistant.py), then about 10 s for Home Assistant's start. One
Home Assistant for the module.
"""
from __future__ import annotations

import json
import queue
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.support.home_assistant import HomeAssistantProcess
from tests.test_mqtt_peers import WAIT, Paho

pytestmark = pytest.mark.skipif(not ((3, 11) <= sys.version_info[:2] <= (3, 12)),
                                reason="Home Assistant 2024.3 runs on Python 3.11 and 3.12 only")

SENSOR_CONFIG = {"name": "Hub temperature", "object_id": "hub_temperature", "unique_id": "hubtemp-1",
                 "state_topic": "home/hubtemp/state", "unit_of_measurement": "°C", "device_class": "temperature"}
SWITCH_CONFIG = {"name": "Hub plug", "object_id": "hub_plug", "unique_id": "hubplug-1",
                 "command_topic": "home/hubplug/set", "state_topic": "home/hubplug/state"}


class Device:
    """The `sensor` account's device: answers switch commands with its new state (retained),
    and notes Home Assistant's birth messages."""

    def __init__(self, port: int) -> None:
        self.paho = Paho(port, "sensor", PASSWORD, "hub-device")
        self.commands: queue.Queue[bytes] = queue.Queue()
        self.births: queue.Queue[bytes] = queue.Queue()
        self.paho.client.on_message = self._on_message
        self.paho.client.on_connect = self._on_connect

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self.paho.connack.put((flags, rc, props))
        client.subscribe([("home/hubplug/set", 1), ("homeassistant/status", 1)])  # again after a reconnect

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == "homeassistant/status":
            self.births.put(bytes(msg.payload))
        elif msg.topic == "home/hubplug/set":
            self.commands.put(bytes(msg.payload))
            client.publish("home/hubplug/state", msg.payload, 1, True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("ha-hub")) / "data")
    gw.start()
    gw.add_user("ha", PASSWORD)
    gw.add_user("sensor", PASSWORD)
    gw.add_user("guest", PASSWORD, guest=True)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def device(hub: GatewayProcess) -> Iterator[Device]:
    """Announces a sensor and a switch with retained discovery configs, before HA exists."""
    dev = Device(hub.mqtt_port)
    dev.paho.connect()
    try:
        dev.paho.publish("homeassistant/sensor/hubtemp/config", json.dumps(SENSOR_CONFIG), qos=1, retain=True)
        dev.paho.publish("homeassistant/switch/hubplug/config", json.dumps(SWITCH_CONFIG), qos=1, retain=True)
        dev.paho.publish("home/hubtemp/state", "21.5", qos=1, retain=True)
        dev.paho.publish("home/hubplug/state", "OFF", qos=1, retain=True)
        yield dev
    finally:
        dev.paho.disconnect()


@pytest.fixture(scope="module")
def home_assistant(hub: GatewayProcess, device: Device,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistantProcess]:
    work = Path(tmp_path_factory.mktemp("home-assistant"))
    ha = HomeAssistantProcess(work)
    ha.start()
    try:
        ha.onboard()
        entry = ha.configure_mqtt(hub.mqtt_port, "ha", PASSWORD)
        assert entry["result"]["state"] == "loaded", entry
        yield ha
    finally:
        ha.stop()
        print(ha.read_log()[-3000:])


def test_discovered_sensor_appears_with_its_state(home_assistant: HomeAssistantProcess) -> None:
    state = home_assistant.wait_state("sensor.hub_temperature", "21.5")
    assert state["attributes"]["unit_of_measurement"] == "°C"
    assert home_assistant.wait_state("switch.hub_plug", "off")["attributes"]["friendly_name"] == "Hub plug"


def test_birth_message_reaches_the_device(home_assistant: HomeAssistantProcess, device: Device) -> None:
    assert device.births.get(timeout=WAIT) == b"online"


def test_switch_command_reaches_the_device_and_its_state_comes_back(home_assistant: HomeAssistantProcess,
                                                                   device: Device) -> None:
    home_assistant.wait_state("switch.hub_plug", "off")
    home_assistant.call_service("switch", "turn_on", {"entity_id": "switch.hub_plug"})
    assert device.commands.get(timeout=WAIT) == b"ON"
    home_assistant.wait_state("switch.hub_plug", "on")
    home_assistant.call_service("switch", "turn_off", {"entity_id": "switch.hub_plug"})
    assert device.commands.get(timeout=WAIT) == b"OFF"
    home_assistant.wait_state("switch.hub_plug", "off")


def test_home_assistant_follows_the_hub_across_a_restart(hub: GatewayProcess, device: Device,
                                                         home_assistant: HomeAssistantProcess) -> None:
    home_assistant.wait_state("sensor.hub_temperature")
    hub.stop()
    hub.start()
    device.paho.connack.get(timeout=WAIT * 3)  # paho reconnected (and re-subscribed in on_connect)
    device.paho.publish("home/hubtemp/state", "23.0", qos=1, retain=True)
    home_assistant.wait_state("sensor.hub_temperature", "23.0", timeout=90)  # HA's reconnect backs off


def test_home_assistant_restarted_finds_its_entities_and_states_again(hub: GatewayProcess, device: Device,
                                                                      home_assistant: HomeAssistantProcess) -> None:
    """Stopped and started again (same config dir): the entities are rebuilt from the retained
    discovery configs delivered at subscribe time, with the states published while HA was down
    (not the restored ones it saved), and a switch command goes both ways again."""
    home_assistant.wait_state("switch.hub_plug")
    home_assistant.stop()
    device.paho.publish("home/hubtemp/state", "19.5", qos=1, retain=True)  # while HA is down
    device.paho.publish("home/hubplug/state", "ON", qos=1, retain=True)
    home_assistant.start()
    home_assistant.wait_state("sensor.hub_temperature", "19.5", timeout=90)
    assert home_assistant.wait_state("switch.hub_plug", "on")["attributes"]["friendly_name"] == "Hub plug"
    while not device.commands.empty():
        device.commands.get_nowait()
    home_assistant.call_service("switch", "turn_off", {"entity_id": "switch.hub_plug"})
    assert device.commands.get(timeout=WAIT) == b"OFF"
    home_assistant.wait_state("switch.hub_plug", "off")


def _hub_log(hub: GatewayProcess) -> str:
    return hub.log_path().read_text(errors="replace")


def _wait_for(what: str, found: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


CONNECTED = "Connected to MQTT server"
DISCONNECTED = "Disconnected from MQTT server"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_guest_home_assistant_is_refused_without_a_reconnect_loop(hub: GatewayProcess, device: Device,
                                                                    home_assistant: HomeAssistantProcess,
                                                                    protocol: str) -> None:
    """issue 16: a refused 3.1.1 publish made HA reconnect 21 times in 12 s. As a guest (in no
    topic room) HA's QoS 1 birth message and its commands are refused: each acknowledged (on
    MQTT 5 with 0x87), HA's `mqtt.publish` returns at once (it waits for the PUBACK, up to its
    10 s TIMEOUT_ACK), nothing reaches the device, one log line per topic names the account, and
    HA's log shows one connection and no disconnect over the whole exchange."""
    hub_mark = len(_hub_log(hub))
    ha_mark = len(home_assistant.read_log())
    home_assistant.reconfigure_mqtt(hub.mqtt_port, "guest", PASSWORD, protocol=protocol, birth_qos=1)
    ha_log = lambda: home_assistant.read_log()[ha_mark:]  # noqa: E731
    _wait_for("HA connected as guest", lambda: CONNECTED in ha_log())
    since = lambda: ha_log()[ha_log().index(CONNECTED):]  # noqa: E731  # the new connection's part

    def refused(topic: str) -> list[str]:
        return [line for line in _hub_log(hub)[hub_mark:].splitlines()
                if "refused" in line and repr(topic) in line and "@guest:localhost" in line]

    _wait_for("the birth message refused", lambda: bool(refused("homeassistant/status")))
    for payload in ("guest-1", "guest-2", "guest-3"):
        started = time.monotonic()
        home_assistant.call_service("mqtt", "publish", {"topic": "home/hubplug/set", "payload": payload, "qos": 1})
        assert time.monotonic() - started < 5, "no PUBACK for HA's refused publish"
    # HA's log is written through a queue: its line for the last publish comes after any
    # (re)connect line of the exchange
    _wait_for("HA's log caught up", lambda: "'guest-3'" in ha_log())
    _wait_for("the refusal logged", lambda: bool(refused("home/hubplug/set")))
    assert device.commands.empty()  # none of the guest's commands reached the device
    log = since()
    assert "No ACK from MQTT server" not in log, log[-3000:]
    assert log.count(CONNECTED) == 1 and DISCONNECTED not in log, log[-3000:]
    lines = refused("home/hubplug/set")
    assert len(lines) == 1, lines  # three refusals, one line
    assert "0x87" in lines[0] and "QoS 1" in lines[0], lines
    assert len(refused("homeassistant/status")) == 1
    assert re.search(r"homeassistant/status.*QoS 1", refused("homeassistant/status")[0])
