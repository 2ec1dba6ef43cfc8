"""The MQTT broker end to end: the hub started with its CLI, real MQTT peers (paho-mqtt 3.1.1 and
5.0, mosquitto_pub/mosquitto_sub) on one side, an HTTP Matrix client on the other."""
from __future__ import annotations

import json
import struct
import urllib.parse
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import MosquittoSub, Paho, RawClient, mosquitto_pub

V5 = mqtt.MQTTv5


def room_events(gw: GatewayProcess, token: str, room: str, limit: int = 20) -> list[dict[str, Any]]:
    q = urllib.parse.quote(room, safe="")
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit={limit}", token=token)
    assert status == 200, body
    return body["chunk"]


def send_text(gw: GatewayProcess, token: str, room: str, text: str) -> str:
    q = urllib.parse.quote(room, safe="")
    status, body = gw.request("POST", f"/_matrix/client/api/v1/rooms/{q}/send/m.room.message",
                              {"msgtype": "m.text", "body": text}, token=token)
    assert status == 200, body
    return body["event_id"]


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    return {"alice": gateway.login("alice", PASSWORD), "bob": gateway.login("bob", PASSWORD)}


def test_mosquitto_pub_becomes_a_readable_room_event(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "house/kitchen/temp", '{"t": 21.5}', 1)
    events = room_events(gateway, tokens["alice"], "#mqtt/house/kitchen:localhost")
    messages = [e for e in events if e["type"] == "m.room.message"]
    assert messages, events
    content = messages[0]["content"]
    assert content["msgtype"] == "org.matrix_gateway.mqtt"
    assert content["body"] == 'house/kitchen/temp: {"t": 21.5}'
    assert content["mqtt"]["topic"] == "house/kitchen/temp"
    assert content["mqtt"]["payload"] == {"kind": "json", "text": '{"t": 21.5}'}
    assert messages[0]["sender"] == "@alice:localhost"


def test_exact_bytes_reach_subscribers_v311_and_v5(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    sub3 = Paho(port, "alice", PASSWORD, "bytes-sub3")
    sub5 = Paho(port, "@alice:localhost", PASSWORD, "bytes-sub5", protocol=V5)
    pub = Paho(port, "alice", PASSWORD, "bytes-pub", protocol=V5)
    try:
        assert sub3.connect()[1] == 0
        assert sub5.connect()[1] == 0
        assert pub.connect()[1] == 0
        assert [c.value for c in sub3.subscribe("bytes/dev/#", 1)] == [1]  # granted QoS
        sub5.subscribe("bytes/+/raw", 2)
        payloads = [bytes(range(256)), b"", b"\xff\x00\xfe", "ünïcode".encode(), b'{"b":1,"a":2}']
        for i, payload in enumerate(payloads):
            info = pub.publish("bytes/dev/raw", payload, qos=1)
            assert info.rc == 0
        for payload in payloads:
            got3 = sub3.get()
            got5 = sub5.get()
            assert (got3.topic, got3.payload, got3.qos) == ("bytes/dev/raw", payload, 1)
            assert (got5.topic, got5.payload, got5.qos) == ("bytes/dev/raw", payload, 1)
    finally:
        for c in (sub3, sub5, pub):
            c.disconnect()


def test_text_from_a_matrix_client_reaches_the_rooms_topic(gateway: GatewayProcess,
                                                           tokens: dict[str, str]) -> None:
    port = gateway.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "lights/hall/state", "on", 1)
    sub = MosquittoSub(port, "alice", PASSWORD, "lights/#", 1)
    event_id = send_text(gateway, tokens["alice"], "#mqtt/lights/hall:localhost", "turn off")
    lines = sub.wait()
    assert len(lines) == 1
    topic, payload = lines[0].split(" ", 1)
    assert topic == "lights/hall"
    doc = json.loads(payload)
    assert doc["event_id"] == event_id
    assert doc["sender"] == "@alice:localhost"
    assert doc["type"] == "m.room.message"
    assert doc["content"] == {"msgtype": "m.text", "body": "turn off"}


def test_acl_subscriptions_see_only_joined_rooms(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    port = gateway.mqtt_port
    # a guest: household members (bob) share the broker's rooms (issue 16); a guest does not
    gateway.add_user("aclguest", PASSWORD, guest=True)
    bob = Paho(port, "aclguest", PASSWORD, "acl-bob")
    alice = Paho(port, "alice", PASSWORD, "acl-alice")
    try:
        bob.connect()
        alice.connect()
        bob.subscribe("#", 1)
        bob.subscribe("secret/+/x", 1)
        alice.subscribe("secret/#", 1)
        alice.publish("secret/alice/x", b"private", qos=1)
        assert alice.get().payload == b"private"
        # bob publishes into a room he is invited to (a guest's publish makes no room: alice's
        # does): he sees it, proving his subscription works at all.
        alice.publish("bobs/room/x", b"made", qos=1)
        status, body = gateway.request("GET", "/_matrix/client/v3/directory/room/"
                                       + urllib.parse.quote("#mqtt/bobs/room:localhost", safe=""))
        assert status == 200, body
        room_id = body["room_id"]
        status, body = gateway.request("POST", f"/_matrix/client/v3/rooms/{room_id}/invite",
                                       {"user_id": "@aclguest:localhost"}, token=tokens["alice"])
        assert status == 200, body
        status, body = gateway.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {},
                                       token=gateway.login("aclguest", PASSWORD))
        assert status == 200, body
        bob.publish("bobs/room/x", b"mine", qos=1)
        got = bob.get()
        assert (got.topic, got.payload) == ("bobs/room/x", b"mine")
        assert bob.nothing_within(0.3)
    finally:
        bob.disconnect()
        alice.disconnect()


def test_publishing_needs_the_right_to_send(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "locked/door/cmd", "init", 1)
    gateway.add_user("sendguest", PASSWORD, guest=True)  # not in the household: not in alice's room
    bob = Paho(port, "sendguest", PASSWORD, "nosend-bob", protocol=V5)
    refused: list[Any] = []
    bob.client.on_publish = lambda c, u, mid, rc, props: refused.append(rc)
    alice = Paho(port, "alice", PASSWORD, "nosend-alice")
    try:
        bob.connect()
        bob.publish("locked/door/cmd", b"open", qos=1)
        assert refused and refused[0] == 0x87  # Not authorized
        alice.connect()
        alice.subscribe("locked/door/cmd", 1)
        # 3.1.1 has no negative PUBACK: acknowledged and dropped, as mosquitto does (issue 16)
        proc = mosquitto_pub(port, "sendguest", PASSWORD, "locked/door/cmd", "open", 1, check=False)
        assert proc.returncode == 0, proc.stderr
        alice.publish("locked/door/cmd", b"close", qos=1)
        assert alice.get().payload == b"close"  # the refused "open" reached nobody
    finally:
        bob.disconnect()
        alice.disconnect()


def test_wrong_credentials_are_refused_in_connack(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    c3 = Paho(port, "alice", "wrong password", "bad3")
    rc3 = c3.connect()[1]
    assert rc3.is_failure and rc3.getName() == "Bad user name or password", rc3  # 3.1.1 return code 4
    c3.disconnect()
    c5 = Paho(port, "alice", "wrong password", "bad5", protocol=V5)
    rc = c5.connect()[1]
    assert rc == 0x86, rc  # Bad User Name or Password
    c5.disconnect()
    anon = Paho(port, None, None, "anon", protocol=V5)
    assert anon.connect()[1] == 0x87  # anonymous refused by default
    anon.disconnect()
    proc = mosquitto_pub(port, "nobody", "x", "a/b", "x", 1, check=False)
    assert proc.returncode != 0 and b"refused" in proc.stderr.lower()


def test_device_access_token_as_password(gateway: GatewayProcess) -> None:
    token = gateway.device_token("alice", "mqtt-sensor")
    sub = Paho(gateway.mqtt_port, "alice", token, "token-client", protocol=V5)
    try:
        assert sub.connect()[1] == 0
        sub.subscribe("tok/a/#", 1)
        sub.publish("tok/a/b", b"via token", qos=1)
        assert sub.get().payload == b"via token"
    finally:
        sub.disconnect()
    wrong_user = Paho(gateway.mqtt_port, "bob", token, "token-wrong-user", protocol=V5)
    assert wrong_user.connect()[1] == 0x86
    wrong_user.disconnect()


def test_qos2_both_ways(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    sub = Paho(port, "alice", PASSWORD, "q2-sub", protocol=V5)
    pub = Paho(port, "alice", PASSWORD, "q2-pub")
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("q2/x/#", 2)
        for i in range(20):
            pub.publish("q2/x/y", f"m{i}".encode(), qos=2)
        got = [sub.get() for _ in range(20)]
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)]
        assert {m.qos for m in got} == {2}
        assert sub.nothing_within(0.3)  # exactly once
    finally:
        sub.disconnect()
        pub.disconnect()


def test_qos0_is_not_upgraded_and_order_is_kept(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    sub = Paho(port, "alice", PASSWORD, "q0-sub")
    pub = Paho(port, "alice", PASSWORD, "q0-pub")
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("q0/x/#", 2)
        pub.publish("q0/x/first", b"-", qos=1)  # creates the room
        assert sub.get().payload == b"-"
        for i in range(200):
            pub.client.publish("q0/x/y", str(i).encode(), qos=0)
        got = [sub.get() for _ in range(200)]
        assert [int(m.payload) for m in got] == list(range(200))
        assert {m.qos for m in got} == {0}
    finally:
        sub.disconnect()
        pub.disconnect()


def test_mqtt5_properties_travel(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    sub = Paho(port, "alice", PASSWORD, "props-sub", protocol=V5)
    pub = Paho(port, "alice", PASSWORD, "props-pub", protocol=V5)
    try:
        sub.connect()
        pub.connect()
        sub_props = Properties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 42
        sub.subscribe("props/x/#", 1, properties=sub_props)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("unit", "C"), ("unit", "K")]
        props.ResponseTopic = "props/x/reply"
        props.CorrelationData = b"\x00\x01corr"
        props.ContentType = "text/plain"
        props.PayloadFormatIndicator = 1
        props.MessageExpiryInterval = 3600
        pub.publish("props/x/req", b"hello", qos=1, properties=props)
        got = sub.get()
        p = got.properties
        assert got.payload == b"hello"
        assert p.UserProperty == [("unit", "C"), ("unit", "K")]
        assert p.ResponseTopic == "props/x/reply"
        assert p.CorrelationData == b"\x00\x01corr"
        assert p.ContentType == "text/plain"
        assert p.PayloadFormatIndicator == 1
        assert 3590 <= p.MessageExpiryInterval <= 3600
        assert p.SubscriptionIdentifier == [42]
    finally:
        sub.disconnect()
        pub.disconnect()


def test_no_local_and_topic_alias(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    c = Paho(port, "alice", PASSWORD, "nolocal", protocol=V5)
    other = Paho(port, "alice", PASSWORD, "nolocal-other", protocol=V5)
    try:
        c.connect()
        other.connect()
        c.subscribe("nl/x/#", 1, noLocal=True)
        props = Properties(PacketTypes.PUBLISH)
        props.TopicAlias = 3
        c.publish("nl/x/a", b"own", qos=1, properties=props)
        props2 = Properties(PacketTypes.PUBLISH)
        props2.TopicAlias = 3
        other.publish("nl/x/b", b"first from other", qos=1, properties=props2)
        other.publish("", b"via alias", qos=1, properties=props2)
        got = [c.get(), c.get()]
        assert [(m.topic, m.payload) for m in got] == [("nl/x/b", b"first from other"), ("nl/x/b", b"via alias")]
        assert c.nothing_within(0.3)
    finally:
        c.disconnect()
        other.disconnect()


def test_shared_subscription_delivers_each_message_once(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    members = [Paho(port, "alice", PASSWORD, f"share-{i}", protocol=V5) for i in range(2)]
    pub = Paho(port, "alice", PASSWORD, "share-pub")
    try:
        for m in members:
            m.connect()
            m.subscribe("$share/g1/shared/x/#", 1)
        pub.connect()
        for i in range(10):
            pub.publish("shared/x/y", str(i).encode(), qos=1)
        got: list[int] = []
        counts = []
        for m in members:
            n = 0
            while not m.messages.empty() or len(got) < 10:
                try:
                    got.append(int(m.get(timeout=0.5).payload))
                    n += 1
                except Exception:
                    break
            counts.append(n)
        assert sorted(got) == list(range(10))
        assert all(counts), counts  # both members got some
    finally:
        for m in members:
            m.disconnect()
        pub.disconnect()


def test_wildcard_publish_disconnects_that_client_only(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    bystander = Paho(port, "alice", PASSWORD, "bystander", protocol=V5)
    try:
        bystander.connect()
        bystander.subscribe("by/x/#", 1)
        raw = RawClient(port)
        raw.send(_connect_v5("raw-wild", "alice", PASSWORD))
        assert raw.read_packet()[:1] == b"\x20"  # CONNACK
        topic = b"by/+/x"
        raw.send(b"\x30" + bytes([2 + len(topic) + 1 + 1]) + struct.pack(">H", len(topic)) + topic + b"\x00" + b"p")
        rest = raw.recv_until_closed()
        assert rest[:1] == b"\xe0" and 0x90 in rest[2:3]  # DISCONNECT, Topic Name invalid
        raw.close()
        bystander.publish("by/x/y", b"still served", qos=1)
        assert bystander.get().payload == b"still served"
    finally:
        bystander.disconnect()


def test_malformed_and_oversize_packets_disconnect(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    raw = RawClient(port)
    raw.send(b"\x10\x02\xff\xff")  # CONNECT that is garbage
    assert raw.recv_until_closed() == b""
    raw.close()
    raw = RawClient(port)
    raw.send(_connect_v5("raw-big", "alice", PASSWORD))
    assert raw.read_packet()[:1] == b"\x20"
    raw.send(b"\x30\xff\xff\x7f")  # a PUBLISH announcing 2 MB: over mqtt_max_packet_size
    rest = raw.recv_until_closed()
    assert rest[:1] == b"\xe0" and rest[2] == 0x95  # Packet too large
    raw.close()
    raw = RawClient(port)
    raw.send(b"\x82\x05\x00\x01\x00\x00\x00")  # SUBSCRIBE before CONNECT
    assert raw.recv_until_closed() == b""
    raw.close()


def _connect_v5(client_id: str, user: str, password: str, keepalive: int = 60, will: bytes = b"") -> bytes:
    def s(x: str | bytes) -> bytes:
        b = x.encode() if isinstance(x, str) else x
        return struct.pack(">H", len(b)) + b
    flags = 0x02 | 0x80 | 0x40 | (0x04 | 0x08 if will else 0)
    body = s("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive) + b"\x00" + s(client_id)
    if will:
        body += b"\x00" + will
    body += s(user) + s(password)
    return b"\x10" + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_keepalive_enforced_and_will_published(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    watcher = Paho(port, "alice", PASSWORD, "will-watcher", protocol=V5)
    try:
        watcher.connect()
        mosquitto_pub(port, "alice", PASSWORD, "wills/dev/status", "online", 1)
        watcher.subscribe("wills/dev/#", 1)
        raw = RawClient(port)
        will = struct.pack(">H", len(b"wills/dev/status")) + b"wills/dev/status" + struct.pack(">H", 4) + b"gone"
        raw.send(_connect_v5("half-open", "alice", PASSWORD, keepalive=1, will=will))
        assert raw.read_packet()[:1] == b"\x20"
        # the client now goes silent (half-open): after 1.5 x keepalive the broker drops it
        msg = watcher.get(timeout=5)
        assert (msg.topic, msg.payload) == ("wills/dev/status", b"gone")
        data = raw.recv_until_closed()
        assert data[:1] == b"\xe0" and data[2] == 0x8D  # Keep Alive timeout
        raw.close()
    finally:
        watcher.disconnect()


def test_normal_disconnect_sends_no_will(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    watcher = Paho(port, "alice", PASSWORD, "nowill-watcher")
    c = Paho(port, "alice", PASSWORD, "nowill")
    try:
        watcher.connect()
        mosquitto_pub(port, "alice", PASSWORD, "nowill/dev/status", "online", 1)
        watcher.subscribe("nowill/dev/#", 1)
        c.client.will_set("nowill/dev/status", b"gone", 1)
        c.connect()
        c.disconnect()
        mosquitto_pub(port, "alice", PASSWORD, "nowill/dev/status", "marker", 1)
        assert watcher.get().payload == b"marker"  # the will would have come first
    finally:
        watcher.disconnect()


def _publish_v5(topic: str, payload: bytes, packet_id: int, qos: int = 1, retain: bool = False,
                properties: bytes = b"") -> bytes:
    body = struct.pack(">H", len(topic.encode())) + topic.encode() + struct.pack(">H", packet_id)
    body += _varint(len(properties)) + properties + payload
    return bytes([0x30 | qos << 1 | int(retain)]) + _varint(len(body)) + body


def test_a_burst_in_one_read_is_stored_in_order_with_one_refusal(gateway: GatewayProcess,
                                                                 tokens: dict[str, str]) -> None:
    """Publishes that arrive in one socket read share writes (in slices: more than one event-loop
    pass): every one is acknowledged in order, those refused (payload format 1 with bytes that
    are not UTF-8) are refused alone, retained ones in the middle keep their place (one topic is
    an ordered topic), and the room holds them in publish order."""
    N, REFUSED, RETAINED = 130, {13, 75}, {27, 101}  # noqa: N806 (more than one slice of 50)
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "burst/dev/x", "first", 1)  # the room exists
    raw = RawClient(gateway.mqtt_port)
    raw.send(_connect_v5("burst", "alice", PASSWORD))
    assert raw.read_packet()[:1] == b"\x20"
    packets = []
    for i in range(1, N + 1):
        if i in REFUSED:
            packets.append(_publish_v5("burst/dev/x", b"\xff\xfe", i, properties=b"\x01\x01"))
        elif i in RETAINED:
            packets.append(_publish_v5("burst/dev/x", b"on", i, retain=True))
        else:
            packets.append(_publish_v5("burst/dev/x", b"m%d" % i, i))
    raw.send(b"".join(packets))
    acks = [raw.read_packet() for _ in range(N)]
    raw.close()
    assert [struct.unpack(">H", a[2:4])[0] for a in acks] == list(range(1, N + 1))
    reasons = {struct.unpack(">H", a[2:4])[0]: (a[4] if len(a) > 4 else 0) for a in acks}
    assert all(reasons[i] == 0x99 for i in REFUSED)  # Payload format invalid
    assert all(code == 0 for pid, code in reasons.items() if pid not in REFUSED)
    events = room_events(gateway, tokens["alice"], "#mqtt/burst/dev:localhost", limit=2 * N)
    published = [e["content"]["mqtt"]["payload"]["text"] if e["type"] == "m.room.message" else "retained"
                 for e in reversed(events) if e["type"] in ("m.room.message", "org.matrix_gateway.mqtt.retained")]
    expected = ["first"] + [f"m{i}" if i not in RETAINED else "retained" for i in range(1, N + 1) if i not in REFUSED]
    assert published == expected


def test_a_burst_then_an_abrupt_close_stores_what_was_read(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    """The client vanishes while its read is still being worked through in slices: what the broker
    read is stored in order (nothing half-written), and the broker serves on."""
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "vanish/dev/x", "first", 1)
    raw = RawClient(gateway.mqtt_port)
    raw.send(_connect_v5("vanisher", "alice", PASSWORD))
    assert raw.read_packet()[:1] == b"\x20"
    raw.send(b"".join(_publish_v5("vanish/dev/x", b"v%d" % i, i) for i in range(1, 151)))
    raw.close()
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "vanish/dev/x", "after", 1)  # served on
    events = room_events(gateway, tokens["alice"], "#mqtt/vanish/dev:localhost", limit=300)
    texts = [e["content"]["mqtt"]["payload"]["text"] for e in reversed(events) if e["type"] == "m.room.message"]
    assert texts[0] == "first" and "after" in texts
    stored = [t for t in texts if t.startswith("v")]
    assert stored and stored == [f"v{i}" for i in range(1, len(stored) + 1)]  # a prefix of what was sent, in order
    assert "Traceback" not in gateway.read_log()


def test_a_qos0_flood_is_read_no_faster_than_it_is_stored(tmp_path: Any) -> None:
    """A client writing QoS 0 publishes as fast as its socket takes them: the broker stops reading
    while its backlog is full (reads handled in slices included), so its memory stays bounded,
    and then stores everything in order (the QoS 1 marker after them is acknowledged)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0\n")
    with GatewayProcess(data) as gw:
        gw.add_user("alice", PASSWORD)
        raw = RawClient(gw.mqtt_port)
        raw.send(_connect_v5("flood", "alice", PASSWORD))
        assert raw.read_packet()[:1] == b"\x20"
        raw.send(_publish_v5("flood/dev/x", b"room first", 1))  # the room exists before the flood
        assert raw.read_packet()[:1] == b"\x40"
        before = gw.rss_bytes()
        flood = bytearray()
        for i in range(60_000):  # QoS 0: no packet id; an empty property list; 8 bytes of payload
            body = struct.pack(">H", 11) + b"flood/dev/x" + b"\x00" + b"%08d" % i
            flood += b"\x30" + _varint(len(body)) + body
        raw.send(bytes(flood))
        raw.send(_publish_v5("flood/dev/x", b"marker", 2))
        ack = raw.read_packet(timeout=120)
        assert ack[:1] == b"\x40" and struct.unpack(">H", ack[2:4])[0] == 2
        grown_mb = (gw.rss_bytes() - before) / 2**20
        raw.close()
    assert grown_mb < 20, f"resident memory grew {grown_mb:.1f} MB during a 60,000-message flood"
