"""Who may route MQTT topics into which room (issue 20, L3 and L4), end to end: the hub started
with its CLI, paho-mqtt and mosquitto clients on one side, urllib as the Matrix client on the other.

L4: the alias namespace the default rule routes by (#mqtt/...) belongs to the broker and hub
admins: nobody else can create or delete an alias there, and the broker does not route by one it
did not make. L3: a binding state event counts only when its sender is a hub admin or owns the
topic tree (docs/mqtt.md): mallory can neither take alice's topic nor bind `#`.
"""
from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho, mosquitto_pub

V5 = mqtt.MQTTv5
SERVER = "localhost"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A hub with an admin (root), a household member (alice) and a guest (mallory: household
    members share the broker's rooms, issue 16; a guest is the one these rules keep out)."""
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("acl")) / "data")
    gw.start()
    gw.add_user("root", PASSWORD, admin=True)
    gw.add_user("alice", PASSWORD)
    gw.add_user("mallory", PASSWORD, guest=True)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def tokens(hub: GatewayProcess) -> dict[str, str]:
    return {name: hub.login(name, PASSWORD) for name in ("root", "alice", "mallory")}


def create_room(hub: GatewayProcess, token: str, **body: Any) -> str:
    status, answer = hub.request("POST", "/_matrix/client/v3/createRoom", body, token=token)
    assert status == 200, answer
    return str(answer["room_id"])


def alias_target(hub: GatewayProcess, alias: str) -> str | None:
    status, body = hub.request("GET", f"/_matrix/client/v3/directory/room/{q(alias)}")
    if status == 404:
        return None
    assert status == 200, body
    return str(body["room_id"])


def mqtt_messages(hub: GatewayProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=50", token=token)
    assert status == 200, body
    return [e["content"]["mqtt"] for e in body["chunk"]
            if e["type"] == "m.room.message" and e["content"].get("msgtype") == "org.matrix_gateway.mqtt"]


def creator_of(hub: GatewayProcess, token: str, room_id: str) -> str:
    status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state", token=token)
    assert status == 200, body
    return next(str(e["sender"]) for e in body if e["type"] == "m.room.create")


def publish_v5(hub: GatewayProcess, user: str, topic: str, payload: bytes, client_id: str) -> int:
    """One QoS 1 publish with MQTT 5; the PUBACK's reason code."""
    client = Paho(hub.mqtt_port, user, PASSWORD, client_id, protocol=V5)
    codes: list[int] = []
    client.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    try:
        assert client.connect()[1] == 0
        client.publish(topic, payload, qos=1)
    finally:
        client.disconnect()
    assert codes, "no PUBACK"
    return codes[0]


# -- L4: the #mqtt/ alias namespace -----------------------------------------------------------------

def test_a_user_cannot_make_or_delete_an_alias_in_the_brokers_namespace(hub: GatewayProcess,
                                                                        tokens: dict[str, str]) -> None:
    mallory = tokens["mallory"]
    room = create_room(hub, mallory)
    alias = f"#mqtt/home/garage:{SERVER}"
    status, body = hub.request("PUT", f"/_matrix/client/v3/directory/room/{q(alias)}", {"room_id": room},
                               token=mallory)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
    assert alias_target(hub, alias) is None
    status, before = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=mallory)
    status, body = hub.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "mqtt/home/garage"},
                               token=mallory)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
    status, after = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=mallory)
    assert after == before  # no room was made
    assert alias_target(hub, alias) is None
    # Only that namespace: her own aliases elsewhere are fine.
    status, body = hub.request("PUT", f"/_matrix/client/v3/directory/room/{q('#mallorys-room:' + SERVER)}",
                               {"room_id": room}, token=mallory)
    assert status == 200, body
    # A hub admin may make and delete aliases there.
    admin_alias = f"#mqtt/admin/made:{SERVER}"
    admin_room = create_room(hub, tokens["root"])
    status, body = hub.request("PUT", f"/_matrix/client/v3/directory/room/{q(admin_alias)}",
                               {"room_id": admin_room}, token=tokens["root"])
    assert status == 200, body
    status, body = hub.request("DELETE", f"/_matrix/client/v3/directory/room/{q(admin_alias)}", token=tokens["root"])
    assert status == 200, body


def test_alices_first_publish_lands_in_a_room_the_broker_made(hub: GatewayProcess, tokens: dict[str, str]) -> None:
    """The squat of issue 20: mallory points #mqtt/home/shed at her room (refused now); alice's
    first publish to home/shed/door then lands in a room the broker made for alice."""
    mallory = tokens["mallory"]
    squat = create_room(hub, mallory)
    alias = f"#mqtt/home/shed:{SERVER}"
    status, _ = hub.request("PUT", f"/_matrix/client/v3/directory/room/{q(alias)}", {"room_id": squat}, token=mallory)
    assert status == 400
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "home/shed/door", "open", 1)
    room = alias_target(hub, alias)
    assert room is not None and room != squat
    assert creator_of(hub, tokens["alice"], room) == f"@alice:{SERVER}"
    assert [m["topic"] for m in mqtt_messages(hub, tokens["alice"], room)] == ["home/shed/door"]
    assert mqtt_messages(hub, mallory, squat) == []
    # Nor can mallory take the alias away from the broker's room.
    status, body = hub.request("DELETE", f"/_matrix/client/v3/directory/room/{q(alias)}", token=mallory)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
    assert alias_target(hub, alias) == room


def test_the_broker_does_not_route_by_an_alias_it_did_not_make(hub: GatewayProcess, tokens: dict[str, str]) -> None:
    """An alias in the namespace made behind the broker's back (as one made before it was
    reserved would be, had the upgrade not adopted it) is not routed to: alice's publish is
    refused (0x87), nothing lands in mallory's room; once an admin deletes the alias, the broker
    makes alice's room."""
    mallory = tokens["mallory"]
    squat = create_room(hub, mallory)
    alias = f"#mqtt/home/attic:{SERVER}"
    db = sqlite3.connect(hub.data_dir / "homeserver.db", timeout=10)
    with db:
        db.execute("INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)",
                   (alias, squat, f"@mallory:{SERVER}"))
    db.close()
    assert alias_target(hub, alias) == squat
    assert publish_v5(hub, "alice", "home/attic/light", b"on", "attic-1") == 0x87
    assert mqtt_messages(hub, mallory, squat) == []
    assert hub.log_path().read_text().count(f"not routing to {alias}") == 1
    status, body = hub.request("DELETE", f"/_matrix/client/v3/directory/room/{q(alias)}", token=tokens["root"])
    assert status == 200, body
    assert publish_v5(hub, "alice", "home/attic/light", b"on", "attic-2") == 0
    room = alias_target(hub, alias)
    assert room is not None and room != squat
    assert [m["topic"] for m in mqtt_messages(hub, tokens["alice"], room)] == ["home/attic/light"]
    assert mqtt_messages(hub, mallory, squat) == []


def test_aliases_made_before_the_namespace_was_reserved_are_adopted_by_the_upgrade(tmp_path: Path) -> None:
    """The upgrade cannot tell a default room's alias from a squatter's made while the namespace
    was open: it adopts every existing #mqtt/ alias (docs/mqtt.md says how to remove a squat), so
    an upgraded hub keeps routing its topics; other aliases are not the broker's."""
    from matrix_core.store.database import open_sync
    from matrix_core.store.migrations import migrate

    conn = open_sync(tmp_path / "db.sqlite")
    conn.execute("DROP TABLE mqtt_default_rooms")  # back to the broker's schema version 1
    conn.execute("UPDATE schema_versions SET version = 1 WHERE component = 'mqtt'")
    conn.executemany("INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)",
                     [("#mqtt/home/kitchen:hub", "!k:hub", "@alice:hub"), ("#kitchen:hub", "!o:hub", "@bob:hub"),
                      ("#MQTT/x:hub", "!x:hub", "@bob:hub")])
    migrate(conn)
    rows = conn.execute("SELECT alias, owner, room_id FROM mqtt_default_rooms").fetchall()
    assert rows == [("#mqtt/home/kitchen:hub", "@alice:hub", "!k:hub")]


# -- L3: who may bind topics to rooms ---------------------------------------------------------------

def bind(hub: GatewayProcess, token: str, room_id: str, topic_filter: str) -> None:
    """A binding state event in a room, as Element would send it (the sender may send state there)."""
    status, body = hub.request(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/state/org.matrix_gateway.mqtt.binding/{q(topic_filter)}",
        {"topic_filter": topic_filter}, token=token)
    assert status == 200, body


def join(hub: GatewayProcess, inviter: str, invitee: str, invitee_token: str, room_id: str) -> None:
    status, body = hub.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
                               {"user_id": f"@{invitee}:{SERVER}"}, token=inviter)
    assert status == 200, body
    status, body = hub.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/join", {}, token=invitee_token)
    assert status == 200, body


def test_mallory_cannot_hijack_alices_topic(hub: GatewayProcess, tokens: dict[str, str]) -> None:
    """Issue 20's hijack: mallory binds alice's sensor topic and actuator topic in her own room.
    alice's readings still go to alice's room, and mallory's publish to the actuator is refused
    and reaches nobody."""
    alice, mallory = tokens["alice"], tokens["mallory"]
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "flat/kitchen/temp", "t=20", 1)
    kitchen = alias_target(hub, f"#mqtt/flat/kitchen:{SERVER}")
    assert kitchen is not None
    actuator = Paho(hub.mqtt_port, "alice", PASSWORD, "kitchen-light")
    try:
        assert actuator.connect()[1] == 0
        assert [c.value for c in actuator.subscribe("flat/kitchen/light/set", 1)] == [1]
        trap = create_room(hub, mallory)
        bind(hub, mallory, trap, "flat/kitchen/temp")
        bind(hub, mallory, trap, "flat/kitchen/light/set")
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "flat/kitchen/temp", "t=21", 1)
        assert mqtt_messages(hub, mallory, trap) == []
        readings = [m["payload"]["text"] for m in mqtt_messages(hub, alice, kitchen) if m["topic"] == "flat/kitchen/temp"]
        assert readings == ["t=21", "t=20"]
        assert publish_v5(hub, "mallory", "flat/kitchen/light/set", b"on", "mallory-light") == 0x87
        # alice's own command still reaches her actuator: the first message it gets is hers.
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "flat/kitchen/light/set", "off", 1)
        got = actuator.get()
        assert (got.topic, got.payload) == ("flat/kitchen/light/set", b"off")
    finally:
        actuator.disconnect()
    assert "binding of 'flat/kitchen/temp'" in hub.log_path().read_text()


def test_binding_hash_denies_nobody(hub: GatewayProcess, tokens: dict[str, str]) -> None:
    """Issue 20's denial of service: mallory binds `#` in a room alice is not in. alice's new
    topics are still accepted (PUBACK 0) and land in rooms the broker makes for her."""
    mallory = tokens["mallory"]
    everything = create_room(hub, mallory)
    bind(hub, mallory, everything, "#")
    bind(hub, mallory, everything, "+/+/moisture")
    assert publish_v5(hub, "alice", "garden/bed1/moisture", b"41", "garden-1") == 0
    room = alias_target(hub, f"#mqtt/garden/bed1:{SERVER}")
    assert room is not None and room != everything
    assert creator_of(hub, tokens["alice"], room) == f"@alice:{SERVER}"
    assert [m["topic"] for m in mqtt_messages(hub, tokens["alice"], room)] == ["garden/bed1/moisture"]
    assert mqtt_messages(hub, mallory, everything) == []


def test_an_owner_binds_inside_her_tree_and_an_admin_anywhere(hub: GatewayProcess, tokens: dict[str, str]) -> None:
    """The legitimate bindings still work. alice owns `cellar/freezer` (the broker made its room
    for her) and binds `cellar/freezer/door` to another room of hers; the admin binds a wildcard
    filter across trees (`cellar/+/temp`), which then wins over alice's default room."""
    alice, root = tokens["alice"], tokens["root"]
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "cellar/freezer/power", "on", 1)
    freezer = alias_target(hub, f"#mqtt/cellar/freezer:{SERVER}")
    assert freezer is not None
    door_room = create_room(hub, alice)
    bind(hub, alice, door_room, "cellar/freezer/door")
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "cellar-sub")
    try:
        assert sub.connect()[1] == 0
        sub.subscribe("cellar/#", 1)
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "cellar/freezer/door", "open", 1)
        got = sub.get()
        assert (got.topic, got.payload) == ("cellar/freezer/door", b"open")
        assert [m["topic"] for m in mqtt_messages(hub, alice, door_room)] == ["cellar/freezer/door"]
        # the admin's binding of a filter spanning trees, in a room alice is in
        temps = create_room(hub, root)
        join(hub, root, "alice", alice, temps)
        bind(hub, root, temps, "cellar/+/temp")
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "cellar/freezer/temp", "-18", 1)
        got = sub.get()
        assert (got.topic, got.payload) == ("cellar/freezer/temp", b"-18")
        assert [m["topic"] for m in mqtt_messages(hub, alice, temps)] == ["cellar/freezer/temp"]
        assert [m["topic"] for m in mqtt_messages(hub, alice, freezer)] == ["cellar/freezer/power"]
    finally:
        sub.disconnect()
