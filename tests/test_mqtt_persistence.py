"""What survives: retained messages as room state, persistent sessions, acknowledged publishes
(the hub killed with SIGKILL right after PUBACK), topic rules set with the CLI while running."""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli
from tests.test_mqtt_peers import Paho, mosquitto_pub

V5 = mqtt.MQTTv5


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    gw.add_user("bob", PASSWORD, guest=True)  # not in the household: shares no topic room (issue 16)
    yield gw
    gw.stop()


def restart(gw: GatewayProcess, kill: bool = False) -> None:
    if kill:
        gw.kill()
        gw.proc = None
    else:
        assert gw.stop() == 0, gw.read_log()
    gw.start()


def test_retained_is_room_state_survives_restart_and_does_not_leak(hub: GatewayProcess) -> None:
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "ret/dev/state", '{"on":true}', 1, "-r")
    mosquitto_pub(port, "alice", PASSWORD, "ret/dev/other", "keep", 1, "-r")
    token = hub.login("alice", PASSWORD)
    q = urllib.parse.quote("#mqtt/ret/dev:localhost", safe="")
    status, state = hub.request("GET", f"/_matrix/client/v3/rooms/{q}/state", token=token)
    assert status == 200
    retained = {e["state_key"]: e["content"] for e in state if e["type"] == "org.matrix_gateway.mqtt.retained"}
    assert retained["ret/dev/state"]["payload"] == {"kind": "json", "value": {"on": True}}
    restart(hub)
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "ret-sub", protocol=V5)
    bob = Paho(hub.mqtt_port, "bob", PASSWORD, "ret-bob")
    try:
        sub.connect()
        sub.subscribe("ret/dev/+", 1)
        got = sorted([sub.get(), sub.get()], key=lambda m: m.topic)
        assert [(m.topic, m.payload, m.retain) for m in got] == [
            ("ret/dev/other", b"keep", True), ("ret/dev/state", b'{"on":true}', True)]
        bob.connect()
        bob.subscribe("#", 1)
        bob.subscribe("ret/dev/state", 1)
        assert bob.nothing_within(0.5)  # not joined: no retained message leaks
        # an empty retained payload clears (and is passed on to current subscribers)
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "ret/dev/state", "", 1, "-r")
        cleared = sub.get()
        assert (cleared.topic, cleared.payload) == ("ret/dev/state", b"")
    finally:
        sub.disconnect()
        bob.disconnect()
    late = Paho(hub.mqtt_port, "alice", PASSWORD, "ret-late")
    try:
        late.connect()
        late.subscribe("ret/dev/#", 1)
        assert late.get().topic == "ret/dev/other"
        assert late.nothing_within(0.3)
    finally:
        late.disconnect()


def test_persistent_session_gets_missed_messages_also_after_restart(hub: GatewayProcess) -> None:
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sess/dev/x", "create", 1)
    sub = Paho(port, "alice", PASSWORD, "persist-1", clean=False)
    flags, rc, _ = sub.connect()
    assert not flags.session_present
    sub.subscribe("sess/dev/#", 1)
    sub.disconnect()
    for i in range(3):
        mosquitto_pub(port, "alice", PASSWORD, "sess/dev/x", f"offline {i}", 1)
    sub = Paho(port, "alice", PASSWORD, "persist-1", clean=False)
    flags, rc, _ = sub.connect()
    assert flags.session_present
    assert [sub.get().payload for _ in range(3)] == [b"offline 0", b"offline 1", b"offline 2"]
    sub.disconnect()
    # offline again; messages arrive; then the hub restarts: history is the message store
    mosquitto_pub(port, "alice", PASSWORD, "sess/dev/x", "before restart", 1)
    mosquitto_pub(port, "alice", PASSWORD, "sess/dev/x", "qos0 is not kept", 0)
    restart(hub)
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "persist-1", clean=False)
    flags, _, _ = sub.connect()
    assert flags.session_present
    assert sub.get().payload == b"before restart"
    assert sub.nothing_within(0.3)
    sub.disconnect()
    # MQTT 5 session expiry: 0 ends the session at disconnect
    v5 = Paho(hub.mqtt_port, "alice", PASSWORD, "persist-1", protocol=V5, clean=False, session_expiry=0)
    flags, _, _ = v5.connect()
    assert flags.session_present
    v5.disconnect()
    v5 = Paho(hub.mqtt_port, "alice", PASSWORD, "persist-1", protocol=V5, clean=False, session_expiry=0)
    flags, _, _ = v5.connect()
    assert not flags.session_present
    v5.disconnect()


def test_messages_published_after_a_restart_do_not_hide_the_backlog(hub: GatewayProcess) -> None:
    """A persistent session restored at start keeps its backlog (read back from history) even when
    new messages arrive before it reconnects: they used to move its cursor past the backlog."""
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "back/dev/x", "create", 1)
    sub = Paho(port, "alice", PASSWORD, "persist-2", clean=False)
    sub.connect()
    sub.subscribe("back/dev/#", 1)
    sub.disconnect()
    for i in range(2):
        mosquitto_pub(port, "alice", PASSWORD, "back/dev/x", f"before {i}", 1)
    restart(hub)
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "back/dev/x", "after", 1)
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "persist-2", clean=False)
    flags, _, _ = sub.connect()
    assert flags.session_present
    assert [sub.get().payload for _ in range(3)] == [b"before 0", b"before 1", b"after"]
    assert sub.nothing_within(0.3)  # each once: the live queue and the replay do not overlap
    sub.disconnect()


def test_acknowledged_publishes_survive_sigkill(hub: GatewayProcess) -> None:
    pub = Paho(hub.mqtt_port, "alice", PASSWORD, "durable-pub")
    pub.connect()
    infos = [pub.client.publish("dur/dev/x", f"m{i}".encode(), qos=1) for i in range(300)]
    for info in infos[:200]:
        info.wait_for_publish(10)
    acked = [i for i, info in enumerate(infos) if info.is_published()]
    restart(hub, kill=True)
    pub.client.loop_stop()
    token = hub.login("alice", PASSWORD)
    q = urllib.parse.quote("#mqtt/dur/dev:localhost", safe="")
    status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=1000", token=token)
    assert status == 200
    stored = {e["content"]["mqtt"]["payload"]["text"] for e in body["chunk"] if e["type"] == "m.room.message"}
    assert len(acked) >= 200
    assert {f"m{i}" for i in acked} <= stored


def test_cli_map_applies_to_a_running_hub_and_room_binding(hub: GatewayProcess) -> None:
    token = hub.login("alice", PASSWORD)
    status, body = hub.request("POST", "/_matrix/client/v3/createRoom",
                               {"room_alias_name": "garden", "name": "Garden"}, token=token)
    assert status == 200
    garden = body["room_id"]
    out = gateway_cli("mqtt", "map", "garden/+/moisture", "#garden", "--data-dir", str(hub.data_dir)).stdout
    assert garden in out
    assert garden in gateway_cli("mqtt", "maps", "--data-dir", str(hub.data_dir)).stdout
    bad = gateway_cli("mqtt", "map", "a/#/b", "#garden", "--data-dir", str(hub.data_dir), check=False)
    assert bad.returncode != 0 and "topic filter" in bad.stderr
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "map-sub")
    try:
        sub.connect()
        sub.subscribe("garden/#", 1)
        # A Matrix message in the room is published on the rule's topic once the hub applied it.
        q = urllib.parse.quote(garden, safe="")
        while True:
            hub.request("POST", f"/_matrix/client/api/v1/rooms/{q}/send/m.room.message",
                        {"msgtype": "m.text", "body": "probe"}, token=token)
            try:
                msg = sub.get(timeout=0.3)
                break
            except Exception:
                continue
        assert msg.topic == "garden"
        sub.publish("garden/bed1/moisture", b"41", qos=1)
        assert (lambda m: (m.topic, m.payload))(sub.get()) == ("garden/bed1/moisture", b"41")
        status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=5", token=token)
        assert any(e["content"].get("mqtt", {}).get("topic") == "garden/bed1/moisture" for e in body["chunk"])
        # a room admin binds a topic from inside a room (a state event, e.g. from Element)
        status, body = hub.request("POST", "/_matrix/client/v3/createRoom", {"name": "Porch"}, token=token)
        porch = body["room_id"]
        qp = urllib.parse.quote(porch, safe="")
        status, _ = hub.request("PUT", f"/_matrix/client/v3/rooms/{qp}/state/org.matrix_gateway.mqtt.binding/porch%2F%23",
                                {"topic_filter": "porch/#"}, token=token)
        assert status == 200
        sub.subscribe("porch/#", 1)
        sub.publish("porch/light", b"on", qos=1)
        assert sub.get().payload == b"on"
        status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{qp}/messages?dir=b&limit=5", token=token)
        assert any(e["content"].get("mqtt", {}).get("topic") == "porch/light" for e in body["chunk"])
    finally:
        sub.disconnect()
    assert "removed" in gateway_cli("mqtt", "unmap", "garden/+/moisture", "--data-dir", str(hub.data_dir)).stdout
    assert gateway_cli("mqtt", "maps", "--data-dir", str(hub.data_dir)).stdout.strip() == ""
