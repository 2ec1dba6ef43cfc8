"""Zigbee2MQTT- and Home Assistant-shaped traffic (issue 16), against the hub started with its CLI,
with paho-mqtt clients and accounts made only with `matrix-gateway user add`: 100 devices, the
bridge's retained topics and 1,000 retained discovery configs are two rooms, not 101, and all of
it reaches a fresh subscriber; Home Assistant's birth message reaches the devices, which
re-announce.
"""
from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import WAIT, Paho

DEVICES = 100
CONFIGS = 1000


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = Path(tmp_path_factory.mktemp("z2m")) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    # The network's shape is under test here, not the per-account rate (50/s after a burst of 200,
    # which spreads Zigbee2MQTT's 1,100-message start-up over ~18 s: tests/test_mqtt_broker.py and
    # the rate-limit tests cover that). A burst as big as the start-up keeps this test short.
    (data_dir / "gateway.toml").write_text("messages_burst = 5000\n")
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("ha", PASSWORD)
    gw.add_user("z2m", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def publish_all(client: Paho, messages: list[tuple[str, bytes]], qos: int = 1, retain: bool = True) -> None:
    """Publish without waiting for each acknowledgement, then wait for them all."""
    infos = [client.client.publish(topic, payload, qos, retain) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(WAIT * 3)
        assert info.is_published()


def receive(client: Paho, count: int) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    for _ in range(count):
        msg = client.get(timeout=WAIT)
        got[msg.topic] = bytes(msg.payload)
    return got


def discovery(i: int) -> tuple[str, bytes]:
    ident = f"0x00124b00{i:08x}"
    config = {"name": f"temperature {i}", "state_topic": f"zigbee2mqtt/device{i % DEVICES}",
              "value_template": "{{ value_json.temperature }}", "unique_id": f"{ident}_temperature",
              "device": {"identifiers": [f"zigbee2mqtt_{ident}"], "name": f"device{i % DEVICES}"}}
    return f"homeassistant/sensor/{ident}/temperature/config", json.dumps(config).encode()


def test_zigbee2mqtt_network_is_two_rooms_and_a_fresh_subscriber_gets_everything(hub: GatewayProcess) -> None:
    bridge = Paho(hub.mqtt_port, "z2m", PASSWORD, "zigbee2mqtt_bridge")
    bridge.client.max_inflight_messages_set(200)
    bridge_topics = [
        ("zigbee2mqtt/bridge/state", b'{"state":"online"}'),
        ("zigbee2mqtt/bridge/info", b'{"version":"1.36.0","coordinator":{"type":"zStack3x0"}}'),
        ("zigbee2mqtt/bridge/devices", json.dumps([{"friendly_name": f"device{i}"} for i in range(DEVICES)]).encode()),
    ]
    devices = [(f"zigbee2mqtt/device{i}", json.dumps({"temperature": 20 + i / 10, "linkquality": 99}).encode())
               for i in range(DEVICES)]
    configs = [discovery(i) for i in range(CONFIGS)]
    try:
        assert bridge.connect()[1] == 0
        publish_all(bridge, bridge_topics + devices)
        publish_all(bridge, configs)
    finally:
        bridge.disconnect()

    ha = Paho(hub.mqtt_port, "ha", PASSWORD, "homeassistant-fresh")
    try:
        assert ha.connect()[1] == 0
        ha.subscribe("homeassistant/#", 1)
        got = receive(ha, CONFIGS)
        assert got == dict(configs)  # every retained discovery config, in full
        ha.subscribe("zigbee2mqtt/#", 1)
        got = receive(ha, len(bridge_topics) + DEVICES)
        assert got == dict(bridge_topics + devices)
        assert ha.nothing_within(0.3)
    finally:
        ha.disconnect()

    token = hub.login("ha", PASSWORD)
    status, body = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=token)
    assert status == 200 and len(body["joined_rooms"]) == 2, body  # the bridge's room and discovery's


def retained_of(client: Paho, filters: list[str], count: int) -> tuple[dict[str, bytes], float]:
    """One SUBSCRIBE (QoS 0, as Home Assistant subscribes): the `count` retained messages it
    brings, each once and flagged retained, and the seconds until the last arrived."""
    started = time.monotonic()
    client.client.subscribe([(topic_filter, 0) for topic_filter in filters])
    got: dict[str, bytes] = {}
    for _ in range(count):
        try:
            msg = client.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{len(got)} of {count} retained messages") from None
        assert msg.retain and msg.topic not in got, msg.topic
        got[msg.topic] = bytes(msg.payload)
    return got, time.monotonic() - started


def test_one_subscribe_with_every_entity_topic_gets_each_retained_message(hub: GatewayProcess) -> None:
    """Home Assistant subscribes to each discovered entity's state topic, all in one SUBSCRIBE.
    Each exact filter's retained message was found by scanning every joined room's state: 7 s
    for 1,000 filters (bench/home_assistant_startup.py; mosquitto 0.2 s), here ~10 times as long
    as one `#` subscription bringing as many. Now a lookup: every retained message once, none
    for topics without one, in about the time of the wildcard subscription."""
    configs = dict(discovery(i) for i in range(CONFIGS))
    devices = {f"zigbee2mqtt/device{i}": json.dumps({"temperature": 20 + i / 10, "linkquality": 99}).encode()
               for i in range(DEVICES)}
    expected = {**configs, **devices}
    filters = [*expected, "zigbee2mqtt/device-none", "unrouted/topic/none", "homeassistant/+/none/config"]
    ha = Paho(hub.mqtt_port, "ha", PASSWORD, "ha-entities")
    try:
        assert ha.connect()[1] == 0
        got, wildcard = retained_of(ha, ["homeassistant/#", "zigbee2mqtt/#"], len(expected) + 3)
        assert ha.nothing_within(0.3)
        ha.client.unsubscribe(["homeassistant/#", "zigbee2mqtt/#"])
        got, exact = retained_of(ha, filters, len(expected))
        assert got == expected
        assert ha.nothing_within(0.3)
        assert exact < 3 * wildcard + 0.5, (exact, wildcard)  # was ~10 times
    finally:
        ha.disconnect()


def test_home_assistant_birth_message_makes_devices_reannounce(hub: GatewayProcess) -> None:
    """HA publishes `homeassistant/status` online when it (re)starts; devices listening there
    publish their discovery configs again, which HA (a household member) receives."""
    device = Paho(hub.mqtt_port, "z2m", PASSWORD, "birth-device")
    ha = Paho(hub.mqtt_port, "ha", PASSWORD, "birth-ha")
    births: queue.Queue[bytes] = queue.Queue()
    topic, config = discovery(5000)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == "homeassistant/status":
            births.put(bytes(msg.payload))
            client.publish(topic, config, 1, True)  # re-announce, as Zigbee2MQTT does

    device.client.on_message = on_message
    try:
        device.connect()
        ha.connect()
        device.subscribe("homeassistant/status", 1)
        ha.subscribe(topic, 1)
        ha.publish("homeassistant/status", b"online", qos=0)
        assert births.get(timeout=WAIT) == b"online"
        msg = ha.get()
        assert (msg.topic, msg.payload) == (topic, config)
    finally:
        device.disconnect()
        ha.disconnect()
