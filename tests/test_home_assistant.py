"""A real Home Assistant (2024.3.3, PyPI) with the hub as its MQTT broker (issue 16).

Set up as a new user would: `matrix-gateway user add ha` and `user add sensor`, nothing else on
the hub; Home Assistant onboarded and its MQTT integration configured through its REST API (the
config flow its dialog drives). A sensor and a switch announced by retained discovery configs
published by the `sensor` account before Home Assistant connected become entities with their
states; a switch command from Home Assistant reaches the device's topic and the device's answer
comes back; HA's birth message reaches the device; after a restart of the hub HA reconnects and
follows new readings.

Slow the first time (the venv: about 2 minutes and 600 MB under ~/.cache/matrix-gateway-peers,
tests/support/home_assistant.py), then about 10 s for Home Assistant's start. One
Home Assistant for the module.
"""
from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Iterator

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
