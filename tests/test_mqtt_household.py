"""The household (issue 16), end to end: accounts made only with `matrix-gateway user add` share
topics, a `--guest` is refused (MQTT 3.1.1: acknowledged and dropped, no reconnect loop; MQTT 5:
its reason code), every refusal is logged once with the account, and an old hub's accounts join
its old topic rooms at the next start. The hub is started with its CLI; paho-mqtt and
mosquitto_pub are the clients.
"""
from __future__ import annotations

import queue
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from gateway.config import DATABASE_FILE
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import WAIT, Paho, mosquitto_pub

V5 = mqtt.MQTTv5


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A hub whose accounts were made only with `user add`: ha and sensor (household), visitor (guest)."""
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("household")) / "data")
    gw.start()
    gw.add_user("ha", PASSWORD)
    gw.add_user("sensor", PASSWORD)
    gw.add_user("visitor", PASSWORD, guest=True)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def joined_rooms(hub: GatewayProcess, token: str) -> list[str]:
    status, body = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=token)
    assert status == 200, body
    return list(body["joined_rooms"])


def wait_until_joined(hub: GatewayProcess, token: str, room_id: str) -> None:
    """A running hub adds a new household member at its next rules poll (0.5 s)."""
    deadline = time.monotonic() + WAIT
    while room_id not in joined_rooms(hub, token):
        assert time.monotonic() < deadline, f"not joined to {room_id}"
        time.sleep(0.1)


def test_two_accounts_made_with_user_add_share_topics(hub: GatewayProcess) -> None:
    """Home Assistant subscribes before any room exists; the device's first (retained) publish
    makes the room, with ha in it at the power to publish retained messages too."""
    ha = Paho(hub.mqtt_port, "ha", PASSWORD, "ha-share", protocol=V5)
    device = Paho(hub.mqtt_port, "sensor", PASSWORD, "sensor-share", protocol=V5)
    codes: list[int] = []
    device.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    try:
        assert ha.connect()[1] == 0 and device.connect()[1] == 0
        ha.subscribe("shared/#", 1)
        device.publish("shared/sensor/t1/config", b'{"name": "t1"}', qos=1, retain=True)
        assert codes == [0]
        got = ha.get()
        assert (got.topic, got.payload) == ("shared/sensor/t1/config", b'{"name": "t1"}')
        # ha may publish retained messages (state events) there as well, and the device sees them
        device.subscribe("shared/sensor/t1/set", 1)
        ha_codes: list[int] = []
        ha.client.on_publish = lambda c, u, mid, rc, props: ha_codes.append(rc.value)
        ha.publish("shared/sensor/t1/set", b"ON", qos=1, retain=True)
        assert ha_codes == [0]
        got = device.get()
        assert (got.topic, got.payload) == ("shared/sensor/t1/set", b"ON")
    finally:
        ha.disconnect()
        device.disconnect()
    fresh = Paho(hub.mqtt_port, "ha", PASSWORD, "ha-fresh")
    try:
        fresh.connect()
        fresh.subscribe("shared/sensor/t1/config", 1)
        got = fresh.get()
        assert got.retain and got.payload == b'{"name": "t1"}'
    finally:
        fresh.disconnect()


def test_a_new_household_member_joins_the_existing_topic_rooms(hub: GatewayProcess) -> None:
    mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "late/kitchen/temp", "21.5", 1, "-r")
    hub.add_user("latecomer", PASSWORD)  # beside the running hub
    token = hub.login("latecomer", PASSWORD)
    status, body = hub.request("GET", f"/_matrix/client/v3/directory/room/{q('#mqtt/late/kitchen:localhost')}")
    assert status == 200, body
    wait_until_joined(hub, token, body["room_id"])
    client = Paho(hub.mqtt_port, "latecomer", PASSWORD, "late-sub")
    try:
        client.connect()
        client.subscribe("late/#", 1)
        got = client.get()
        assert (got.topic, got.payload, got.retain) == ("late/kitchen/temp", b"21.5", True)
    finally:
        client.disconnect()


def test_a_guest_is_refused_on_311_without_a_reconnect_loop(hub: GatewayProcess) -> None:
    """issue 16: the hub closed the connection, paho resent the message at every reconnect: 21
    disconnects in 12 s. Now the refused QoS 1 and QoS 2 publishes are acknowledged and dropped;
    the one connection stays up; the subscriber gets none of them; the log names the account once."""
    mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "guarded/door/cmd", "init", 1)
    watcher = Paho(hub.mqtt_port, "ha", PASSWORD, "guard-watch")
    guest = Paho(hub.mqtt_port, "visitor", PASSWORD, "guest-311")
    connects: queue.Queue[int] = queue.Queue()

    def on_connect(client: mqtt.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        connects.put(1)
        guest.connack.put((flags, rc, props))

    guest.client.on_connect = on_connect
    try:
        watcher.connect()
        watcher.subscribe("guarded/#", 1)
        guest.connect()  # paho's loop reconnects by itself if the hub closes
        for qos in (1, 2, 1):
            info = guest.publish("guarded/door/cmd", b"open", qos=qos)
            assert info.is_published()  # PUBACK / PUBCOMP came back
        guest.publish("guarded/door/cmd", b"open", qos=0)
        mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "guarded/door/cmd", "closed", 1)
        assert watcher.get().payload == b"closed"  # nothing of the guest's before it
        with pytest.raises(queue.Empty):
            guest.disconnects.get(timeout=2.0)  # a loop shows within a second; none in two
        assert connects.qsize() == 1
    finally:
        guest.disconnect()
        watcher.disconnect()
    lines = [line for line in hub.read_log().splitlines()
             if "refused" in line and "guarded/door/cmd" in line and "guest-311" in line]
    assert len(lines) == 1, lines  # once per account, client and topic; QoS 0 included in the count
    assert "@visitor:localhost" in lines[0] and "0x87" in lines[0] and "M_FORBIDDEN" in lines[0], lines


def test_a_guest_gets_the_reason_code_on_mqtt5_and_qos0_refusals_are_logged(hub: GatewayProcess) -> None:
    mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "guarded5/door/cmd", "init", 1)
    guest = Paho(hub.mqtt_port, "visitor", PASSWORD, "guest-5", protocol=V5)
    codes: list[int] = []
    guest.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    try:
        guest.connect()
        guest.publish("guarded5/door/cmd", b"open", qos=1)
        assert codes == [0x87]  # Not authorized
    finally:
        guest.disconnect()
    mosquitto_pub(hub.mqtt_port, "visitor", PASSWORD, "guarded5/door/q0", "x", 0, "-i", "guest-q0")
    deadline = time.monotonic() + WAIT
    while True:
        log = hub.read_log()
        if "guarded5/door/q0" in log:
            break
        assert time.monotonic() < deadline, "the QoS 0 refusal was not logged"
        time.sleep(0.1)
    line = next(line for line in log.splitlines() if "guarded5/door/q0" in line)
    assert "@visitor:localhost" in line and "QoS 0" in line and "refused" in line


def test_a_guest_first_publish_makes_no_room_and_a_member_later_does(hub: GatewayProcess) -> None:
    """A guest publishing first to a tree with no room made that tree's room (owned by the guest).
    Now it is refused (3.1.1: acknowledged and dropped, logged with the account; MQTT 5: 0x87), no
    room or alias exists afterwards, and a household member's later publish makes the room."""
    alias = lambda tree: f"/_matrix/client/v3/directory/room/{q(f'#mqtt/{tree}:localhost')}"  # noqa: E731
    guest = Paho(hub.mqtt_port, "visitor", PASSWORD, "guest-first")
    guest5 = Paho(hub.mqtt_port, "visitor", PASSWORD, "guest-first5", protocol=V5)
    codes: list[int] = []
    guest5.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    try:
        guest.connect()
        guest5.connect()
        assert guest.publish("unclaimed/shed/temp", b"4", qos=1, retain=True).is_published()  # acknowledged
        guest.publish("unclaimed/shed/temp", b"5", qos=2)
        guest5.publish("unclaimed5/shed/temp", b"4", qos=1, retain=True)
        assert codes == [0x87]  # Not authorized
        with pytest.raises(queue.Empty):
            guest.disconnects.get_nowait()
    finally:
        guest.disconnect()
        guest5.disconnect()
    for tree in ("unclaimed/shed", "unclaimed5/shed"):
        status, body = hub.request("GET", alias(tree))
        assert status == 404, (tree, body)
    lines = [line for line in hub.log_path().read_text().splitlines()
             if "refused" in line and "'unclaimed/shed/temp'" in line]
    assert len(lines) == 1 and "@visitor:localhost" in lines[0] and "0x87" in lines[0], lines
    status, body = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=hub.login("visitor", PASSWORD))
    assert status == 200 and body["joined_rooms"] == [], body
    # a household member's publish makes the room as usual, and the other members get it
    watcher = Paho(hub.mqtt_port, "ha", PASSWORD, "unclaimed-watch")
    try:
        watcher.connect()
        watcher.subscribe("unclaimed/#", 1)
        mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "unclaimed/shed/temp", "6", 1, "-r")
        got = watcher.get()
        assert (got.topic, got.payload) == ("unclaimed/shed/temp", b"6")  # nothing of the guest's before it
    finally:
        watcher.disconnect()
    status, body = hub.request("GET", alias("unclaimed/shed"))
    assert status == 200, body
    assert body["room_id"] in joined_rooms(hub, hub.login("ha", PASSWORD))


def test_a_guest_is_not_put_into_topic_rooms(hub: GatewayProcess) -> None:
    mosquitto_pub(hub.mqtt_port, "sensor", PASSWORD, "private/garage/temp", "9", 1)
    status, body = hub.request("GET", f"/_matrix/client/v3/directory/room/{q('#mqtt/private/garage:localhost')}")
    assert status == 200, body
    assert body["room_id"] not in joined_rooms(hub, hub.login("visitor", PASSWORD))
    assert body["room_id"] in joined_rooms(hub, hub.login("ha", PASSWORD))


def test_an_old_hub_migrates_its_accounts_into_the_household(tmp_path: Path) -> None:
    """A hub from before the household: its topic room has only its creator, at users_default 0.
    After the upgrade, the other account is a household member, in the room, and may publish
    retained messages there."""
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("owner", PASSWORD)
        gw.add_user("other", PASSWORD, guest=True)  # not joined now: as on an old hub
        mosquitto_pub(gw.mqtt_port, "owner", PASSWORD, "old/room/a", "1", 1, "-r")
        owner = gw.login("owner", PASSWORD)
        status, body = gw.request("GET", f"/_matrix/client/v3/directory/room/{q('#mqtt/old/room:localhost')}")
        room_id = body["room_id"]
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.power_levels/"
        status, levels = gw.request("GET", path, token=owner)
        assert status == 200 and levels["users_default"] == 50, levels
        levels["users_default"] = 0  # the old rooms' default
        status, body = gw.request("PUT", path, levels, token=owner)
        assert status == 200, body
    finally:
        assert gw.stop() == 0, gw.read_log()
    conn = sqlite3.connect(gw.data_dir / DATABASE_FILE)
    try:  # back to the schemas from before the household (core 3, mqtt 2)
        conn.execute("ALTER TABLE users DROP COLUMN household")
        conn.execute("DROP TABLE mqtt_household_upgrade")
        conn.execute("UPDATE schema_versions SET version = 3 WHERE component = 'core'")
        conn.execute("UPDATE schema_versions SET version = 2 WHERE component = 'mqtt'")
        conn.commit()
    finally:
        conn.close()
    gw.start()
    try:
        other = gw.login("other", PASSWORD)
        assert room_id in joined_rooms(gw, other)  # joined at start-up, before MQTT listens
        status, levels = gw.request("GET", path, token=other)
        assert status == 200 and levels["users_default"] == 50, levels
        client = Paho(gw.mqtt_port, "other", PASSWORD, "other-5", protocol=V5)
        codes: list[int] = []
        client.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
        try:
            client.connect()
            client.subscribe("old/#", 1)
            assert client.get().payload == b"1"  # the old retained reading
            client.publish("old/room/b", b"2", qos=1, retain=True)
            assert codes == [0]
        finally:
            client.disconnect()
        # a deliberate change after the upgrade is not undone at the next start
        status, levels = gw.request("GET", path, token=owner)
        levels["users_default"] = 10
        assert gw.request("PUT", path, levels, token=owner)[0] == 200
    finally:
        assert gw.stop() == 0, gw.read_log()
    gw.start()
    try:
        status, levels = gw.request("GET", path, token=owner)
        assert levels["users_default"] == 10, levels
    finally:
        assert gw.stop() == 0, gw.read_log()
