"""What the fuzzers check, protocol by protocol, on the pure layers (no sockets, no hub).

Each target is a function ``check(data: bytes) -> None`` that feeds untrusted bytes to the code a
request from the network goes through first, lets the *documented* errors pass and raises for
anything else: an undocumented exception (IndexError, KeyError, UnicodeDecodeError, struct.error,
TypeError, RecursionError, ...) escaping the code under test, or a property that does not hold
(a round trip that loses something, an accepted value that cannot be stored as an event). The
documented errors, read from the code:

* MQTT codec (``frontends/mqtt/codec.py``): :class:`MQTTCodecError` subclasses, each with a reason
  code >= 0x80; the connection state machine (``connection.py``) turns every one into a
  ``ProtocolViolation`` and never raises.
* CoAP: ``wire.parse_request`` answers None for anything it does not take (never raises);
  aiocoap's ``Message.decode`` raises ``UnparsableMessage``; ``translate``, ``decode_body`` and
  ``response_format`` raise ``MatrixError`` (the front end maps it to a 4.xx with a CBOR
  diagnostic, ``answer_of``).
* CBOR/JSON payload mapping (``frontends/payload_mapping.py``): ``PayloadError``.
* JSON (``matrix_core/canonical_json.py``): ``JSONSyntaxError`` (HTTP M_NOT_JSON) or another
  ``CanonicalJSONError`` (M_BAD_JSON).

Shared by ``tests/test_fuzz.py`` (bounded, fixed seed, in CI) and ``bench/fuzz.py`` (the long run).
"""
from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, Callable

import cbor2

from frontends.coap import wire
from frontends.coap.codes import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON
from frontends.coap.content import decode_body, decode_plain_body, encode_body, response_format
from frontends.coap.translate import ApiCall, translate
from frontends.mqtt.codec import Decoder, EncodeError, MQTTCodecError, encode
from frontends.mqtt.connection import (ConnectReceived, Connection, Limits, ProtocolViolation, PublishReceived,
                                     State, SubscribeReceived, UnsubscribeReceived)
from frontends.mqtt.constants import MQTT_5
from frontends.mqtt.messages import message_content, parse_mqtt, publish_content
from frontends.mqtt.routing import MAX_ALIAS_LOCALPART, alias_localpart, default_binding
from frontends.mqtt.topics import is_valid_topic_filter, topic_matches
from frontends.mqtt.packets import (Auth, ConnAck, Connect, Disconnect, PingReq, PingResp, PubAck, PubComp, Publish,
                                  PubRec, PubRel, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will)
from frontends.mqtt.session import Outgoing, SessionState
from frontends.payload_mapping import (PayloadError, content_to_mqtt_payload, device_view, from_device_cbor,
                                     from_event_value, mqtt_payload_to_content, to_device_cbor)
from matrix_core import account_data_rules, errors
from matrix_core.canonical_json import (CanonicalJSONError, JSONSyntaxError, encode_canonical_json, parse_json,
                                        parse_plain_json)
from matrix_core.client_api.http import split_raw_path
from matrix_core.client_api.router import client_api_segments
from matrix_core.client_api.routes import ROUTER

__all__ = ["TARGETS", "CORPORA", "KnownElsewhere"]


class KnownElsewhere(Exception):
    """An input in a class another change is fixing (named in the message): counted, not failed."""


# =============================================================================================
# MQTT
# =============================================================================================

BIG = 1 << 28


def _mqtt_corpus() -> list[bytes]:
    out = []
    for level in (4, 5):
        v5 = level == 5
        props = {"session_expiry_interval": 60, "receive_maximum": 10, "user_property": [("k", "v")]} if v5 else {}
        connect = Connect("dev-1", True, 30, "alice", b"secret", None, level, props)
        will = Will("home/dev/status", b"offline", 1, True,
                    {"will_delay_interval": 5, "content_type": "text/plain"} if v5 else {})
        pprops = {"payload_format_indicator": 1, "message_expiry_interval": 30, "topic_alias": 3,
                  "content_type": "application/json", "correlation_data": b"\x01\x02",
                  "response_topic": "r/t", "user_property": [("a", "b"), ("a", "c")]} if v5 else {}
        packets: list[Any] = [
            connect,
            Connect("", False, 0, None, None, will, level, {}),
            Connect("c", True, 65535, "u", b"\xff\x00" if v5 else b"p", will, level, props),
            ConnAck(True, 0, {"topic_alias_maximum": 5} if v5 else {}),
            Publish("home/kitchen/temp", b"21.5", 0),
            Publish("home/kitchen/temp", b'{"t":21.5,"u":"C"}', 1, False, False, 7, pprops),
            Publish("a/b", bytes(range(40)), 2, True, True, 65535, {}),
            Publish("$SYS/x", b"\xa1\x01\xf9\x3c\x00", 1, False, False, 1, {}),
            PubAck(7), PubRec(8), PubRel(9), PubComp(10),
            Subscribe(1, (Subscription("home/#", 1), Subscription("a/+/c", 2)), {}),
            Subscribe(2, (Subscription("$share/g/x/#", 0),), {}),
            SubAck(1, (0, 1, 2, 0x80), {}),
            Unsubscribe(3, ("home/#", "a/+/c"), {}),
            UnsubAck(3, (0, 0x11) if v5 else (), {}),
            PingReq(), PingResp(), Disconnect(),
        ]
        if v5:
            packets += [
                PubAck(7, 0x10, {"reason_string": "no subscribers"}), PubRec(8, 0x80, {}),
                PubRel(9, 0x92, {"reason_string": "x"}), PubComp(10, 0, {"user_property": [("k", "v")]}),
                Subscribe(4, (Subscription("t/#", 1, True, True, 2),), {"subscription_identifier": [7]}),
                Disconnect(0x04, {"session_expiry_interval": 0, "reason_string": "bye"}),
                Auth(0x18, {"authentication_method": "m", "authentication_data": b"d"}),
                Publish("", b"alias", 0, False, False, None, {"topic_alias": 3}),
            ]
        encoded = [encode(p, level) for p in packets]
        out += encoded
        # whole sessions: a CONNECT followed by what a device sends
        out.append(encoded[0] + b"".join(encoded[4:8]) + encoded[12] + encoded[15] + encode(PingReq(), level))
    return out


def _mqtt_sessions() -> list[bytes]:
    """Whole client streams for the connection state machine: a CONNECT, then traffic."""
    out = []
    for level in (4, 5):
        v5 = level == 5
        connect = encode(Connect("dev-1", True, 30, "alice", b"secret", None, level,
                                 {"topic_alias_maximum": 2, "receive_maximum": 2} if v5 else {}), None)
        traffic = [
            Publish("home/kitchen/temp", b"21.5", 0),
            Publish("home/kitchen/temp", b"22", 1, False, False, 7, {"topic_alias": 1} if v5 else {}),
            Publish("", b"alias", 1, False, False, 8, {"topic_alias": 1}) if v5 else Publish("x", b"", 1, packet_id=8),
            Publish("a/b", b"!refused", 2, False, False, 9, {}),
            Publish("a/b", b"dup", 2, False, True, 9, {}),
            PubRel(9), PubAck(1), PubRec(1), PubComp(1),
            Subscribe(1, (Subscription("home/#", 1), Subscription("a/+/c", 2)), {}),
            Unsubscribe(3, ("home/#",), {}),
            PingReq(),
        ]
        if v5:
            traffic.append(Disconnect(0, {"session_expiry_interval": 10}))
        else:
            traffic.append(Disconnect())
        enc = [encode(p, level) for p in traffic]
        out.append(connect + b"".join(enc))
        out.append(connect + b"".join(enc[3:6]))
        out.append(connect + enc[9] + enc[1] + enc[2])
        out.append(encode(Connect("refuse-me", True, 10, "u", b"p", None, level, {}), None) + enc[0])
    return out


class _Flagged:
    """A packet the codec decoded and flagged as a recoverable topic error."""

    __slots__ = ("packet",)

    def __init__(self, packet: Any) -> None:
        self.packet = packet

    def __eq__(self, other: object) -> bool:
        return type(other) is _Flagged and other.packet == self.packet

    def __repr__(self) -> str:
        return f"_Flagged({self.packet!r})"


def _feed_all(decoder: Decoder, data: bytes, split: int) -> list[Any]:
    """Feed `data` in two pieces, resuming after recoverable errors as a session does."""
    got: list[Any] = []
    for piece in (data[:split], data[split:]):
        while True:
            try:
                got += decoder.feed(piece)
            except MQTTCodecError as exc:
                if not isinstance(exc.reason_code, int) or not 0x80 <= exc.reason_code <= 0xFF:
                    raise AssertionError(f"reason code {exc.reason_code!r} is not an error code") from None
                if "truncated packet (" in exc.message:
                    # the decoder's last-resort net caught an IndexError/struct.error: a parser bug
                    raise AssertionError(f"decoder leaked an internal error: {exc.message}") from None
                got += exc.decoded
                if not exc.recoverable:
                    return got
                got.append(_Flagged(exc.packet))  # decoded, but with a topic error: not re-encodable
                piece = b""
                continue
            break
    return got


def check_mqtt_codec(data: bytes) -> None:
    """Any bytes, at each protocol level, whole and split: only codec errors; whatever decodes
    (cleanly) re-encodes to a packet that decodes to the same value."""
    split = (data[0] if data else 0) % (len(data) + 1)
    for level in (None, 4, 5):
        decoded = _feed_all(Decoder(BIG, level), data, split)
        whole = _feed_all(Decoder(BIG, level), data, len(data))
        if decoded != whole:
            raise AssertionError(f"level {level}: fragmentation changed the result: {whole!r} vs {decoded!r}")
        lvl = level
        for pkt in whole:
            flagged = type(pkt) is _Flagged
            if flagged:
                pkt = pkt.packet
            if type(pkt) is Connect and level is None:
                lvl = pkt.protocol_level  # a server's decoder adopts the CONNECT's level
            if not flagged:
                _round_trip(pkt, lvl)
                if type(pkt) is Publish and pkt.topic:
                    _publish_as_event(pkt)


def _round_trip(pkt: Any, level: int | None) -> None:
    if level is None:
        return
    try:
        raw = encode(pkt, level if type(pkt) is not Connect else None)
    except EncodeError:
        # Decoded, but not representable: only packets the codec flags as recoverable errors
        # (wildcard topics) are allowed here, and those never reach this point.
        raise
    again = Decoder(BIG, level).feed(raw)
    if again != [pkt]:
        raise AssertionError(f"round trip changed the packet: {pkt!r} -> {again!r}")


def _publish_as_event(pkt: Publish) -> None:
    """A PUBLISH as the broker stores it (room event content) and delivers it again: valid
    canonical JSON, the same topic, payload and QoS back, encodable at both levels."""
    mqtt = publish_content(pkt.topic, pkt.payload, pkt.qos, pkt.properties)
    content = message_content(mqtt)
    encode_canonical_json(content)
    parsed = parse_mqtt(mqtt)
    if parsed is None or parsed[:3] != (pkt.topic, pkt.payload, pkt.qos):
        raise AssertionError(f"PUBLISH does not come back from its event: {pkt!r} -> {parsed!r}")
    topic, payload, qos, props = parsed
    encode(Publish(topic, payload, qos, True, False, 1 if qos else None, props), 5)
    encode(Publish(topic, payload, qos, True, False, 1 if qos else None), 4)
    key, topic_filter = default_binding(topic, 2)
    if not topic_matches(topic_filter, topic) or not is_valid_topic_filter(topic_filter):
        raise AssertionError(f"default binding {topic_filter!r} does not cover {topic!r}")
    local = alias_localpart(key)
    if len(local) > MAX_ALIAS_LOCALPART or not local.isascii():
        raise AssertionError(f"alias localpart {local!r}")


class _Broker:
    """The broker's side of the state machine, reduced to always saying yes."""

    def __init__(self) -> None:
        self.conn = Connection(Limits(max_packet_size=4096, receive_maximum=8, topic_alias_maximum=4), 0.0)

    def handle(self, events: list[Any], now: float) -> None:
        conn = self.conn
        while events:
            ev = events.pop(0)
            kind = type(ev)
            if kind is ConnectReceived:
                pkt = ev.packet
                session = SessionState(pkt.client_id, "@alice:hub", pkt.protocol_level)
                if conn.state is not State.AUTHENTICATING:
                    continue  # closed behind its CONNECT: the broker checks this before answering
                if pkt.client_id.startswith("refuse"):
                    conn.refuse(0x87)
                    continue
                events += conn.accept(session, False, now)
                conn.deliver(Outgoing("to/device", b"hello", 1, False, {"content_type": "text/plain"}, 1), now)
                conn.deliver(Outgoing("to/device", b"again", 0), now)
            elif kind is PublishReceived:
                pkt = ev.packet
                if pkt.qos:
                    conn.ack_publish(pkt.packet_id, pkt.qos, 0x10 if pkt.payload[:1] == b"!" else 0)
            elif kind is SubscribeReceived:
                pkt = ev.packet
                bad = conn.invalid_filters(pkt.packet_id)
                codes = [c if c >= 0 else s.qos for c, s in zip(bad, pkt.subscriptions)] if bad else \
                    [s.qos for s in pkt.subscriptions]
                conn.send_suback(pkt.packet_id, codes, "ok")
            elif kind is UnsubscribeReceived:
                conn.send_unsuback(ev.packet.packet_id, [0] * len(ev.packet.topic_filters))
            elif kind is ProtocolViolation:
                if not 0x80 <= ev.reason_code <= 0xFF:
                    raise AssertionError(f"violation with reason code {ev.reason_code!r}")


def check_mqtt_connection(data: bytes) -> None:
    """A byte stream into one connection (the broker accepting everything): the state machine
    never raises, and every byte it sends back is valid MQTT at the negotiated level."""
    broker = _Broker()
    conn = broker.conn
    half = len(data) // 2
    now = 0.0
    sent = bytearray()
    for piece in (data[:half], data[half:]):
        now += 1.0
        broker.handle(conn.receive_data(piece, now), now)
        sent += conn.data_to_send()
        if conn.state is State.CLOSED:
            break
    conn.keepalive_expired(now + 1000)
    conn.close()
    sent += conn.data_to_send()
    if sent:
        level = conn.level or 4
        client = Decoder(BIG, level)
        # a server may answer a bad protocol name/level with a 3.1.1 CONNACK 0x01
        if sent == b"\x20\x02\x00\x01":
            return
        client._set_level(level)  # noqa: SLF001 - the client knows the level it asked for
        try:
            client.feed(bytes(sent))
        except MQTTCodecError as exc:
            raise AssertionError(f"the server sent invalid MQTT {level}: {exc} ({bytes(sent).hex()})") from None


# =============================================================================================
# CoAP
# =============================================================================================

TOKEN = "syt_YWxpY2U_abcdefghijklmnopqrst_0abcde"


def _coap_corpus() -> list[bytes]:
    send = ["_m", "c", "a", "v1", "r", "#sensors:hub", "s", "m.room.message"]
    reading = cbor2.dumps({"msgtype": "m.text", "body": "21.5", "t": 21.5, "raw": b"\x01\x02"})
    opts = [(11, s.encode()) for s in send] + [(15, f"a={TOKEN}".encode())]
    out = [
        wire.encode(wire.CON, 2, 1, b"tk", opts, reading),
        wire.encode(wire.NON, 2, 2, b"", opts, cbor2.dumps({b"msgtype": b"m.text", b"body": b"hi"})),
        wire.encode(wire.CON, 3, 3, b"12345678", [(11, b"9"), (11, b"!r:hub"), (11, b"m.room.message"),
                                                  (11, b"txn1"), (12, b"\x32"), (17, b"\x32"),
                                                  (256, TOKEN.encode())], b'{"body":"x","n":1}'),
        wire.encode(wire.CON, 1, 4, b"g", [(11, b"7"), (15, b"s=s12"), (15, b"t=0"), (256, TOKEN.encode())]),
        wire.encode(wire.CON, 1, 5, b"g", [(11, b"_matrix"), (11, b"client"), (11, b"v3"), (11, b"rooms"),
                                           (11, b"!r:hub"), (11, b"messages"), (15, b"dir=b"),
                                           (15, b"limit=5"), (17, b"\x3c")]),
        wire.encode(wire.CON, 3, 6, b"s", [(11, b"8"), (11, b"!r:hub"), (11, b"org.example.s"), (12, b"\x3c")],
                    cbor2.dumps({"v": [1, 2.5, None, True], 1: "int key"})),
        wire.encode(wire.CON, 4, 7, b"", [(11, b"_m"), (11, b"c"), (11, b"v3"), (11, b"dv"), (11, b"D1")]),
        wire.encode(wire.CON, 1, 8, b"o", [(6, b""), (11, b"E"), (11, b"!r:hub"), (23, b"\x02")]),  # Observe, Block2
        wire.encode(wire.CON, 2, 9, b"b", [(11, b"G"), (27, b"\x08"), (60, b"\x10")], b"\xa0"),  # Block1, Size1
        wire.encode(wire.CON, 0, 10, b""),  # ping
        wire.encode(wire.NON, 5, 11, b"x", [(11, b"0")]),  # FETCH: no API twin
    ]
    return out


def _answer_error(err: errors.MatrixError, method: str, content_format: int) -> None:
    from frontends.coap.server import answer_of  # imports aiocoap; only when a target runs
    from matrix_core.client_api.request import ApiResponse
    answer = answer_of(ApiResponse(err.status, err.to_json()), method, content_format)
    if not (0x80 <= answer.code < 0xC0):  # 4.xx, or 5.xx for a 5xx status
        raise AssertionError(f"{err!r} became CoAP code {answer.code >> 5}.{answer.code & 31:02d}")
    if err.status >= 500:
        raise AssertionError(f"bad input answered {err.status}: {err!r}")


def _coap_request(code: int, path: list[str], query: list[str], token: bytes | None, accept: int | None,
                  content_format: int | None, payload: bytes) -> None:
    """What ApiResource.answer does before dispatch: a call and a body, or a clean 4.xx."""
    method = "GET"
    response_cf = CONTENT_FORMAT_CBOR
    try:
        response_cf = response_format(accept)
        call = translate(code, path, query, token)
        method = call.method
        if not isinstance(call, ApiCall) or not all(type(s) is str for s in call.segments):
            raise AssertionError(f"translate returned {call!r}")
        try:
            ROUTER.resolve(call.method, call.segments)
        except errors.MatrixError as err:
            _answer_error(err, method, response_cf)
        value = decode_body(payload, content_format)
        if value is not None:
            encode_canonical_json(value)  # what an event's content must be
            encode_body(value, response_cf)
    except errors.MatrixError as err:
        _answer_error(err, method, response_cf)


def check_coap(data: bytes) -> None:
    """A datagram: the hub's own fast path and aiocoap's decoding both end in an API call or a
    clean CoAP error; where both parse it, they agree."""
    import aiocoap
    from aiocoap.error import UnparsableMessage
    fast = wire.parse_request(data)
    if fast is not None:
        _coap_request(fast.code, fast.uri_path, fast.uri_query, fast.access_token, fast.accept,
                      fast.content_format, fast.payload)
    try:
        msg = aiocoap.Message.decode(data)
    except UnparsableMessage:
        return
    except UnicodeDecodeError:
        raise KnownElsewhere("non-UTF-8 Uri-Path/Uri-Query in aiocoap's decoder (R3, the CoAP change)") from None
    code = int(msg.code)
    if not 1 <= code <= 31:
        return  # responses, empty messages and unknown classes never reach the resource
    opt = msg.opt
    token_opts = opt.get_option(256)
    token = token_opts[-1].value if token_opts else None
    accept = None if opt.accept is None else int(opt.accept)
    cf = None if opt.content_format is None else int(opt.content_format)
    if fast is not None:
        seen = (list(opt.uri_path), list(opt.uri_query), token, accept, cf, msg.payload)
        mine = (fast.uri_path, fast.uri_query, fast.access_token, fast.accept, fast.content_format, fast.payload)
        if seen != mine:
            raise AssertionError(f"the fast path and aiocoap disagree: {mine!r} vs {seen!r}")
    _coap_request(code, list(opt.uri_path), list(opt.uri_query), token, accept, cf, msg.payload)


# =============================================================================================
# CBOR payload mapping
# =============================================================================================


def _cbor_corpus() -> list[bytes]:
    import datetime
    import decimal
    import fractions
    import ipaddress
    import uuid
    values: list[Any] = [
        0, -1, 23, 24, 255, 65536, 2**53, -(2**64), 2**70, 21.5, -0.0, float("nan"), float("inf"), 1e300,
        3.4028234663852886e38, 5.960464477539063e-08, "", "héllo", "$unit", b"", b"\xde\xad\xbe\xef",
        True, False, None, cbor2.undefined, cbor2.CBORSimpleValue(16), cbor2.CBORSimpleValue(200),
        [], [1, [2, [3, [4]]]], {}, {"msgtype": "m.text", "body": "x"}, {"$f": "x", "$$g": 1},
        {1: "on", 2: b"off"}, {b"msgtype": b"m.text", b"body": b"hi"}, {(1, 2): "tuple key"},
        cbor2.CBORTag(40000, [1, 2]), cbor2.CBORTag(1, 1600000000), cbor2.CBORTag(2**64 - 1, {"": float("nan")}), datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
        decimal.Decimal("1.5"), fractions.Fraction(1, 3), uuid.UUID(int=1), ipaddress.ip_address("10.0.0.1"),
        {"t": 21.5, "h": 40, "ts": 1700000000000, "raw": b"\x01", "nested": {"a": [1.5, None]}},
    ]
    out = [cbor2.dumps(v) for v in values]
    out += [b"\x9f\x01\x02\xff", b"\xbf\x61a\x01\xff", b"\x5f\x41a\x41b\xff", b"\x7f\x61a\x61b\xff",
            b"\xf9\x7e\x00", b"\xfa\x7f\xc0\x00\x00", b"\xc2\x49\x01" + bytes(8), b"\xd8\x19\x00", b"\xf8\x20"]
    return out


def _same_device_value(a: Any, b: Any) -> bool:
    """Equality of decoded CBOR that tells 1 from 1.0 from True, -0.0 from 0.0, and NaN == NaN."""
    ta, tb = type(a), type(b)
    if ta is not tb:
        return False
    if ta is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_device_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):  # dict, and cbor2's frozendict (a map inside a tag or a key)
        if len(a) != len(b):
            return False
        unmatched = list(b.items())  # by value, not by lookup: a NaN key is never found by lookup
        for k, v in a.items():
            for i, (k2, v2) in enumerate(unmatched):
                if _same_device_value(k, k2) and _same_device_value(v, v2):
                    del unmatched[i]
                    break
            else:
                return False
        return True
    if ta is cbor2.CBORTag:
        return a.tag == b.tag and _same_device_value(a.value, b.value)
    return bool(a == b)


def check_cbor(data: bytes) -> None:
    """A CBOR payload from a device: an event value that is valid canonical JSON and maps back to
    the same CBOR value (losslessly), or PayloadError; the MQTT raw-payload carrier reproduces the
    exact bytes under every hint; the CoAP body decoder answers a value or M_NOT_JSON."""
    try:
        value = from_device_cbor(data)
    except PayloadError:
        value = None
        ok = False
    else:
        ok = True
    if ok:
        encode_canonical_json(value)
        again = to_device_cbor(value)
        if to_device_cbor(from_device_cbor(again)) != again:
            raise AssertionError(f"canonical CBOR of the mapped value is not stable: {value!r} -> {again.hex()}")
        if not _same_device_value(cbor2.loads(again), cbor2.loads(data)):
            raise AssertionError(f"CBOR mapping is lossy: {data.hex()} -> {value!r} -> {again.hex()}")
        cbor2.dumps(device_view(value), canonical=True)
    for hint in (None, "application/cbor", 60, "text/plain", "application/octet-stream; x=y", "bogus"):
        content = mqtt_payload_to_content(data, hint)
        encode_canonical_json(content)
        back = content_to_mqtt_payload(content)
        if back != data:
            raise AssertionError(f"MQTT payload not reproduced under hint {hint!r}: {content!r}")
    for cf in (None, CONTENT_FORMAT_CBOR):
        try:
            v = decode_body(data, cf)
        except errors.MatrixError as err:
            if err.errcode != "M_NOT_JSON" or err.status != 400:
                raise AssertionError(f"CBOR body refused with {err.status} {err.errcode}") from None
            if ok:
                raise AssertionError("decode_body refused what from_device_cbor accepted") from None
        else:
            if v is not None:
                encode_canonical_json(v)


# =============================================================================================
# JSON validation
# =============================================================================================


def _json_corpus() -> list[bytes]:
    texts = [
        '{"msgtype":"m.text","body":"hello"}',
        '{"a":[1,2,{"b":null}],"c":true,"d":false,"e":-9007199254740991}',
        '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"p"}',
        '{"preset":"private_chat","name":"R","invite":["@bob:hub"],"initial_state":[{"type":"x","content":{}}]}',
        '[1e10, 2.0, -0, 0.5, 1E+2, 1e-2]', '"\\u00e9\\ud83d\\ude00\\n\\t\\\\"', '"\\ud800"', '"\\udc00\\ud800"',
        '123', 'null', 'true', '  {"k" : "v" }  ', '{"k":"v","k":"w"}', '{"t":21.5}', 'NaN', '[Infinity]',
        '{"big":9007199254740992}', '[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]', '{"é":"€","\\u0000":""}',
        '{"filter":{"room":{"timeline":{"limit":10}}}}', '{"$f":"21.5"}',
        '{"tags":{"m.favourite":{"order":0.5}}}', '{"order":1e-300,"x":-0.0,"y":[1.5e308]}',
    ]
    return [t.encode("utf-8") for t in texts] + [b"\xef\xbb\xbf{}", '{"a":"\u00ff"}'.encode("latin-1")]


def check_json(data: bytes) -> None:
    """A request body: parse_json gives a value that re-encodes canonically and parses back to
    itself, or a CanonicalJSONError the HTTP layer turns into M_NOT_JSON / M_BAD_JSON; the CoAP
    JSON body decoder and the MQTT payload carrier agree with it and never raise otherwise."""
    try:
        value = parse_json(data)
    except JSONSyntaxError:
        value, ok = None, False
    except CanonicalJSONError:
        value, ok = None, False
    else:
        ok = True
    if ok:
        text = encode_canonical_json(value)
        if parse_json(text) != value:
            raise AssertionError(f"canonical JSON does not parse back: {text!r}")
    try:
        v = decode_body(data, CONTENT_FORMAT_JSON)
    except errors.MatrixError as err:
        if err.status not in (400, 413):
            raise AssertionError(f"JSON body refused with {err.status} {err.errcode}") from None
    else:
        if v is not None:
            encode_canonical_json(v)
    check_plain_json(data)
    for hint in (None, "application/json", 50):
        content = mqtt_payload_to_content(data, hint)
        encode_canonical_json(content)
        if content_to_mqtt_payload(content) != data:
            raise AssertionError(f"MQTT JSON payload not reproduced: {content!r}")
    # the request target: any path and query splits, and matches a route or is refused cleanly
    raw_path = "/" + data.decode("latin-1")
    segments, query = split_raw_path(raw_path)
    for s in segments:
        if type(s) is not str:
            raise AssertionError(f"segment {s!r}")
    try:
        api = client_api_segments(segments)
        ROUTER.resolve("GET", api)
    except errors.MatrixError as err:
        if err.status >= 500:
            raise AssertionError(f"path refused with {err.status}") from None


def check_plain_json(data: bytes) -> None:
    """An account data or tag body (not an event: fractions kept): parse_plain_json gives a value
    or a CanonicalJSONError (M_NOT_JSON / M_BAD_JSON); an object is stored and read back equal,
    or refused with M_BAD_JSON; CoAP's plain reading of the same JSON body agrees."""
    try:
        value = parse_plain_json(data)
    except CanonicalJSONError:  # JSONSyntaxError included
        value = _REFUSED
    if isinstance(value, dict):
        try:
            stored = account_data_rules.encode_content(value)
        except errors.MatrixError as err:
            if err.errcode != "M_BAD_JSON":
                raise AssertionError(f"account data refused with {err.errcode}") from None
        else:
            if account_data_rules.decode_content(stored) != value:
                raise AssertionError(f"account data not read back: {stored!r}")
    try:
        plain = decode_plain_body(data, CONTENT_FORMAT_JSON)
    except errors.MatrixError as err:
        if err.status not in (400, 413):
            raise AssertionError(f"plain JSON body refused with {err.status} {err.errcode}") from None
    else:
        if isinstance(plain, dict):
            try:
                account_data_rules.encode_content(plain)
            except errors.MatrixError as err:
                if err.errcode != "M_BAD_JSON":
                    raise AssertionError(f"CoAP account data refused with {err.errcode}") from None


_REFUSED = object()


# =============================================================================================

#: protocol -> (check, corpus factory)
TARGETS: dict[str, Callable[[bytes], None]] = {
    "mqtt": check_mqtt_codec,
    "mqtt-connection": check_mqtt_connection,
    "coap": check_coap,
    "cbor": check_cbor,
    "json": check_json,
}
CORPORA: dict[str, Callable[[], list[bytes]]] = {
    "mqtt": _mqtt_corpus,
    "mqtt-connection": lambda: _mqtt_sessions(),
    "coap": _coap_corpus,
    "cbor": _cbor_corpus,
    "json": _json_corpus,
}
