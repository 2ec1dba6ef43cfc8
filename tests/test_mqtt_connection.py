"""The sans-I/O connection and session state machines, driven with bytes from the codec (no sockets)."""
from __future__ import annotations

from frontends.mqtt import codec
from frontends.mqtt.connection import (
    ConnectReceived,
    Connection,
    Delivered,
    DisconnectReceived,
    Limits,
    ProtocolViolation,
    PublishReceived,
    Qos2Released,
    State,
    SubscribeReceived,
)
from frontends.mqtt.constants import MQTT_3_1_1, MQTT_5
from frontends.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
)
from frontends.mqtt.session import Outgoing, SessionState


def decode(data: bytes, level: int) -> list:
    return codec.Decoder(protocol_level=level).feed(data)


def connected(level: int = MQTT_5, limits: Limits = Limits(), **connect: object) -> tuple[Connection, SessionState]:
    conn = Connection(limits, now=0.0)
    events = conn.receive_data(codec.encode(Connect("c1", protocol_level=level, **connect), level), 0.0)
    assert [type(e) for e in events] == [ConnectReceived]
    assert conn.state is State.AUTHENTICATING
    session = SessionState("c1", "@a:hub", level)
    assert conn.accept(session, False, 0.0) == []
    out = decode(conn.data_to_send(), level)
    assert type(out[0]) is ConnAck and out[0].reason_code == 0
    return conn, session


def test_connect_must_come_first() -> None:
    conn = Connection(Limits(), 0.0)
    events = conn.receive_data(codec.encode(PingReq(), MQTT_3_1_1), 0.0)
    assert [type(e) for e in events] == [ProtocolViolation]
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_second_connect_is_a_protocol_error() -> None:
    conn, _ = connected()
    events = conn.receive_data(codec.encode(Connect("c1", protocol_level=MQTT_5), MQTT_5), 1.0)
    assert type(events[-1]) is ProtocolViolation and events[-1].reason_code == 0x82
    out = decode(conn.data_to_send(), MQTT_5)
    assert type(out[0]) is Disconnect and out[0].reason_code == 0x82


def test_refused_connect_v311_maps_reason_codes() -> None:
    conn = Connection(Limits(), 0.0)
    conn.receive_data(codec.encode(Connect("c", protocol_level=MQTT_3_1_1), MQTT_3_1_1), 0.0)
    conn.refuse(0x86)
    assert conn.data_to_send() == b"\x20\x02\x00\x04"
    assert conn.state is State.CLOSED


def test_unsupported_protocol_level_gets_connack_1() -> None:
    conn = Connection(Limits(), 0.0)
    events = conn.receive_data(b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00", 0.0)
    assert type(events[0]) is ProtocolViolation
    assert conn.data_to_send() == b"\x20\x02\x00\x01"


def test_packets_behind_connect_wait_for_the_answer() -> None:
    conn = Connection(Limits(), 0.0)
    data = codec.encode(Connect("c", protocol_level=MQTT_3_1_1), MQTT_3_1_1)
    data += codec.encode(Publish("a/b", b"x", 1, packet_id=7), MQTT_3_1_1)
    events = conn.receive_data(data, 0.0)
    assert [type(e) for e in events] == [ConnectReceived]
    later = conn.accept(SessionState("c", "@a:hub"), False, 0.0)
    assert [type(e) for e in later] == [PublishReceived]
    assert later[0].packet.packet_id == 7


def test_qos1_ack_is_sent_only_when_the_broker_says_so() -> None:
    conn, _ = connected(MQTT_3_1_1)
    events = conn.receive_data(codec.encode(Publish("a/b", b"x", 1, packet_id=5), MQTT_3_1_1), 1.0)
    assert [type(e) for e in events] == [PublishReceived]
    assert conn.data_to_send() == b""  # nothing before the event is durable
    conn.ack_publish(5, 1)
    assert decode(conn.data_to_send(), MQTT_3_1_1) == [PubAck(5)]


def test_qos2_incoming_exactly_once() -> None:
    conn, session = connected(MQTT_5)
    pub = Publish("a/b", b"x", 2, packet_id=9)
    assert [type(e) for e in conn.receive_data(codec.encode(pub, MQTT_5), 1.0)] == [PublishReceived]
    # a retransmission while the first copy is being stored is not a new message
    assert conn.receive_data(codec.encode(Publish("a/b", b"x", 2, dup=True, packet_id=9), MQTT_5), 1.0) == []
    conn.ack_publish(9, 2)
    assert decode(conn.data_to_send(), MQTT_5) == [PubRec(9)]
    assert 9 in session.incoming_qos2
    # after PUBREC, a retransmission is answered with PUBREC again and not delivered twice
    assert conn.receive_data(codec.encode(Publish("a/b", b"x", 2, dup=True, packet_id=9), MQTT_5), 1.0) == []
    assert decode(conn.data_to_send(), MQTT_5) == [PubRec(9)]
    events = conn.receive_data(codec.encode(PubRel(9), MQTT_5), 1.0)
    assert events == [Qos2Released(9)]
    assert decode(conn.data_to_send(), MQTT_5) == [PubComp(9)]
    assert 9 not in session.incoming_qos2


def test_negative_ack_v5_and_ack_and_drop_v311() -> None:
    conn, _ = connected(MQTT_5)
    conn.receive_data(codec.encode(Publish("a/b", b"x", 1, packet_id=3), MQTT_5), 1.0)
    conn.ack_publish(3, 1, 0x87)
    assert decode(conn.data_to_send(), MQTT_5) == [PubAck(3, 0x87)]
    # 3.1.1 has no negative acknowledgement: acknowledged and dropped, as mosquitto does (closing
    # makes the client resend it at every reconnect, issue 16)
    conn3, _ = connected(MQTT_3_1_1)
    conn3.receive_data(codec.encode(Publish("a/b", b"x", 1, packet_id=3), MQTT_3_1_1), 1.0)
    conn3.ack_publish(3, 1, 0x87)
    assert conn3.state is State.CONNECTED
    assert decode(conn3.data_to_send(), MQTT_3_1_1) == [PubAck(3)]
    conn3.receive_data(codec.encode(Publish("a/b", b"x", 2, packet_id=4), MQTT_3_1_1), 1.0)
    conn3.ack_publish(4, 2, 0x87)
    assert conn3.state is State.CONNECTED
    assert decode(conn3.data_to_send(), MQTT_3_1_1) == [PubRec(4)]
    # a full disk still closes: the client's resend is wanted once there is room
    conn3.receive_data(codec.encode(Publish("a/b", b"x", 1, packet_id=5), MQTT_3_1_1), 1.0)
    conn3.ack_publish(5, 1, 0x97, close_v311=True)
    assert conn3.state is State.CLOSED
    assert conn3.data_to_send() == b""


def test_outgoing_window_queue_and_acks() -> None:
    conn, session = connected(MQTT_5, Limits(max_inflight=2))
    for i in range(4):
        conn.deliver(Outgoing("t/x", str(i).encode(), 1, position=10 + i), 1.0)
    sent = decode(conn.data_to_send(), MQTT_5)
    assert [p.payload for p in sent] == [b"0", b"1"]
    assert len(session.queue) == 2
    session.seen_upto = 13  # the broker routed the stream up to here
    assert session.cursor() == 9  # nothing acknowledged yet
    events = conn.receive_data(codec.encode(PubAck(sent[0].packet_id), MQTT_5), 2.0)
    assert [type(e) for e in events] == [Delivered]
    assert [p.payload for p in decode(conn.data_to_send(), MQTT_5)] == [b"2"]


def test_outgoing_qos2_handshake() -> None:
    conn, session = connected(MQTT_5)
    conn.deliver(Outgoing("t/x", b"q2", 2, position=5), 1.0)
    (pub,) = decode(conn.data_to_send(), MQTT_5)
    assert pub.qos == 2
    assert conn.receive_data(codec.encode(PubRec(pub.packet_id), MQTT_5), 1.0) == []
    assert decode(conn.data_to_send(), MQTT_5) == [PubRel(pub.packet_id)]
    events = conn.receive_data(codec.encode(PubComp(pub.packet_id), MQTT_5), 1.0)
    assert [type(e) for e in events] == [Delivered]
    assert session.inflight == {}


def test_inflight_is_resent_with_dup_on_a_new_connection() -> None:
    conn, session = connected(MQTT_3_1_1)
    conn.deliver(Outgoing("t/x", b"one", 1, position=5), 1.0)
    (first,) = decode(conn.data_to_send(), MQTT_3_1_1)
    conn.close()
    again = Connection(Limits(), 2.0)
    again.receive_data(codec.encode(Connect("c1", clean_start=False, protocol_level=MQTT_3_1_1), MQTT_3_1_1), 2.0)
    again.accept(session, True, 2.0)
    out = decode(again.data_to_send(), MQTT_3_1_1)
    assert out[0] == ConnAck(True, 0)
    assert out[1].dup and out[1].packet_id == first.packet_id and out[1].payload == b"one"


def test_topic_alias_resolved_and_out_of_range_refused() -> None:
    conn, _ = connected(MQTT_5, Limits(topic_alias_maximum=2))
    e1 = conn.receive_data(codec.encode(Publish("a/b", b"1", 0, properties={"topic_alias": 1}), MQTT_5), 1.0)
    e2 = conn.receive_data(codec.encode(Publish("", b"2", 0, properties={"topic_alias": 1}), MQTT_5), 1.0)
    assert e1[0].packet.topic == e2[0].packet.topic == "a/b"
    assert "topic_alias" not in e2[0].packet.properties
    e3 = conn.receive_data(codec.encode(Publish("a/c", b"3", 0, properties={"topic_alias": 3}), MQTT_5), 1.0)
    assert type(e3[0]) is ProtocolViolation and e3[0].reason_code == 0x94


def test_receive_maximum_exceeded_v5() -> None:
    conn, _ = connected(MQTT_5, Limits(receive_maximum=2))
    data = b"".join(codec.encode(Publish("a/b", b"x", 1, packet_id=i), MQTT_5) for i in (1, 2, 3))
    events = conn.receive_data(data, 1.0)
    assert [type(e) for e in events] == [PublishReceived, PublishReceived, ProtocolViolation]
    assert events[-1].reason_code == 0x93


def test_oversize_packet_and_wildcard_topic() -> None:
    conn, _ = connected(MQTT_5, Limits(max_packet_size=64))
    events = conn.receive_data(codec.encode(Publish("a/b", b"x" * 100, 0), MQTT_5), 1.0)
    assert events[-1].reason_code == 0x95
    assert decode(conn.data_to_send(), MQTT_5)[0] == Disconnect(0x95, {"reason_string": events[-1].message})
    conn, _ = connected(MQTT_5)
    bad = b"\x30\x08\x00\x05a/+/b\x00"
    events = conn.receive_data(bad, 1.0)
    assert type(events[-1]) is ProtocolViolation and events[-1].reason_code == 0x90


def test_invalid_subscribe_filter_v5_gets_suback_codes() -> None:
    conn, _ = connected(MQTT_5)
    sub = b"\x82\x0f\x00\x01\x00\x00\x03a/#\x01\x00\x03#/a\x01"
    events = conn.receive_data(sub, 1.0)
    assert [type(e) for e in events] == [SubscribeReceived]
    assert conn.invalid_filters(1) == (-1, 0x8F)
    conn.send_suback(1, [1, 0x8F])
    assert conn.state is State.CONNECTED


def test_keepalive_deadline_is_one_and_a_half_times() -> None:
    conn, _ = connected(MQTT_3_1_1, keepalive=10)
    assert not conn.keepalive_expired(15.0)
    assert conn.keepalive_expired(15.1)
    conn.receive_data(codec.encode(PingReq(), MQTT_3_1_1), 15.0)
    assert decode(conn.data_to_send(), MQTT_3_1_1) == [PingResp()]
    assert not conn.keepalive_expired(30.0)


def test_disconnect_with_session_expiry_change() -> None:
    conn, session = connected(MQTT_5)
    session.expiry_interval = 0
    events = conn.receive_data(codec.encode(Disconnect(0, {"session_expiry_interval": 10}), MQTT_5), 1.0)
    assert type(events[-1]) is ProtocolViolation  # 0 -> non-zero is not allowed
    conn, session = connected(MQTT_5)
    session.expiry_interval = 100
    events = conn.receive_data(codec.encode(Disconnect(4, {"session_expiry_interval": 10}), MQTT_5), 1.0)
    assert [type(e) for e in events] == [DisconnectReceived] and session.expiry_interval == 10


def test_queue_limit_and_expiry() -> None:
    session = SessionState("c", "@a:hub", max_queued=2)
    assert session.enqueue(Outgoing("t", b"1", 1))
    assert session.enqueue(Outgoing("t", b"2", 1, expires_at=5.0))
    assert not session.enqueue(Outgoing("t", b"3", 1))
    taken = session.take_sendable(10, now=6.0)
    assert [item.message.payload for item in taken] == [b"1"]  # the second expired
    assert session.dropped == 2


def test_subscribe_packet_roundtrip_through_connection() -> None:
    conn, _ = connected(MQTT_3_1_1)
    data = codec.encode(Subscribe(4, (Subscription("x/#", 1),)), MQTT_3_1_1)
    events = conn.receive_data(data, 1.0)
    assert events == [SubscribeReceived(Subscribe(4, (Subscription("x/#", 1),)))]


def test_server_topic_aliases_when_the_client_allows_them() -> None:
    conn, _ = connected(MQTT_5, properties={"topic_alias_maximum": 1})
    for topic in ("a/b", "a/b", "c/d"):
        conn.deliver(Outgoing(topic, b"x", 0), 1.0)
    sent = decode(conn.data_to_send(), MQTT_5)
    assert [(p.topic, p.properties.get("topic_alias")) for p in sent] == [("a/b", 1), ("", 1), ("c/d", None)]
    plain, _ = connected(MQTT_5)
    plain.deliver(Outgoing("a/b", b"x", 0), 1.0)
    plain.deliver(Outgoing("a/b", b"x", 0), 1.0)
    assert [p.topic for p in decode(plain.data_to_send(), MQTT_5)] == ["a/b", "a/b"]


def test_server_keep_alive_caps_mqtt5_keepalive() -> None:
    conn = Connection(Limits(max_keepalive=60), 0.0)
    conn.receive_data(codec.encode(Connect("c", keepalive=120, protocol_level=MQTT_5), MQTT_5), 0.0)
    conn.accept(SessionState("c", "@a:hub", MQTT_5), False, 0.0)
    (connack,) = decode(conn.data_to_send(), MQTT_5)
    assert connack.properties["server_keep_alive"] == 60
    assert conn.keepalive_expired(90.1)


def test_qos2_awaiting_pubrel_counts_against_receive_maximum() -> None:
    conn, _ = connected(MQTT_5, Limits(receive_maximum=2))
    for pid in (1, 2):
        conn.receive_data(codec.encode(Publish("a/b", b"x", 2, packet_id=pid), MQTT_5), 1.0)
        conn.ack_publish(pid, 2)
    events = conn.receive_data(codec.encode(Publish("a/b", b"x", 2, packet_id=3), MQTT_5), 1.0)
    assert type(events[-1]) is ProtocolViolation and events[-1].reason_code == 0x93


def test_slow_consumer_queue_is_bounded() -> None:
    conn, session = connected(MQTT_3_1_1)
    session.max_queued = 3  # the broker makes sessions with mqtt_max_queued_messages
    conn.write_blocked = True  # the transport said its buffer is full
    results = [conn.deliver(Outgoing("t/x", b"%d" % i, 0), 1.0) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert conn.data_to_send() == b"" and session.dropped == 2
    conn.write_blocked = False
    conn.flush(2.0)
    assert [p.payload for p in decode(conn.data_to_send(), MQTT_3_1_1)] == [b"0", b"1", b"2"]
