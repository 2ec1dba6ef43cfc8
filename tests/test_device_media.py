"""Images and large payloads from devices (issue 15, "Devices"): the hub started with its CLI,
mosquitto_pub / mosquitto_sub on the MQTT side, HTTP /messages on the Matrix side. Payloads too
large for an event and pictures are kept in the media repository (`hs.media`) and read back
byte-identical, through the authenticated download endpoint as a Matrix client would."""
from __future__ import annotations

import json
import struct
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Iterator

import cbor2
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import mosquitto_pub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data = Path(tmp_path_factory.mktemp("hub")) / "data"
    data.mkdir(parents=True)
    (data / "gateway.toml").write_text('mqtt_image_topics = ["camera/+/snapshot"]\n')
    gw = GatewayProcess(data)
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def token(hub: GatewayProcess) -> str:
    return hub.login("alice", PASSWORD)


def bridge_devices(size: int) -> bytes:
    """A Zigbee2MQTT-shaped `bridge/devices` (JSON.stringify order: keys not sorted) of ~size bytes."""
    devices: list[dict[str, Any]] = []
    while len(json.dumps(devices)) < size:
        i = len(devices)
        devices.append({"ieee_address": f"0x{i:016x}", "type": "Router", "network_address": i,
                        "friendly_name": f"living room lamp {i}", "power_source": "Mains (single phase)",
                        "definition": {"model": "LED1545G12", "vendor": "IKEA", "description": "TRADFRI bulb",
                                       "exposes": [{"type": "light", "features": [
                                           {"name": "state", "property": "state", "value_on": "ON"},
                                           {"name": "brightness", "value_max": 254, "value_min": 0}]}]}})
    return json.dumps(devices, separators=(",", ":")).encode()


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes([i % 256, 0, 0]) * width for i in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg(width: int, height: int) -> bytes:
    """A minimal JPEG header (SOI, APP0, SOF0) plus filler: what cameras send starts like this."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + bytes(range(256)) * 80 + b"\xff\xd9"


def sub_hex(hub: GatewayProcess, topic: str, *extra: str) -> subprocess.Popen[str]:
    """mosquitto_sub printing each payload as hex (-F %x: exact bytes, binary-safe)."""
    return subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(hub.mqtt_port),
                             "-u", "alice", "-P", PASSWORD, "-t", topic, "-C", "1", "-W", "20", "-F", "%x",
                             "-d", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_subscribed(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "received suback" in line.lower():
            return seen
    raise AssertionError(f"no SUBACK: {seen}")


def payload_of(proc: subprocess.Popen[str]) -> bytes:
    out, err = proc.communicate(timeout=25)
    lines = [line for line in out.splitlines() if line and not line.startswith(("Client ", "Subscribed"))]
    assert proc.returncode == 0 and len(lines) == 1, (out[-500:], err)
    return bytes.fromhex(lines[0])


def messages(hub: GatewayProcess, token: str, room: str) -> list[dict[str, Any]]:
    q = urllib.parse.quote(room, safe="")
    status, body = hub.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=20", token=token)
    assert status == 200, body
    return body["chunk"]


def read_media(hub: GatewayProcess, url: str) -> tuple[bytes, str] | None:
    """The bytes behind an mxc URL and their content type, downloaded by a client
    (GET /_matrix/client/v1/media/download/{server}/{id} with a token); None when not found."""
    assert url.startswith("mxc://"), url
    request = urllib.request.Request(f"{hub.http_url}/_matrix/client/v1/media/download/{url[len('mxc://'):]}",
                                     headers={"Authorization": f"Bearer {hub.login('alice', PASSWORD)}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read(), answer.headers.get_content_type()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_a_100kb_retained_bridge_devices_comes_back_byte_identical(hub: GatewayProcess, token: str,
                                                                   version: str) -> None:
    topic = f"z2m{version[-1]}/bridge/devices"
    payload = bridge_devices(100_000)
    live = sub_hex(hub, topic, "-V", version)
    wait_subscribed(live)
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, topic, payload, 1, "-r", "-V", version)
    assert payload_of(live) == payload  # live fan-out
    fresh = sub_hex(hub, topic, "-V", version)  # retained delivery, read back from media
    assert payload_of(fresh) == payload
    state = [e for e in messages(hub, token, f"#mqtt/z2m{version[-1]}/bridge:localhost")
             if e["type"] == "org.matrix_gateway.mqtt.retained"]
    ref = state[0]["content"]["payload"]
    assert ref["kind"] == "media" and ref["size"] == len(payload) and ref["mimetype"] == "application/json"
    assert read_media(hub, ref["url"]) == (payload, "application/json")


def test_a_40kb_bridge_devices_fits_one_event(hub: GatewayProcess, token: str) -> None:
    """The bug: value + text doubled a 31 KB list past the event limit (0x97, or a 3.1.1 drop)."""
    payload = bridge_devices(40_000)
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "z2m/bridge/devices", payload, 1, "-r", "-V", "mqttv311")
    fresh = sub_hex(hub, "z2m/bridge/devices")
    assert payload_of(fresh) == payload
    state = [e for e in messages(hub, token, "#mqtt/z2m/bridge:localhost")
             if e["type"] == "org.matrix_gateway.mqtt.retained"]
    assert state[0]["content"]["payload"] == {"kind": "json", "text": payload.decode()}


def test_a_large_message_is_an_m_file(hub: GatewayProcess, token: str) -> None:
    payload = bridge_devices(90_000)
    live = sub_hex(hub, "big/log/x", "-V", "mqttv5")
    wait_subscribed(live)
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "big/log/x", payload, 1)
    assert payload_of(live) == payload
    event = [e for e in messages(hub, token, "#mqtt/big/log:localhost") if e["type"] == "m.room.message"][0]
    content = event["content"]
    assert content["msgtype"] == "m.file" and content["url"].startswith("mxc://localhost/")
    assert content["info"] == {"mimetype": "application/json", "size": len(payload)}
    assert read_media(hub, content["url"]) == (payload, "application/json")


def test_a_jpeg_file_on_an_image_topic_is_an_m_image(hub: GatewayProcess, token: str, tmp_path: Path) -> None:
    picture = jpeg(640, 480)
    path = tmp_path / "snap.jpg"
    path.write_bytes(picture)
    live = sub_hex(hub, "camera/door/snapshot")
    wait_subscribed(live)
    proc = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(hub.mqtt_port), "-u", "alice", "-P",
                           PASSWORD, "-t", "camera/door/snapshot", "-q", "1", "-f", str(path)],
                          capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert payload_of(live) == picture
    event = [e for e in messages(hub, token, "#mqtt/camera/door:localhost") if e["type"] == "m.room.message"][0]
    content = event["content"]
    assert content["msgtype"] == "m.image" and content["body"] == "snapshot.jpg"
    assert content["info"] == {"mimetype": "image/jpeg", "size": len(picture), "w": 640, "h": 480}
    assert content["url"].startswith("mxc://localhost/")
    assert read_media(hub, content["url"]) == (picture, "image/jpeg")


def test_an_mqtt5_image_content_type_is_an_m_image_on_any_topic(hub: GatewayProcess, token: str) -> None:
    picture = png(32, 16)
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "garden/cam/now", picture, 1, "-V", "mqttv5",
                  "-D", "publish", "content-type", "image/png")
    fresh_text = [e for e in messages(hub, token, "#mqtt/garden/cam:localhost") if e["type"] == "m.room.message"]
    content = fresh_text[0]["content"]
    assert content["msgtype"] == "m.image"
    assert content["info"] == {"mimetype": "image/png", "size": len(picture), "w": 32, "h": 16}
    assert read_media(hub, content["url"]) == (picture, "image/png")


def test_a_jpeg_elsewhere_stays_an_mqtt_message(hub: GatewayProcess, token: str) -> None:
    """Magic bytes are looked at only on mqtt_image_topics: other binary payloads are unchanged."""
    picture = jpeg(8, 8)[:600]
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "misc/bin/x", picture, 1)
    content = [e for e in messages(hub, token, "#mqtt/misc/bin:localhost") if e["type"] == "m.room.message"][0]["content"]
    assert content["msgtype"] == "org.matrix_gateway.mqtt" and content["mqtt"]["payload"]["kind"] == "bytes"


# ---------------------------------------------------------------------------------------------
# CoAP: a camera posts its picture block-wise to the short path /_m/c/v3/r/ROOM/img
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camera_room(hub: GatewayProcess, token: str) -> str:
    status, body = hub.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "cams"}, token=token)
    assert status == 200, body
    return body["room_id"]


def coap_post(hub: GatewayProcess, path: str, file: Path, *extra: str) -> tuple[Any, str]:
    """libcoap's coap-client, block-wise (-b 64): (the CBOR answer, its debug log with the codes)."""
    answer = file.with_suffix(".answer")
    answer.unlink(missing_ok=True)
    proc = subprocess.run(["coap-client-notls", "-m", "post", "-b", "64", "-f", str(file), "-o", str(answer),
                           "-v", "7", *extra, f"coap://127.0.0.1:{hub.coap_port}{path}"], capture_output=True,
                          timeout=30)
    log = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    return (cbor2.loads(answer.read_bytes()) if answer.exists() and answer.stat().st_size else None), log


def diagnostic(log: str, code: str) -> Any:
    """The CBOR diagnostic of the `code` answer in coap-client's debug log (it writes no error
    payload to -o): the hex line after the answer's line."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if f"c:{code} " in line and "ACK" in line:
            return cbor2.loads(bytes.fromhex(lines[i + 1].strip("<>")))
    raise AssertionError(f"no {code} answer: {log[-2000:]}")


def test_coap_blockwise_picture_becomes_an_m_image(hub: GatewayProcess, token: str, camera_room: str,
                                                    tmp_path: Path) -> None:
    picture = jpeg(320, 240)
    path = tmp_path / "door.jpg"
    path.write_bytes(picture)
    answer, log = coap_post(hub, f"/_m/c/v3/r/%23cams:localhost/img?a={token}&fn=door.jpg", path, "-t", "23")
    assert "c:2.01" in log and answer is not None, log[-2000:]
    assert "Block1:1/M/64" in log  # it did go block-wise
    events = [e for e in messages(hub, token, camera_room) if e["type"] == "m.room.message"]
    assert events[0]["event_id"] == answer["event_id"]
    content = events[0]["content"]
    assert content == {"msgtype": "m.image", "body": "door.jpg", "url": answer["content_uri"],
                       "info": {"mimetype": "image/jpeg", "size": len(picture), "w": 320, "h": 240}}
    assert read_media(hub, answer["content_uri"]) == (picture, "image/jpeg")


def test_coap_picture_without_content_format_is_sniffed(hub: GatewayProcess, token: str, camera_room: str,
                                                         tmp_path: Path) -> None:
    picture = png(4, 3)
    path = tmp_path / "p.png"
    path.write_bytes(picture)
    answer, log = coap_post(hub, f"/_m/c/v3/r/%23cams:localhost/img?a={token}", path)
    assert "c:2.01" in log, log[-2000:]
    content = [e for e in messages(hub, token, camera_room) if e["type"] == "m.room.message"][0]["content"]
    assert content["body"] == "image.png" and content["info"]["w"] == 4 and content["info"]["h"] == 3


def media_files(hub: GatewayProcess) -> set[str]:
    root = hub.data_dir / "media"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_coap_picture_over_the_limit_is_4_13_and_nothing_is_stored(hub: GatewayProcess, token: str,
                                                                    camera_room: str, tmp_path: Path) -> None:
    before_files = media_files(hub)
    before = [e["event_id"] for e in messages(hub, token, camera_room)]
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpeg(4000, 3000) + bytes(200_000))  # over the 128 KiB body limit
    answer, log = coap_post(hub, f"/_m/c/v3/r/%23cams:localhost/img?a={token}", path, "-t", "23")
    assert diagnostic(log, "4.13")["errcode"] == "M_TOO_LARGE"
    assert [e["event_id"] for e in messages(hub, token, camera_room)] == before
    assert media_files(hub) == before_files


def test_coap_non_picture_is_refused(hub: GatewayProcess, token: str, camera_room: str, tmp_path: Path) -> None:
    before_files = media_files(hub)
    path = tmp_path / "x.txt"
    path.write_bytes(b"not a picture at all" * 10)
    answer, log = coap_post(hub, f"/_m/c/v3/r/%23cams:localhost/img?a={token}", path)
    assert diagnostic(log, "4.15")["errcode"] == "M_UNKNOWN"
    assert media_files(hub) == before_files


# ---------------------------------------------------------------------------------------------
# a disk that fills mid-write: nothing acknowledged, no partial file, no event
# ---------------------------------------------------------------------------------------------

from tests.test_disk_full import hub_on_tmpfs, prepared  # noqa: E402,F401  (the fixtures: a hub on a small tmpfs)


def test_a_disk_filling_mid_write_acknowledges_nothing(hub_on_tmpfs: Any) -> None:
    import paho.mqtt.client as mqtt

    from tests.support import full_disk
    from tests.test_mqtt_peers import Paho

    gw, view, facts = hub_on_tmpfs
    v5 = Paho(gw.mqtt_port, "alice", PASSWORD, "media-full", protocol=mqtt.MQTTv5)
    acks: list[int] = []
    v5.client.on_publish = lambda c, u, mid, rc, props: acks.append(rc.value)
    payload = bridge_devices(100_000)
    try:
        assert v5.connect()[1] == 0
        v5.publish("full/bridge/devices", b"[]", qos=1, retain=True)  # its room exists before the disk fills
        assert acks == [0]
        media = view / "media"
        before = {p.name for p in media.iterdir()} if media.exists() else set()
        full_disk.fill(view, leave=40_000)  # room for part of the 100 KB file, not all of it
        v5.publish("full/bridge/devices", payload, qos=1, retain=True)
        assert acks == [0, 0x97]
        assert ({p.name for p in media.iterdir()} if media.exists() else set()) == before  # no partial file
        full_disk.free(view)
        fresh = sub_hex(gw, "full/bridge/devices")
        assert payload_of(fresh) == b"[]"  # the refused publish replaced nothing
        v5.publish("full/bridge/devices", payload, qos=1, retain=True)
        assert acks == [0, 0x97, 0]
        assert payload_of(sub_hex(gw, "full/bridge/devices")) == payload
    finally:
        v5.disconnect()


# ---------------------------------------------------------------------------------------------
# over the size limit: MQTT 5 0x97, MQTT 3.1.1 acknowledged and dropped (no reconnect loop)
# ---------------------------------------------------------------------------------------------


def test_too_large_for_an_event_is_0x97_or_ack_and_drop(hub: GatewayProcess, token: str) -> None:
    """A 34 KB topic name goes into the event twice (the mqtt object and the body; a retained
    one: the state key): over the 64 KiB event limit however the payload is kept."""
    import paho.mqtt.client as mqtt

    from tests.test_mqtt_peers import Paho

    topic = "huge/topic/" + "t" * 34_000
    v5 = Paho(hub.mqtt_port, "alice", PASSWORD, "big-v5", protocol=mqtt.MQTTv5)
    v3 = Paho(hub.mqtt_port, "alice", PASSWORD, "big-v311")
    acks: list[int] = []
    v5.client.on_publish = lambda c, u, mid, rc, props: acks.append(rc.value)
    try:
        assert v5.connect()[1] == 0 and v3.connect()[1] == 0
        v5.publish("huge/topic/ok", b"first", qos=1)
        v5.publish(topic, b"x", qos=1)
        v5.publish(topic, b"x", qos=1, retain=True)
        assert acks == [0, 0x97, 0x97]
        for retain in (False, True):
            assert v3.publish(topic, b"x", qos=1, retain=retain).is_published()  # acknowledged, dropped
        v3.publish("huge/topic/ok", b"still connected", qos=1)
        assert v3.disconnects.empty()
        proc = mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, topic, "x", 1, "-V", "mqttv311", check=False)
        assert proc.returncode == 0, proc.stderr
    finally:
        v5.disconnect()
        v3.disconnect()
    events = messages(hub, token, "#mqtt/huge/topic:localhost")
    assert [e["content"]["mqtt"]["payload"]["text"] for e in events if e["type"] == "m.room.message"] == [
        "still connected", "first"]
    assert not [e for e in events if e["type"] == "org.matrix_gateway.mqtt.retained"]
    log = hub.log_path().read_text()
    assert "t" * 300 not in log  # a 34 KB topic is shortened in the log line
    assert "by @alice:localhost (client 'big-v311', QoS 1) refused: 0x97" in log and "Traceback" not in log


# ---------------------------------------------------------------------------------------------
# after a restart (nothing cached): session replay and events from elsewhere read the bytes back
# ---------------------------------------------------------------------------------------------


def test_after_a_restart_media_payloads_are_read_back(hub: GatewayProcess, token: str) -> None:
    import paho.mqtt.client as mqtt

    from tests.test_mqtt_peers import Paho

    payload = bridge_devices(90_000)
    kept = Paho(hub.mqtt_port, "alice", PASSWORD, "replay-me", protocol=mqtt.MQTTv5, clean=False, session_expiry=600)
    assert kept.connect()[1] == 0
    kept.subscribe("big/replay/#", 1)
    kept.disconnect()
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "big/replay/x", payload, 1)
    room = "#mqtt/big/replay:localhost"
    content = [e for e in messages(hub, token, room) if e["type"] == "m.room.message"][0]["content"]
    assert content["msgtype"] == "m.file"
    hub.stop()
    hub.start()  # an empty cache: the bytes are only in the media repository now
    again = Paho(hub.mqtt_port, "alice", PASSWORD, "replay-me", protocol=mqtt.MQTTv5, clean=False, session_expiry=600)
    try:
        assert again.connect()[0].session_present
        message = again.get()  # replayed from the room's history, its bytes read back from media
        assert (message.topic, message.payload) == ("big/replay/x", payload)
    finally:
        again.disconnect()
    hub.stop()
    hub.start()
    live = sub_hex(hub, "big/replay/z")
    wait_subscribed(live)
    content = dict(content, mqtt=dict(content["mqtt"], topic="big/replay/z"))  # the same bytes, another topic
    status, body = hub.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room, safe='')}/send/"
                               "m.room.message/again", content, token=token)  # sent by a Matrix client
    assert status == 200, body
    assert payload_of(live) == payload  # not published here: read back before the fan-out


def test_the_picture_route_over_http_and_a_one_datagram_coap_post(hub: GatewayProcess, token: str,
                                                                  camera_room: str, tmp_path: Path) -> None:
    """One route table: HTTP answers 201; a picture small enough for one datagram (the CoAP
    message layer's hot path, no Block1) is taken as bytes too."""
    import urllib.request

    picture = png(5, 7)
    req = urllib.request.Request(
        f"{hub.http_url}/_matrix/client/v3/rooms/{urllib.parse.quote(camera_room)}/org.matrix_gateway.image"
        "?filename=porch.png", data=picture, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
        answer = json.loads(resp.read())
    content = [e for e in messages(hub, token, camera_room) if e["event_id"] == answer["event_id"]][0]["content"]
    assert content["body"] == "porch.png" and content["info"] == {"mimetype": "image/png", "size": len(picture),
                                                                  "w": 5, "h": 7}
    path = tmp_path / "tiny.png"
    path.write_bytes(picture)
    proc = subprocess.run(["coap-client-notls", "-m", "post", "-t", "24", "-f", str(path), "-o", "-",
                           f"coap://127.0.0.1:{hub.coap_port}/_m/c/v3/r/%23cams:localhost/img?a={token}"],
                          capture_output=True, timeout=30)
    event_id = cbor2.loads(proc.stdout)["event_id"]
    assert [e for e in messages(hub, token, camera_room) if e["event_id"] == event_id][0]["content"]["info"]["w"] == 5


def test_a_picture_to_a_room_not_joined_is_4_03_and_nothing_is_stored(hub: GatewayProcess, camera_room: str,
                                                                      tmp_path: Path) -> None:
    hub.add_user("mallory", PASSWORD)
    stranger = hub.login("mallory", PASSWORD)
    before = media_files(hub)
    path = tmp_path / "m.jpg"
    path.write_bytes(jpeg(10, 10))
    _, log = coap_post(hub, f"/_m/c/v3/r/%23cams:localhost/img?a={stranger}", path, "-t", "23")
    assert diagnostic(log, "4.03")["errcode"] == "M_FORBIDDEN"
    assert media_files(hub) == before
