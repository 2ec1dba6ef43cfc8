"""The optional MQTT listeners and subscription deny rules, end to end: one hub started with its CLI
with `mqtt_tls_enabled`, `mqtt_ws_enabled` and `mqtt_deny_subscribe` in gateway.toml; paho-mqtt
over TLS and over WebSockets (3.1.1 and 5.0), the mosquitto clients over TLS, raw WebSocket
frames (aiohttp's client) for fragmentation and bad input, and an HTTP Matrix client."""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, free_port, gateway_cli
from tests.test_mqtt_broker import room_events, send_text
from tests.test_mqtt_peers import WAIT, MosquittoSub, Paho, RawClient, mosquitto_pub

V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311
WS_PATH = "/mqtt"


class Hub(GatewayProcess):
    """A hub with the TLS and WebSocket listeners on free ports and one deny rule."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.tls_port = free_port()
        self.ws_port = free_port()
        self.wss_port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "gateway.toml").write_text(
            f"mqtt_tls_enabled = true\nmqtt_tls_port = {self.tls_port}\n"
            f"mqtt_ws_enabled = true\nmqtt_ws_port = {self.ws_port}\nmqtt_ws_path = \"{WS_PATH}\"\n"
            f"mqtt_wss_enabled = true\nmqtt_wss_port = {self.wss_port}\n"
            'mqtt_deny_subscribe = ["test/nosubscribe", "vault/#"]\n'
            "mqtt_max_packet_size = 65536\n")  # the oversize test's figures (the default is 256 KiB)

    @property
    def ca(self) -> str:
        return str(self.data_dir / "mqtt.crt")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    gw = Hub(Path(tmp_path_factory.mktemp("hub")) / "data")
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    gw.add_user("bob", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def token(hub: Hub) -> str:
    return hub.login("alice", PASSWORD)


# -- TLS ------------------------------------------------------------------------------------------


def test_ready_line_names_the_listeners_and_the_key_stays_private(hub: Hub) -> None:
    ready = hub.stdout_lines[-1]
    assert f"mqtts=mqtts://127.0.0.1:{hub.tls_port}" in ready
    assert f"mqtt-ws=ws://127.0.0.1:{hub.ws_port}{WS_PATH}" in ready
    assert f"mqtt-wss=wss://127.0.0.1:{hub.wss_port}{WS_PATH}" in ready
    key = hub.data_dir / "mqtt.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    log = hub.log_path().read_text()
    secret_line = key.read_text().splitlines()[1]
    cert_line = Path(hub.ca).read_text().splitlines()[1]
    assert "BEGIN" not in log and secret_line not in log and cert_line not in log


def test_paho_over_tls_verifies_the_hub_and_publishes(hub: Hub, token: str) -> None:
    client = Paho(hub.tls_port, "alice", PASSWORD, "tls-pub", tls_ca=hub.ca)
    try:
        assert client.connect()[1] == 0
        assert client.client.socket().version() in ("TLSv1.2", "TLSv1.3")
        client.subscribe("tls/room/#", 1)
        client.publish("tls/room/t", b'{"t": 1}', qos=1)
        got = client.get()
        assert (got.topic, got.payload) == ("tls/room/t", b'{"t": 1}')
    finally:
        client.disconnect()
    events = room_events(hub, token, "#mqtt/tls/room:localhost")
    assert [e["content"]["mqtt"]["topic"] for e in events if e["type"] == "m.room.message"] == ["tls/room/t"]
    # Another CA (the federation listener's own self-signed certificate) does not vouch for it.
    stranger = Paho(hub.tls_port, "alice", PASSWORD, "tls-wrong-ca", tls_ca=str(hub.data_dir / "federation.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect()


def test_mosquitto_clients_over_tls(hub: Hub) -> None:
    sub = MosquittoSub(hub.tls_port, "alice", PASSWORD, "mtls/room/#", 1, "--cafile", hub.ca)
    mosquitto_pub(hub.tls_port, "alice", PASSWORD, "mtls/room/x", "over tls", 1, "--insecure", "--cafile", hub.ca)
    assert sub.wait() == ["mtls/room/x over tls"]


def test_plain_mqtt_on_the_tls_port_gets_no_connack(hub: Hub) -> None:
    raw = RawClient(hub.tls_port)
    try:
        raw.send(connect_packet("plain-on-tls", "alice", PASSWORD))
        assert b"\x20\x02" not in raw.recv_until_closed()
    finally:
        raw.close()


# -- WebSocket ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_paho_websockets_publish_and_receive_matrix_events(hub: Hub, token: str, protocol: int) -> None:
    tag = "v5" if protocol == V5 else "v3"
    room = f"#mqtt/ws{tag}/room:localhost"
    client = Paho(hub.ws_port, "alice", PASSWORD, f"ws-{tag}", protocol=protocol, transport="websockets")
    try:
        assert client.connect()[1] == 0
        client.subscribe(f"ws{tag}/room/#", 1)
        client.publish(f"ws{tag}/room/temp", b"21.5", qos=1)
        echo = client.get()
        assert (echo.topic, echo.payload, echo.qos) == (f"ws{tag}/room/temp", b"21.5", 1)
        events = [e for e in room_events(hub, token, room) if e["type"] == "m.room.message"]
        assert events[0]["content"]["mqtt"]["topic"] == f"ws{tag}/room/temp"
        assert events[0]["sender"] == "@alice:localhost"
        event_id = send_text(hub, token, room, "from http")
        got = client.get()
        assert got.topic == f"ws{tag}/room"
        doc = json.loads(got.payload)
        assert (doc["event_id"], doc["content"]["body"]) == (event_id, "from http")
    finally:
        client.disconnect()


def test_paho_over_secure_websockets_verifies_the_hub(hub: Hub, token: str) -> None:
    """wss: the mqtts certificate, verified by the device; plain ws on that port gets nothing."""
    client = Paho(hub.wss_port, "alice", PASSWORD, "wss-pub", protocol=V5, transport="websockets", tls_ca=hub.ca)
    try:
        assert client.connect()[1] == 0
        assert client.client.socket()._socket.version() in ("TLSv1.2", "TLSv1.3")  # under the WebSocket
        client.subscribe("wss/room/#", 1)
        client.publish("wss/room/t", b"over wss", qos=1)
        got = client.get()
        assert (got.topic, got.payload) == ("wss/room/t", b"over wss")
    finally:
        client.disconnect()
    events = room_events(hub, token, "#mqtt/wss/room:localhost")
    assert [e["content"]["mqtt"]["topic"] for e in events if e["type"] == "m.room.message"] == ["wss/room/t"]
    plain = Paho(hub.wss_port, "alice", PASSWORD, "ws-on-wss", transport="websockets")
    with pytest.raises((OSError, TimeoutError, ConnectionError, AssertionError)):
        assert plain.connect()[1] == 0


def test_websocket_bad_credentials_are_refused(hub: Hub) -> None:
    c3 = Paho(hub.ws_port, "alice", "wrong password", "ws-bad3", transport="websockets")
    rc3 = c3.connect()[1]
    assert rc3.is_failure and rc3.getName() == "Bad user name or password", rc3
    c3.disconnect()
    c5 = Paho(hub.ws_port, "alice", "wrong password", "ws-bad5", protocol=V5, transport="websockets")
    assert c5.connect()[1] == 0x86
    c5.disconnect()
    anon = Paho(hub.ws_port, None, None, "ws-anon", protocol=V5, transport="websockets")
    assert anon.connect()[1] == 0x87
    anon.disconnect()


def _mqtt_str(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, user: str, password: str) -> bytes:
    body = _mqtt_str("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += _mqtt_str(client_id) + _mqtt_str(user) + _mqtt_str(password)
    return bytes([0x10, len(body)]) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + _mqtt_str(topic_filter) + bytes([qos])
    return bytes([0x82, len(body)]) + body


def ws_session(hub: Hub, steps: list[bytes | str | int], protocols: tuple[str, ...] = ("mqtt",)
               ) -> tuple[bytes, int | None]:
    """On a raw WebSocket: send bytes (binary frame) or str (text frame); an int waits until that
    many bytes have come back in total (or the close). Returns (bytes received, close code)."""
    async def receive_until(ws: aiohttp.ClientWebSocketResponse, got: bytearray, total: int) -> None:
        while len(got) < total:
            msg = await ws.receive(timeout=WAIT)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                return
            got += msg.data

    async def run() -> tuple[bytes, int | None]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{hub.ws_port}{WS_PATH}", protocols=protocols,
                                          autoclose=True) as ws:
                assert ws.protocol == "mqtt"
                got = bytearray()
                for step in steps:
                    if isinstance(step, int):
                        await receive_until(ws, got, step)
                    elif isinstance(step, str):
                        await ws.send_str(step)
                    else:
                        await ws.send_bytes(step)
                return bytes(got), ws.close_code
    return asyncio.run(run())


def split_packets(data: bytes) -> list[bytes]:
    """Whole MQTT packets (all short here: one-byte remaining length)."""
    out = []
    while data:
        size = 2 + data[1]
        out.append(data[:size])
        data = data[size:]
    return out


def test_websocket_frames_carry_any_fragmentation(hub: Hub) -> None:
    connect = connect_packet("ws-raw", "alice", PASSWORD)
    subscribe = subscribe_packet(7, "raw/room/#", 1)
    denied = subscribe_packet(8, "vault/a", 1)
    pingreq = b"\xc0\x00"
    # CONNECT cut in three frames; then SUBSCRIBE, a denied SUBSCRIBE and PINGREQ in one frame.
    frames: list[bytes | str] = [connect[:1], connect[1:9], connect[9:], subscribe + denied + pingreq]
    got, _ = ws_session(hub, frames + [4 + 5 + 5 + 2])
    packets = split_packets(got)
    assert packets[0] == b"\x20\x02\x00\x00"  # CONNACK first; PINGRESP may overtake the SUBACKs
    assert sorted(packets[1:]) == [b"\x90\x03\x00\x07\x01", b"\x90\x03\x00\x08\x80", b"\xd0\x00"]


def test_websocket_text_frame_closes_the_connection(hub: Hub) -> None:
    got, code = ws_session(hub, [connect_packet("ws-text", "alice", PASSWORD), 4, "not mqtt", 10])
    assert got == b"\x20\x02\x00\x00"  # the CONNACK, then nothing but the close
    assert code == aiohttp.WSCloseCode.UNSUPPORTED_DATA


def test_websocket_oversize_frames_are_refused(hub: Hub) -> None:
    connect = connect_packet("ws-big", "alice", PASSWORD)
    # A PUBLISH header announcing 70,000 bytes (over mqtt_max_packet_size): DISCONNECT from the codec.
    header = b"\x30" + bytes([0xF0, 0xA2, 0x04])
    got, code = ws_session(hub, [connect, 4, header + b"x" * 100, 10])
    assert got == b"\x20\x02\x00\x00" and code == aiohttp.WSCloseCode.OK  # 3.1.1: no reason code
    # A frame beyond twice the packet limit is refused by the WebSocket layer itself.
    got, code = ws_session(hub, [connect, 4, b"\x30" + b"x" * (2 * 65536 + 20), 10])
    assert got == b"\x20\x02\x00\x00" and code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def test_websocket_needs_the_mqtt_subprotocol_and_an_upgrade(hub: Hub) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        ws_session(hub, [], protocols=("chat",))
    assert err.value.status == 400
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"http://127.0.0.1:{hub.ws_port}{WS_PATH}", timeout=WAIT)
    assert plain.value.code == 400 and b"WebSocket" in plain.value.read()


# -- deny rules -----------------------------------------------------------------------------------


def test_denied_filters_get_a_failure_suback(hub: Hub) -> None:
    c3 = Paho(hub.mqtt_port, "alice", PASSWORD, "deny3")
    c5 = Paho(hub.mqtt_port, "alice", PASSWORD, "deny5", protocol=V5)
    try:
        c3.connect()
        c5.connect()
        assert [c.value for c in c3.subscribe("test/nosubscribe", 2)] == [0x80]
        assert [c.value for c in c3.subscribe("vault/+/key", 1)] == [0x80]
        assert [c.value for c in c3.subscribe("vault/#", 1)] == [0x80]
        assert [c.value for c in c5.subscribe("test/nosubscribe", 2)] == [0x87]  # Not authorized
        assert "mqtt_deny_subscribe" in c5.suback_props.get(timeout=WAIT).ReasonString
        assert [c.value for c in c5.subscribe("$share/g/vault/a", 1)] == [0x87]
        assert [c.value for c in c5.subscribe("test/+", 1)] == [1]  # wider than the rule: allowed
    finally:
        c3.disconnect()
        c5.disconnect()


def test_wider_filters_never_receive_denied_topics(hub: Hub) -> None:
    sub = Paho(hub.mqtt_port, "alice", PASSWORD, "deny-wide", protocol=V5)
    pub = Paho(hub.mqtt_port, "alice", PASSWORD, "deny-pub")
    try:
        sub.connect()
        pub.connect()
        pub.publish("vault/door/code", b"1234", qos=1, retain=True)  # publishing stays allowed
        assert [c.value for c in sub.subscribe("#", 1)] == [1]  # no retained vault/... comes back
        pub.publish("vault/door/code", b"5678", qos=1)
        pub.publish("vault/door/marker", b"", qos=1)
        pub.publish("open/door/marker", b"after", qos=1)
        got = sub.get()
        assert (got.topic, got.payload) == ("open/door/marker", b"after")  # same publisher: in order
    finally:
        sub.disconnect()
        pub.disconnect()


# -- configuration --------------------------------------------------------------------------------


def test_listeners_are_off_by_default(gateway: GatewayProcess) -> None:
    ready = gateway.stdout_lines[-1]
    assert "mqtt=mqtt://" in ready and "mqtts=" not in ready and "mqtt-ws=" not in ready
    config = (gateway.data_dir / "gateway.toml").read_text()
    assert "mqtt_tls_enabled = false" in config and "mqtt_ws_enabled = false" in config
    assert "mqtt_wss_enabled = false" in config
    assert "mqtt_deny_subscribe = []" in config
    assert not (gateway.data_dir / "mqtt.key").exists()


@pytest.mark.parametrize("line, message", [
    ('mqtt_deny_subscribe = "test/nosubscribe"', "mqtt_deny_subscribe must be a list of strings"),
    ('mqtt_deny_subscribe = ["a/#/b"]', "'a/#/b' is not a valid MQTT topic filter"),
    ('mqtt_tls_cert = "/nonexistent/cert.pem"', "mqtt_tls_cert: /nonexistent/cert.pem: no such file"),
    ('mqtt_ws_path = "mqtt"', "mqtt_ws_path must be a URL path"),
    ("mqtt_wss_port = 70000", "mqtt_wss_port must be between 0 and 65535"),
    ('mqtt_wss_enabled = "yes"', "mqtt_wss_enabled"),
])
def test_bad_settings_are_refused_by_name(tmp_path: Path, line: str, message: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(line + "\n")
    proc = gateway_cli("run", "--data-dir", str(data), check=False, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_shutdown_tells_websocket_clients_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ws_port = free_port()
    (data / "gateway.toml").write_text(f"mqtt_ws_enabled = true\nmqtt_ws_port = {ws_port}\n")
    gw = GatewayProcess(data)
    gw.start()
    try:
        gw.add_user("alice", PASSWORD)
        client = Paho(ws_port, "alice", PASSWORD, "ws-shutdown", protocol=V5, transport="websockets")
        assert client.connect()[1] == 0
        assert gw.stop() == 0, gw.read_log()
        assert client.disconnects.get(timeout=WAIT) == 0x8B  # Server shutting down
        client.disconnect()
    finally:
        gw.kill()
