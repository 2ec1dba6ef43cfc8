"""Per-account room quota (issue 20: one account made 299 rooms while fuzzing), against the hub
started with its CLI: `max_rooms_per_user` from the config file, urllib over HTTP, paho for the
rooms the MQTT broker makes for an account's topics (they count too)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho, mosquitto_pub

LIMIT = 3
CONTACT = "mailto:hub-admin@example.org"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = Path(tmp_path_factory.mktemp("quota")) / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "gateway.toml").write_text(f'max_rooms_per_user = {LIMIT}\nadmin_contact = "{CONTACT}"\n')
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("root", PASSWORD, admin=True)
    gw.add_user("carol", PASSWORD)
    gw.add_user("dave", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def create_room(hub: GatewayProcess, token: str, **body: Any) -> tuple[int, Any]:
    return hub.request("POST", "/_matrix/client/v3/createRoom", body, token=token)


def joined(hub: GatewayProcess, token: str) -> list[str]:
    status, body = hub.request("GET", "/_matrix/client/v3/joined_rooms", token=token)
    assert status == 200, body
    return list(body["joined_rooms"])


def assert_refused(status: int, body: Any) -> None:
    assert status == 403, body
    assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED", body
    assert body["admin_contact"] == CONTACT


def test_an_account_creates_at_most_its_quota_of_rooms_and_a_restart_remembers(hub: GatewayProcess) -> None:
    carol = hub.login("carol", PASSWORD)
    for i in range(LIMIT):
        status, body = create_room(hub, carol, name=f"room {i}")
        assert status == 200, body
    status, body = create_room(hub, carol, name="one too many", room_alias_name="carols-extra")
    assert_refused(status, body)
    assert len(joined(hub, carol)) == LIMIT  # nothing stored: no room...
    status, _ = hub.request("GET", "/_matrix/client/v3/directory/room/%23carols-extra%3Alocalhost")
    assert status == 404  # ...and no alias
    # Leaving a room frees nothing: it still exists on the hub.
    first = joined(hub, carol)[0]
    status, _ = hub.request("POST", f"/_matrix/client/v3/rooms/{first}/leave", {}, token=carol)
    assert status == 200
    assert_refused(*create_room(hub, carol))
    # The count is the store's, not the process's.
    hub.stop()
    hub.start()
    carol = hub.login("carol", PASSWORD)
    assert_refused(*create_room(hub, carol))
    # Another account has its own quota; a hub admin has none.
    root = hub.login("root", PASSWORD)
    for _ in range(LIMIT + 2):
        status, body = create_room(hub, root)
        assert status == 200, body


def test_rooms_the_broker_makes_for_an_accounts_topics_count(hub: GatewayProcess) -> None:
    dave = hub.login("dave", PASSWORD)
    for tree in ("quota/one", "quota/two"):
        mosquitto_pub(hub.mqtt_port, "dave", PASSWORD, f"{tree}/x", "1", 1)
    status, body = create_room(hub, dave)
    assert status == 200, body
    assert_refused(*create_room(hub, dave))
    # A publish needing a new room is refused with MQTT 5's "quota exceeded"; known trees still work.
    pub = Paho(hub.mqtt_port, "dave", PASSWORD, "quota-pub", protocol=mqtt.MQTTv5)
    codes: list[int] = []
    pub.client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    try:
        assert pub.connect()[1] == 0
        pub.publish("quota/three/x", b"1", qos=1)
        pub.publish("quota/one/x", b"2", qos=1)
    finally:
        pub.disconnect()
    assert codes == [0x97, 0]
    status, _ = hub.request("GET", "/_matrix/client/v3/directory/room/%23mqtt%2Fquota%2Fthree%3Alocalhost")
    assert status == 404
    assert len(joined(hub, dave)) == LIMIT


def test_the_settings_are_written_checked_and_read_back(tmp_path: Path) -> None:
    import tomllib

    from gateway.config import ConfigError, GatewayConfig, load_config, render, validate

    rendered = tomllib.loads(render(GatewayConfig(admin_contact=CONTACT)))
    assert (rendered["max_rooms_per_user"], rendered["admin_contact"]) == (1000, CONTACT)
    assert validate({"max_rooms_per_user": 0}, "t") == {"max_rooms_per_user": 0}  # 0: no limit
    for bad in ({"max_rooms_per_user": -1}, {"max_rooms_per_user": "10"}, {"admin_contact": 'a"b'}):
        with pytest.raises(ConfigError):
            validate(bad, "t")
    (tmp_path / "gateway.toml").write_text("max_rooms_per_user = 7\n")
    assert load_config(tmp_path, None, {}, create=False).max_rooms_per_user == 7
