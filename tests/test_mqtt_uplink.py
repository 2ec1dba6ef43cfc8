"""The uplink ([[mqtt_bridge]]) against a REAL mosquitto as the remote broker: out, in, both (no
echo), catching up in order after the remote was down, TLS with a CA, bad entries refused at start,
`status` showing each bridge. Hubs and clients as a user runs them (the CLI, paho)."""
from __future__ import annotations

import json
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.support.gateway import GatewayProcess, gateway_cli
from tests.support.mosquitto import Mosquitto, make_ca_and_cert
from tests.test_mqtt_peers import Paho

PASSWORD = "pw-uplink-1"
REMOTE_USER, REMOTE_PASSWORD = "garage", "remote-pw"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(data_dir: Path, bridges: list[dict[str, Any]], **top: Any) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {toml_value(v)}" for k, v in {"messages_per_second": 100000.0, "messages_burst": 100000,
                                                     **top}.items()]
    for bridge in bridges:
        lines.append("[[mqtt_bridge]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in bridge.items()]
    (data_dir / "gateway.toml").write_text("\n".join(lines) + "\n")


def bridge(remote: Mosquitto, topics: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "house", "address": [f"127.0.0.1:{remote.port}"], "local_account": "bridge",
            "remote_username": REMOTE_USER, "remote_password": REMOTE_PASSWORD, "restart_timeout": 1,
            "topic": topics, **extra}


@pytest.fixture()
def remote(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto", users={REMOTE_USER: REMOTE_PASSWORD}) as broker:
        yield broker


def start_hub(tmp_path: Path, bridges: list[dict[str, Any]], name: str = "hub", **top: Any) -> GatewayProcess:
    data = tmp_path / name
    shutil.copytree(template_hub(), data)
    write_config(data, bridges, **top)
    gw = GatewayProcess(data)
    gw.start()
    return gw


_TEMPLATE: list[Path] = []


def template_hub() -> Path:
    """A stopped hub with the accounts (made once per module, copied by each test: the accounts
    come before the bridge that names one, and one start per test is enough)."""
    if not _TEMPLATE:
        data = Path(tempfile.mkdtemp(prefix="uplink-template-")) / "hub"
        write_config(data, [])
        with GatewayProcess(data) as gw:
            gw.add_user("bridge", PASSWORD)
            gw.add_user("sensor", PASSWORD)
        (data.parent / "hub.log").unlink(missing_ok=True)
        _TEMPLATE.append(data)
    return _TEMPLATE[0]


def remote_client(remote: Mosquitto, topic: str, protocol: int = mqtt.MQTTv311) -> Paho:
    client = Paho(remote.port, REMOTE_USER, REMOTE_PASSWORD, protocol=protocol)
    client.connect()
    if topic:
        client.subscribe(topic, 1)
    return client


def hub_status(gw: GatewayProcess) -> dict[str, Any]:
    out = gateway_cli("status", "--json", "--data-dir", str(gw.data_dir), check=False)
    return json.loads(out.stdout)


def wait_connected(gw: GatewayProcess, remote_probe: Paho, hub_pub: Paho, topic: str) -> None:
    """The uplink forwards (a probe published on the hub arrives at the remote)."""
    hub_pub.publish(topic, b"probe", qos=1)
    msg = remote_probe.get(timeout=20)
    assert msg.payload == b"probe"


def test_out_messages_reach_the_remote_with_prefixes(tmp_path: Path, remote: Mosquitto) -> None:
    gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "sensors/#", "direction": "out", "qos": 1,
                                               "remote_prefix": "garage/"}])])
    try:
        far = remote_client(remote, "#")
        sensor = Paho(gw.mqtt_port, "sensor", PASSWORD)
        sensor.connect()
        sensor.publish("sensors/garage/temp", b"21.5", qos=1)
        sensor.publish("private/door", b"open", qos=1)  # no rule: stays on the hub
        sensor.publish("sensors/garage/temp", b"21.6", qos=0, retain=True)
        got = [far.get(timeout=20) for _ in range(2)]
        assert [(m.topic, m.payload) for m in got] == [("garage/sensors/garage/temp", b"21.5"),
                                                       ("garage/sensors/garage/temp", b"21.6")]
        # forwarded as retained: a late remote subscriber gets it
        late = remote_client(remote, "garage/sensors/#")
        assert late.get().payload == b"21.6"
        status = hub_status(gw)
        (row,) = status["bridges"]
        assert row["name"] == "house" and row["state"] == "connected"
        assert far.nothing_within(0.5)  # private/door never went out
        sensor.disconnect(), far.disconnect(), late.disconnect()
    finally:
        gw.stop()


@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv50"])
def test_in_messages_become_room_events_of_the_local_account(tmp_path: Path, remote: Mosquitto,
                                                             protocol: str) -> None:
    gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "cmd/#", "direction": "in", "qos": 1,
                                               "local_prefix": "house/"}], protocol=protocol)])
    try:
        far = remote_client(remote, "")
        # the bridge subscribed once it is connected: publish retained so an early one is not lost
        local = Paho(gw.mqtt_port, "bridge", PASSWORD)
        local.connect()
        local.subscribe("house/#", 1)
        far.publish("cmd/light", b"ON", qos=1, retain=True)
        msg = local.get(timeout=20)
        assert (msg.topic, msg.payload) == ("house/cmd/light", b"ON")
        far.publish("cmd/light", b"OFF", qos=1)
        msg = local.get(timeout=20)
        assert (msg.topic, msg.payload) == ("house/cmd/light", b"OFF")
        # a room event of the local account, readable over the Matrix API
        token = gw.login("bridge", PASSWORD)
        rooms = gw.request("GET", "/_matrix/client/v3/joined_rooms", token=token)[1]["joined_rooms"]
        bodies = []
        for room_id in rooms:
            chunk = gw.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20",
                               token=token)[1]["chunk"]
            bodies += [(e["sender"], e["content"].get("body")) for e in chunk if e["type"] == "m.room.message"]
        assert ("@bridge:localhost", "house/cmd/light: OFF") in bodies
        local.disconnect(), far.disconnect()
    finally:
        gw.stop()


@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv50"])
def test_both_directions_without_echo_or_duplicates(tmp_path: Path, remote: Mosquitto, protocol: str) -> None:
    gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "shared/#", "direction": "both", "qos": 1}],
                                     protocol=protocol)])
    try:
        far = remote_client(remote, "shared/#")
        local = Paho(gw.mqtt_port, "bridge", PASSWORD)
        local.connect()
        local.subscribe("shared/#", 1)
        wait_connected(gw, far, local, "shared/probe")
        assert local.get().payload == b"probe"  # the hub's own delivery of the probe, once
        local.publish("shared/from-hub", b"h1", qos=1)
        far.publish("shared/from-remote", b"r1", qos=1)
        far_got = [far.get(timeout=20) for _ in range(2)]  # its own r1 (mosquitto echoes) and h1
        local_got = [local.get(timeout=20) for _ in range(2)]  # h1 (its own) and r1
        assert sorted(m.payload for m in far_got) == [b"h1", b"r1"]
        assert sorted(m.payload for m in local_got) == [b"h1", b"r1"]
        # no second copy either way (an echo loop would keep them coming)
        assert local.nothing_within(1.5) and far.nothing_within(0.2)
        local.disconnect(), far.disconnect()
    finally:
        gw.stop()


def test_remote_down_then_back_gets_every_reading_in_order(tmp_path: Path) -> None:
    remote = Mosquitto(tmp_path / "mosquitto", users={REMOTE_USER: REMOTE_PASSWORD}, persistent=True).start()
    gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "meter/#", "direction": "out", "qos": 1}])])
    try:
        # a persistent subscriber on the remote: what the uplink sends before it is back is kept for it
        far = Paho(remote.port, REMOTE_USER, REMOTE_PASSWORD, client_id="far", clean=False)
        far.connect()
        far.subscribe("meter/#", 1)
        sensor = Paho(gw.mqtt_port, "sensor", PASSWORD)
        sensor.connect()
        wait_connected(gw, far, sensor, "meter/probe")
        far.disconnect()
        remote.stop()
        for i in range(1000):
            sensor.client.publish("meter/kwh", str(i).encode(), 1)
        sensor.publish("meter/kwh", b"last", qos=1)  # all stored (acknowledged in order) by now
        status = hub_status(gw)["bridges"][0]
        assert status["state"] in ("retrying", "connecting") and status["backlog"] >= 1001
        remote.start()  # same port, the subscriber's session restored
        far = Paho(remote.port, REMOTE_USER, REMOTE_PASSWORD, client_id="far", clean=False)
        far.connect()
        got = []
        while True:
            msg = far.get(timeout=30)
            got.append(msg.payload)
            if msg.payload == b"last":
                break
        numbers = [int(p) for p in got if p not in (b"last", b"probe")]
        # every one, in order (at least once: a batch cut by a disconnect would come again, in order)
        assert numbers == list(range(1000)), numbers[:20]
        # the position is saved once the remote acknowledged: `status` shows no backlog
        deadline = time.monotonic() + 10
        while hub_status(gw)["bridges"][0]["backlog"] and time.monotonic() < deadline:
            pass
        assert hub_status(gw)["bridges"][0]["backlog"] == 0
        sensor.disconnect(), far.disconnect()
    finally:
        gw.stop()
        remote.stop()


def test_tls_to_a_remote_with_a_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    with Mosquitto(tmp_path / "tls-mosquitto", users={REMOTE_USER: REMOTE_PASSWORD}, tls=(ca, cert, key)) as remote:
        gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "t/#", "direction": "out", "qos": 1}],
                                         address=[f"localhost:{remote.port}"], tls_ca_file=str(ca))])
        try:
            far = Paho(remote.port, REMOTE_USER, REMOTE_PASSWORD, tls_ca=str(ca))
            far.client.tls_insecure_set(True)  # paho connects to 127.0.0.1; the cert says localhost too
            far.connect()
            far.subscribe("t/#", 1)
            sensor = Paho(gw.mqtt_port, "sensor", PASSWORD)
            sensor.connect()
            sensor.publish("t/x", b"secret", qos=1)
            assert far.get(timeout=20).payload == b"secret"
            sensor.disconnect(), far.disconnect()
        finally:
            gw.stop()


def test_tls_refuses_a_remote_the_ca_did_not_sign(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    other_ca, _, _ = make_ca_and_cert(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
    with Mosquitto(tmp_path / "tls-mosquitto", users={REMOTE_USER: REMOTE_PASSWORD}, tls=(ca, cert, key)) as remote:
        gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "t/#", "direction": "out", "qos": 1}],
                                         address=[f"localhost:{remote.port}"], tls_ca_file=str(other_ca))])
        try:
            sensor = Paho(gw.mqtt_port, "sensor", PASSWORD)
            sensor.connect()  # local traffic is not held up by the failing uplink
            sensor.subscribe("t/#", 1)
            sensor.publish("t/x", b"kept", qos=1)
            assert sensor.get().payload == b"kept"
            row = hub_status(gw)["bridges"][0]
            assert row["state"] in ("retrying", "connecting")
            sensor.disconnect()
        finally:
            gw.stop()
        assert "CERTIFICATE_VERIFY_FAILED" in gw.read_log() or "certificate verify failed" in gw.read_log()


@pytest.mark.parametrize("entry, named", [
    ({"name": "b", "address": "h:1883", "topic": [{"pattern": "a/#", "direction": "sideways"}]},
     "mqtt_bridge[0] (b).topic[0].direction"),
    ({"name": "b", "address": "h:99999", "topic": [{"pattern": "a/#"}]}, "mqtt_bridge[0] (b).address"),
    ({"name": "b", "topic": [{"pattern": "a/#"}]}, "mqtt_bridge[0] (b).address is missing"),
    ({"name": "b", "address": "h", "topic": [{"pattern": "a/#", "qos": 3}]}, "mqtt_bridge[0] (b).topic[0].qos"),
    ({"name": "b", "address": "h", "topic": [{"pattern": "a/#+"}]}, "mqtt_bridge[0] (b).topic[0].pattern"),
    ({"name": "b", "address": "h", "topic": [{"pattern": "a/#", "direction": "in"}]},
     "mqtt_bridge[0] (b).local_account is missing"),
    ({"name": "b", "address": "h", "protocol": "mqttv4", "topic": [{"pattern": "a/#"}]},
     "mqtt_bridge[0] (b).protocol"),
    ({"name": "b", "address": "h", "tls_ca_file": "/nonexistent/ca.pem", "topic": [{"pattern": "a/#"}]},
     "mqtt_bridge[0] (b).tls_ca_file"),
    ({"name": "b", "address": "h", "remote_pasword": "x", "topic": [{"pattern": "a/#"}]}, "'remote_pasword'"),
])
def test_bad_bridge_entries_stop_the_hub_naming_the_key(tmp_path: Path, entry: dict[str, Any], named: str) -> None:
    data = tmp_path / "hub"
    write_config(data, [entry])
    proc = gateway_cli("run", "--data-dir", str(data), check=False, timeout=30)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr


def test_a_bridge_naming_a_missing_local_account_stops_the_hub(tmp_path: Path, remote: Mosquitto) -> None:
    data = tmp_path / "hub"
    write_config(data, [bridge(remote, [{"pattern": "a/#", "direction": "in"}], local_account="nobody")])
    gw = GatewayProcess(data)
    with pytest.raises(RuntimeError, match="local_account 'nobody' does not exist"):
        gw.start()


class FakeRemote:
    """A 'broker' on a raw socket that answers CONNECT and SUBSCRIBE, then sends what a test
    gives it (garbage, a flood): what a broken or hostile remote does to the uplink."""

    def __init__(self, after_subscribe: Callable[[socket.socket], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.after_subscribe = after_subscribe
        self.connections: queue.Queue[socket.socket] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)  # CONNECT
            conn.sendall(bytes([0x20, 2, 0, 0]))  # CONNACK accepted
            data = conn.recv(65536)  # SUBSCRIBE: packet id at bytes 2-3 (short remaining length)
            conn.sendall(bytes([0x90, 3, data[2], data[3], 0]))  # SUBACK QoS 0
            self.connections.put(conn)
            self.after_subscribe(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


def fake_bridge(port: int) -> dict[str, Any]:
    return {"name": "evil", "address": [f"127.0.0.1:{port}"], "local_account": "bridge", "restart_timeout": 1,
            "topic": [{"pattern": "x/#", "direction": "both", "qos": 0}]}


def local_roundtrip(gw: GatewayProcess, topic: str) -> None:
    sensor = Paho(gw.mqtt_port, "sensor", PASSWORD)
    sensor.connect()
    sensor.subscribe(topic, 1)
    sensor.publish(topic, b"still fine", qos=1)
    assert sensor.get(timeout=5).payload == b"still fine"
    sensor.disconnect()


def test_a_remote_sending_malformed_packets_is_cut_off(tmp_path: Path) -> None:
    def garbage(conn: socket.socket) -> None:
        conn.sendall(b"\xff\xff\xff\xff\xff garbage")

    evil = FakeRemote(garbage)
    gw = start_hub(tmp_path, [fake_bridge(evil.port)])
    try:
        first = evil.connections.get(timeout=20)
        assert first.recv(100) == b""  # the uplink closed the connection
        second = evil.connections.get(timeout=20)  # and came back after its backoff
        assert second is not first
        local_roundtrip(gw, "local/check")
    finally:
        gw.stop()
        evil.close()
    assert "malformed packet from the remote" in gw.read_log()


def test_a_flooding_remote_does_not_hold_up_local_clients(tmp_path: Path) -> None:
    stop = threading.Event()
    one = bytes([0x30, 10, 0, 3]) + b"x/f" + b"flood"  # PUBLISH QoS 0 x/f "flood"

    def flood(conn: socket.socket) -> None:
        burst = one * 2000
        while not stop.is_set():
            conn.sendall(burst)

    evil = FakeRemote(flood)
    # the local account of the bridge has the hub's default message rate: the flood is paced
    # (the socket is not read meanwhile: TCP backpressure on the remote, nothing queued here)
    gw = start_hub(tmp_path, [fake_bridge(evil.port)], messages_per_second=50.0, messages_burst=200)
    try:
        evil.connections.get(timeout=20)
        started = time.monotonic()
        local_roundtrip(gw, "local/check")
        assert time.monotonic() - started < 5
        assert hub_status(gw)["bridges"][0]["state"] == "connected", gw.read_log()
    finally:
        stop.set()
        gw.stop()
        evil.close()


def test_a_refusing_remote_is_retried_with_backoff_and_local_traffic_flows(tmp_path: Path, remote: Mosquitto) -> None:
    gw = start_hub(tmp_path, [bridge(remote, [{"pattern": "t/#", "direction": "out", "qos": 1}],
                                     remote_password="wrong")])
    try:
        local_roundtrip(gw, "t/local")
        row = hub_status(gw)["bridges"][0]
        assert row["state"] in ("retrying", "connecting")
    finally:
        gw.stop()
    assert "refused by the remote (CONNACK code 0x05)" in gw.read_log()
