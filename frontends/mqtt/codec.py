"""Sans-I/O MQTT 3.1.1 / 5.0 codec: ``encode(packet, protocol_level)`` and an incremental ``Decoder``.

No sockets, no asyncio, no clocks: the caller feeds bytes in and writes bytes out.

Errors
------
Every decoding failure raises a subclass of :class:`MalformedPacket` (reason 0x81) or
:class:`ProtocolError` (reason 0x82 and the specific ones below); ``exc.reason_code`` is the MQTT 5
reason code to put in a DISCONNECT / CONNACK (3.1.1 sessions map or just close).

* :class:`PacketTooLarge` (0x95): raised from the fixed header, before the body is buffered.
* :class:`UnsupportedProtocolVersion` (0x84, ``v311_return_code`` 0x01): bad protocol name/level.
* :class:`InvalidTopicName` (0x90): PUBLISH (or Will) topic with ``+``/``#``, or empty topic.
* :class:`InvalidTopicFilter` (0x8F): SUBSCRIBE/UNSUBSCRIBE filter with misplaced wildcards or a
  malformed ``$share/``; ``exc.invalid`` lists the indexes of the bad filters.

The topic errors are *recoverable*: the packet was completely framed and decoded, it is attached
as ``exc.packet``, the decoder stays in sync, and the session may answer (PUBACK 0x90, SUBACK 0x8F
per filter) and keep feeding (``feed(b"")`` resumes with any bytes already buffered). Any other
error is fatal: the decoder re-raises it from every later ``feed``. Packets decoded earlier in the
same ``feed`` call are on ``exc.decoded`` so none are lost.

Encoding a packet that cannot be represented (bad packet id, MQTT 5 field under 3.1.1, wildcard in
a PUBLISH topic, ...) raises :class:`EncodeError` (a ``ValueError``).
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from . import topics as _topics
from .constants import (
    CONNECT_CLEAN_START,
    CONNECT_PASSWORD,
    CONNECT_RESERVED,
    CONNECT_USERNAME,
    CONNECT_WILL,
    CONNECT_WILL_RETAIN,
    FIXED_HEADER_FLAGS,
    MAX_PACKET_SIZE,
    MAX_REMAINING_LENGTH,
    MAX_STRING_BYTES,
    MQTT_3_1_1,
    MQTT_5,
    PROPERTIES_BY_ID,
    PROPERTIES_BY_NAME,
    PROTOCOL_NAME_BYTES,
    REASON_CODES_BY_PACKET,
    SHARED_SUBSCRIPTION_PREFIX,
    SUBACK_V311_RETURN_CODES,
    SUPPORTED_PROTOCOL_LEVELS,
    WILL_PROPERTIES,
    PacketType,
    PropertySpec,
    PropertyType,
)
from .packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

__all__ = [
    "MQTTCodecError",
    "MalformedPacket",
    "ProtocolError",
    "PacketTooLarge",
    "UnsupportedProtocolVersion",
    "InvalidTopicName",
    "InvalidTopicFilter",
    "EncodeError",
    "Decoder",
    "encode",
    "encode_varint",
]


# =========================================================================== errors


class MQTTCodecError(Exception):
    """Base of all decoding errors. ``reason_code``: MQTT 5 reason code; ``message``: detail;
    ``packet``: the decoded packet when the error is recoverable (else ``None``); ``decoded``:
    packets decoded before the error in the same ``feed`` call."""

    default_reason_code = 0x80

    def __init__(self, reason_code: int | None = None, message: str = "", *, packet: Any = None) -> None:
        self.reason_code = self.default_reason_code if reason_code is None else reason_code
        self.message = message
        self.packet = packet
        self.decoded: list[Any] = []
        super().__init__(f"0x{self.reason_code:02X}: {message}")

    @property
    def recoverable(self) -> bool:
        return self.packet is not None


class MalformedPacket(MQTTCodecError):
    default_reason_code = 0x81


class ProtocolError(MQTTCodecError):
    default_reason_code = 0x82


class PacketTooLarge(ProtocolError):
    default_reason_code = 0x95


class UnsupportedProtocolVersion(ProtocolError):
    """Protocol name is not ``MQTT`` or the level is not 4/5. Answer CONNACK 0x01 (3.1.1 form)
    or 0x84 (5.0 form), then close."""

    default_reason_code = 0x84
    v311_return_code = 0x01

    def __init__(self, message: str = "", *, protocol_name: str | None = None,
                 protocol_level: int | None = None) -> None:
        super().__init__(0x84, message)
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level


class InvalidTopicName(ProtocolError):
    default_reason_code = 0x90


class InvalidTopicFilter(ProtocolError):
    default_reason_code = 0x8F

    def __init__(self, reason_code: int | None = None, message: str = "", *, packet: Any = None,
                 invalid: tuple[int, ...] = ()) -> None:
        super().__init__(reason_code, message, packet=packet)
        self.invalid = invalid


class EncodeError(ValueError):
    """The packet cannot be encoded for this protocol level."""


def _malformed(msg: str) -> MalformedPacket:
    return MalformedPacket(0x81, msg)


def _protocol(msg: str) -> ProtocolError:
    return ProtocolError(0x82, msg)


# =========================================================================== primitive readers
# All take (data: bytes, p: int, end: int) and return (value, new_p); they never read past end.

_unpack_H = struct.Struct(">H").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_pack_H = struct.Struct(">H").pack
_pack_I = struct.Struct(">I").pack


def _read_u8(data: bytes, p: int, end: int) -> tuple[int, int]:
    if p >= end:
        raise _malformed("truncated byte")
    return data[p], p + 1


def _read_u16(data: bytes, p: int, end: int) -> tuple[int, int]:
    if p + 2 > end:
        raise _malformed("truncated two-byte integer")
    return (data[p] << 8) | data[p + 1], p + 2


def _read_u32(data: bytes, p: int, end: int) -> tuple[int, int]:
    if p + 4 > end:
        raise _malformed("truncated four-byte integer")
    return _unpack_I(data, p)[0], p + 4


def _read_varint(data: bytes, p: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(4):
        if p >= end:
            raise _malformed("truncated variable byte integer")
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if i and b == 0:
                raise _malformed("variable byte integer not minimally encoded")
            return value, p
        shift += 7
    raise _malformed("variable byte integer longer than 4 bytes")


def _read_str(data: bytes, p: int, end: int) -> tuple[str, int]:
    if p + 2 > end:
        raise _malformed("truncated string length")
    e = p + 2 + ((data[p] << 8) | data[p + 1])
    if e > end:
        raise _malformed("string runs past the end of the packet")
    try:
        s = data[p + 2:e].decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("invalid UTF-8 in string") from None
    if "\x00" in s:
        raise _malformed("U+0000 in string")
    return s, e


def _read_bin(data: bytes, p: int, end: int) -> tuple[bytes, int]:
    if p + 2 > end:
        raise _malformed("truncated binary data length")
    e = p + 2 + ((data[p] << 8) | data[p + 1])
    if e > end:
        raise _malformed("binary data runs past the end of the packet")
    return data[p + 2:e], e


def _read_pair(data: bytes, p: int, end: int) -> tuple[tuple[str, str], int]:
    k, p = _read_str(data, p, end)
    v, p = _read_str(data, p, end)
    return (k, v), p


_READERS: dict[PropertyType, Callable[[bytes, int, int], tuple[Any, int]]] = {
    PropertyType.BYTE: _read_u8,
    PropertyType.TWO_BYTE_INT: _read_u16,
    PropertyType.FOUR_BYTE_INT: _read_u32,
    PropertyType.VARINT: _read_varint,
    PropertyType.UTF8_STRING: _read_str,
    PropertyType.BINARY: _read_bin,
    PropertyType.UTF8_PAIR: _read_pair,
}
# id -> (spec, reader) for the decode loop
_PROP_DECODE: dict[int, tuple[PropertySpec, Callable[[bytes, int, int], tuple[Any, int]]]] = {
    pid: (spec, _READERS[spec.type]) for pid, spec in PROPERTIES_BY_ID.items()
}


def _read_props(data: bytes, p: int, end: int, ctx: int) -> tuple[Any, int]:
    """Read an MQTT 5 property block (length + properties) for packet type *ctx*."""
    if p < end and data[p] == 0:
        return NO_PROPERTIES, p + 1
    plen, p = _read_varint(data, p, end)
    pend = p + plen
    if pend > end:
        raise _malformed("property length runs past the end of the packet")
    props: dict[str, Any] = {}
    while p < pend:
        pid, p = _read_varint(data, p, pend)
        entry = _PROP_DECODE.get(pid)
        if entry is None:
            raise _malformed(f"unknown property identifier 0x{pid:02X}")
        spec, reader = entry
        if ctx not in spec.packets:
            raise _malformed(f"property {spec.name} is not allowed in {_ctx_name(ctx)}")
        value, p = reader(data, p, pend)
        if spec.min_value is not None and value < spec.min_value:
            raise _protocol(f"property {spec.name} value {value} below {spec.min_value}")
        if spec.max_value is not None and value > spec.max_value:
            raise _protocol(f"property {spec.name} value {value} above {spec.max_value}")
        name = spec.name
        if spec.multiple:
            lst = props.get(name)
            if lst is None:
                props[name] = [value]
            else:
                if ctx != PacketType.PUBLISH and name == "subscription_identifier":
                    raise _protocol(f"property {name} included more than once")
                lst.append(value)
        elif name in props:
            raise _protocol(f"property {name} included more than once")
        else:
            props[name] = value
    return props, p


def _ctx_name(ctx: int) -> str:
    return "Will properties" if ctx == WILL_PROPERTIES else PacketType(ctx).name


# =========================================================================== packet decoders
# Signature: (level, b1, data, p, end) -> packet; [p, end) is the variable header + payload.


def _dec_connect(level: int | None, b1: int, data: bytes, p: int, end: int) -> Connect:
    if data[p:p + 6] != PROTOCOL_NAME_BYTES:
        name = None
        try:
            name, q = _read_str(data, p, end)
            lvl = data[q] if q < end else None
        except MQTTCodecError:
            lvl = None
        raise UnsupportedProtocolVersion(f"unsupported protocol name {name!r}",
                                         protocol_name=name, protocol_level=lvl)
    p += 6
    if p + 4 > end:
        raise _malformed("truncated CONNECT variable header")
    plevel = data[p]
    if plevel not in SUPPORTED_PROTOCOL_LEVELS:
        raise UnsupportedProtocolVersion(f"unsupported protocol level {plevel}",
                                         protocol_name="MQTT", protocol_level=plevel)
    flags = data[p + 1]
    keepalive = (data[p + 2] << 8) | data[p + 3]
    p += 4
    if flags & CONNECT_RESERVED:
        raise _malformed("CONNECT reserved flag is set")
    has_will = flags & CONNECT_WILL
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & CONNECT_WILL_RETAIN)
    if not has_will and (will_qos or will_retain):
        raise _malformed("Will QoS/Retain set without the Will flag")
    if will_qos == 3:
        raise _malformed("Will QoS 3")
    if plevel == MQTT_3_1_1 and flags & CONNECT_PASSWORD and not flags & CONNECT_USERNAME:
        raise _malformed("password flag without user name flag (3.1.1)")
    v5 = plevel == MQTT_5
    props: Any = NO_PROPERTIES
    if v5:
        props, p = _read_props(data, p, end, PacketType.CONNECT)
    client_id, p = _read_str(data, p, end)
    will = None
    bad_will_topic = False
    if has_will:
        wprops: Any = NO_PROPERTIES
        if v5:
            wprops, p = _read_props(data, p, end, WILL_PROPERTIES)
        wtopic, p = _read_str(data, p, end)
        wpayload, p = _read_bin(data, p, end)
        will = Will(wtopic, wpayload, will_qos, will_retain, wprops)
        bad_will_topic = not wtopic or "+" in wtopic or "#" in wtopic
    username = password = None
    if flags & CONNECT_USERNAME:
        username, p = _read_str(data, p, end)
    if flags & CONNECT_PASSWORD:
        password, p = _read_bin(data, p, end)
    if p != end:
        raise _malformed("trailing bytes after CONNECT payload")
    pkt = Connect(client_id, bool(flags & CONNECT_CLEAN_START), keepalive, username, password,
                  will, plevel, props)
    if bad_will_topic:
        raise InvalidTopicName(0x90, f"invalid Will topic {will.topic!r}", packet=pkt)  # type: ignore[union-attr]
    return pkt


def _dec_connack(level: int | None, b1: int, data: bytes, p: int, end: int) -> ConnAck:
    if end - p < 2:
        raise _malformed("truncated CONNACK")
    flags = data[p]
    code = data[p + 1]
    if flags & 0xFE:
        raise _malformed("CONNACK reserved flag bits set")
    session_present = bool(flags & 1)
    p += 2
    props: Any = NO_PROPERTIES
    if level == MQTT_5:
        if code not in REASON_CODES_BY_PACKET[PacketType.CONNACK]:
            raise _malformed(f"invalid CONNACK reason code 0x{code:02X}")
        props, p = _read_props(data, p, end, PacketType.CONNACK)
        if code >= 0x80 and session_present:
            raise _protocol("session present with a failing CONNACK")
    else:
        if code > 5:
            raise _malformed(f"invalid CONNACK return code {code}")
        if code and session_present:
            raise _protocol("session present with a failing CONNACK")
    if p != end:
        raise _malformed("trailing bytes in CONNACK")
    return ConnAck(session_present, code, props)


def _dec_publish(level: int | None, b1: int, data: bytes, p: int, end: int) -> Publish:
    qos = (b1 >> 1) & 3
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3")
    dup = bool(b1 & 0x08)
    if dup and not qos:
        raise _malformed("DUP flag set on a QoS 0 PUBLISH")
    if p + 2 > end:
        raise _malformed("truncated PUBLISH topic length")
    te = p + 2 + ((data[p] << 8) | data[p + 1])
    if te > end:
        raise _malformed("PUBLISH topic runs past the end of the packet")
    try:
        topic = data[p + 2:te].decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("invalid UTF-8 in PUBLISH topic") from None
    if "\x00" in topic:
        raise _malformed("U+0000 in PUBLISH topic")
    p = te
    if qos:
        if p + 2 > end:
            raise _malformed("truncated PUBLISH packet identifier")
        packet_id = (data[p] << 8) | data[p + 1]
        if not packet_id:
            raise _protocol("PUBLISH with packet identifier 0")
        p += 2
    else:
        packet_id = None
    if level == MQTT_5:
        if p < end and data[p] == 0:
            props: Any = NO_PROPERTIES
            p += 1
        else:
            props, p = _read_props(data, p, end, PacketType.PUBLISH)
    else:
        props = NO_PROPERTIES
    pkt = Publish(topic, data[p:end], qos, bool(b1 & 1), dup, packet_id, props)
    if "+" in topic or "#" in topic:
        raise InvalidTopicName(0x90, f"wildcard in PUBLISH topic {topic!r}", packet=pkt)
    if not topic:
        if level != MQTT_5:
            raise InvalidTopicName(0x90, "empty PUBLISH topic", packet=pkt)
        if "topic_alias" not in props:
            raise _protocol("empty PUBLISH topic without a Topic Alias")
    return pkt


def _make_dec_pubresp(cls: type, ptype: PacketType) -> Callable[..., Any]:
    allowed = REASON_CODES_BY_PACKET[ptype]
    what = ptype.name

    def dec(level: int | None, b1: int, data: bytes, p: int, end: int) -> Any:
        n = end - p
        if n < 2:
            raise _malformed(f"truncated {what}")
        packet_id = (data[p] << 8) | data[p + 1]
        if not packet_id:
            raise _protocol(f"{what} with packet identifier 0")
        if n == 2:
            return cls(packet_id)
        if level != MQTT_5:
            raise _malformed(f"{what} remaining length must be 2 in MQTT 3.1.1")
        code = data[p + 2]
        if code not in allowed:
            raise _malformed(f"invalid {what} reason code 0x{code:02X}")
        if n == 3:
            return cls(packet_id, code)
        props, q = _read_props(data, p + 3, end, ptype)
        if q != end:
            raise _malformed(f"trailing bytes in {what}")
        return cls(packet_id, code, props)

    return dec


def _dec_subscribe(level: int | None, b1: int, data: bytes, p: int, end: int) -> Subscribe:
    packet_id, p = _read_u16(data, p, end)
    if not packet_id:
        raise _protocol("SUBSCRIBE with packet identifier 0")
    v5 = level == MQTT_5
    props: Any = NO_PROPERTIES
    if v5:
        props, p = _read_props(data, p, end, PacketType.SUBSCRIBE)
    subs: list[Subscription] = []
    invalid = []
    while p < end:
        topic_filter, p = _read_str(data, p, end)
        if p >= end:
            raise _malformed("missing subscription options")
        opts = data[p]
        p += 1
        qos = opts & 3
        if qos == 3:
            raise _malformed("subscription with QoS 3")
        if v5:
            if opts & 0xC0:
                raise _malformed("subscription options reserved bits set")
            rh = (opts >> 4) & 3
            if rh == 3:
                raise _protocol("Retain Handling 3")
            sub = Subscription(topic_filter, qos, bool(opts & 4), bool(opts & 8), rh)
        else:
            if opts & 0xFC:
                raise _malformed("subscription options reserved bits set")
            sub = Subscription(topic_filter, qos)
        if not _filter_ok(topic_filter):
            invalid.append(len(subs))
        elif sub.no_local and topic_filter.startswith(SHARED_SUBSCRIPTION_PREFIX):
            raise _protocol("No Local on a shared subscription")
        subs.append(sub)
    if not subs:
        raise _protocol("SUBSCRIBE without any subscription")
    pkt = Subscribe(packet_id, tuple(subs), props)
    if invalid:
        raise InvalidTopicFilter(0x8F, "invalid topic filter(s): "
                                 + ", ".join(repr(subs[i].topic_filter) for i in invalid),
                                 packet=pkt, invalid=tuple(invalid))
    return pkt


def _filter_ok(topic_filter: str) -> bool:
    if topic_filter and "+" not in topic_filter and "#" not in topic_filter and topic_filter[0] != "$":
        return True
    return _topics.is_valid_topic_filter(topic_filter)


def _dec_suback(level: int | None, b1: int, data: bytes, p: int, end: int) -> SubAck:
    packet_id, p = _read_u16(data, p, end)
    if not packet_id:
        raise _protocol("SUBACK with packet identifier 0")
    props: Any = NO_PROPERTIES
    if level == MQTT_5:
        props, p = _read_props(data, p, end, PacketType.SUBACK)
        allowed = REASON_CODES_BY_PACKET[PacketType.SUBACK]
    else:
        allowed = SUBACK_V311_RETURN_CODES
    codes = tuple(data[p:end])
    if not codes:
        raise _protocol("SUBACK without reason codes")
    for c in codes:
        if c not in allowed:
            raise _malformed(f"invalid SUBACK reason code 0x{c:02X}")
    return SubAck(packet_id, codes, props)


def _dec_unsubscribe(level: int | None, b1: int, data: bytes, p: int, end: int) -> Unsubscribe:
    packet_id, p = _read_u16(data, p, end)
    if not packet_id:
        raise _protocol("UNSUBSCRIBE with packet identifier 0")
    props: Any = NO_PROPERTIES
    if level == MQTT_5:
        props, p = _read_props(data, p, end, PacketType.UNSUBSCRIBE)
    filters: list[str] = []
    invalid = []
    while p < end:
        f, p = _read_str(data, p, end)
        if not _filter_ok(f):
            invalid.append(len(filters))
        filters.append(f)
    if not filters:
        raise _protocol("UNSUBSCRIBE without any topic filter")
    pkt = Unsubscribe(packet_id, tuple(filters), props)
    if invalid:
        raise InvalidTopicFilter(0x8F, "invalid topic filter(s): "
                                 + ", ".join(repr(filters[i]) for i in invalid),
                                 packet=pkt, invalid=tuple(invalid))
    return pkt


def _dec_unsuback(level: int | None, b1: int, data: bytes, p: int, end: int) -> UnsubAck:
    packet_id, p = _read_u16(data, p, end)
    if not packet_id:
        raise _protocol("UNSUBACK with packet identifier 0")
    if level != MQTT_5:
        if p != end:
            raise _malformed("UNSUBACK remaining length must be 2 in MQTT 3.1.1")
        return UnsubAck(packet_id)
    props, p = _read_props(data, p, end, PacketType.UNSUBACK)
    codes = tuple(data[p:end])
    if not codes:
        raise _protocol("UNSUBACK without reason codes")
    allowed = REASON_CODES_BY_PACKET[PacketType.UNSUBACK]
    for c in codes:
        if c not in allowed:
            raise _malformed(f"invalid UNSUBACK reason code 0x{c:02X}")
    return UnsubAck(packet_id, codes, props)


_PINGREQ = PingReq()
_PINGRESP = PingResp()


def _dec_pingreq(level: int | None, b1: int, data: bytes, p: int, end: int) -> PingReq:
    if p != end:
        raise _malformed("PINGREQ with a body")
    return _PINGREQ


def _dec_pingresp(level: int | None, b1: int, data: bytes, p: int, end: int) -> PingResp:
    if p != end:
        raise _malformed("PINGRESP with a body")
    return _PINGRESP


def _make_dec_reason_only(cls: type, ptype: PacketType) -> Callable[..., Any]:
    allowed = REASON_CODES_BY_PACKET[ptype]
    what = ptype.name

    def dec(level: int | None, b1: int, data: bytes, p: int, end: int) -> Any:
        if p == end:
            return cls()
        if level != MQTT_5:
            raise _malformed(f"{what} with a body in MQTT 3.1.1")
        code = data[p]
        if code not in allowed:
            raise _malformed(f"invalid {what} reason code 0x{code:02X}")
        if end - p == 1:
            return cls(code)
        props, q = _read_props(data, p + 1, end, ptype)
        if q != end:
            raise _malformed(f"trailing bytes in {what}")
        return cls(code, props)

    return dec


_DECODERS: list[Callable[..., Any] | None] = [None] * 16
_DECODERS[PacketType.CONNECT] = _dec_connect
_DECODERS[PacketType.CONNACK] = _dec_connack
_DECODERS[PacketType.PUBLISH] = _dec_publish
_DECODERS[PacketType.PUBACK] = _make_dec_pubresp(PubAck, PacketType.PUBACK)
_DECODERS[PacketType.PUBREC] = _make_dec_pubresp(PubRec, PacketType.PUBREC)
_DECODERS[PacketType.PUBREL] = _make_dec_pubresp(PubRel, PacketType.PUBREL)
_DECODERS[PacketType.PUBCOMP] = _make_dec_pubresp(PubComp, PacketType.PUBCOMP)
_DECODERS[PacketType.SUBSCRIBE] = _dec_subscribe
_DECODERS[PacketType.SUBACK] = _dec_suback
_DECODERS[PacketType.UNSUBSCRIBE] = _dec_unsubscribe
_DECODERS[PacketType.UNSUBACK] = _dec_unsuback
_DECODERS[PacketType.PINGREQ] = _dec_pingreq
_DECODERS[PacketType.PINGRESP] = _dec_pingresp
_DECODERS[PacketType.DISCONNECT] = _make_dec_reason_only(Disconnect, PacketType.DISCONNECT)
_DECODERS[PacketType.AUTH] = _make_dec_reason_only(Auth, PacketType.AUTH)


def _first_byte_table(level: int | None) -> tuple[str | None, ...]:
    """For each possible first byte: None if acceptable at this protocol level, else the reason."""
    table: list[str | None] = []
    for b1 in range(256):
        ptype, flags = b1 >> 4, b1 & 0x0F
        if level is None:
            table.append(None if b1 == 0x10 else "the first packet must be CONNECT")
        elif ptype == 0 or (ptype == PacketType.AUTH and level != MQTT_5):
            table.append(f"reserved packet type {ptype}")
        elif ptype == PacketType.PUBLISH:
            table.append("PUBLISH with QoS 3" if (flags & 0x06) == 0x06 else None)
        elif flags != FIXED_HEADER_FLAGS[PacketType(ptype)]:
            table.append(f"invalid fixed header flags 0x{flags:X} for {PacketType(ptype).name}")
        else:
            table.append(None)
    return tuple(table)


_FIRST_BYTE = {lvl: _first_byte_table(lvl) for lvl in (None, MQTT_3_1_1, MQTT_5)}


# =========================================================================== Decoder


class Decoder:
    """Incremental decoder: ``feed(bytes) -> list[packet]``.

    ``max_packet_size`` bounds the whole packet (fixed header included); a larger packet raises
    :class:`PacketTooLarge` as soon as its fixed header is complete. ``protocol_level`` None (a
    server before CONNECT) accepts only a CONNECT first and then adopts its level; 4 or 5 fixes
    it (a client, or a server session restored)."""

    __slots__ = ("max_packet_size", "_level", "_table", "_pending", "_need", "_error")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE, protocol_level: int | None = None) -> None:
        if protocol_level is not None and protocol_level not in SUPPORTED_PROTOCOL_LEVELS:
            raise ValueError(f"unsupported protocol level {protocol_level}")
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2")
        self.max_packet_size = max_packet_size
        self._level = protocol_level
        self._table = _FIRST_BYTE[protocol_level]
        self._pending = bytearray()
        self._need = 0  # bytes needed in _pending before it is worth parsing again
        self._error: MQTTCodecError | None = None

    @property
    def protocol_level(self) -> int | None:
        return self._level

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial packet)."""
        return len(self._pending)

    def feed(self, data: bytes = b"") -> list[Packet]:
        if self._error is not None:
            raise self._error
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            pending.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        out: list[Any] = []
        n = len(data)
        pos = 0
        need = 0
        max_size = self.max_packet_size
        try:
            while pos < n:
                b1 = data[pos]
                bad = self._table[b1]
                if bad is not None:
                    if self._level is None:
                        raise _protocol(bad)
                    raise _malformed(bad)
                if pos + 1 >= n:
                    need = 2
                    break
                b = data[pos + 1]
                if b < 0x80:
                    rl = b
                    hl = 2
                else:
                    rl, hl = _remaining_length(data, pos, n)
                    if hl == 0:  # incomplete
                        need = n - pos + 1
                        break
                total = hl + rl
                if total > max_size:
                    raise PacketTooLarge(0x95, f"packet of {total} bytes exceeds the maximum of {max_size}")
                end = pos + total
                if end > n:
                    need = total
                    break
                try:
                    pkt = _DECODERS[b1 >> 4](self._level, b1, data, pos + hl, end)  # type: ignore[misc]
                except MQTTCodecError as exc:
                    if exc.packet is None:
                        raise
                    pos = end  # recoverable: skip the packet, keep the rest buffered
                    if type(exc.packet) is Connect and self._level is None:
                        self._set_level(exc.packet.protocol_level)
                    raise
                except (IndexError, struct.error) as exc:  # defensive: never leak these
                    raise _malformed(f"truncated packet ({exc})") from None
                pos = end
                if type(pkt) is Connect and self._level is None:
                    self._set_level(pkt.protocol_level)
                out.append(pkt)
        except MQTTCodecError as exc:
            exc.decoded = out
            if exc.packet is None:
                self._error = exc
            elif pos < n:
                self._pending += data[pos:]
                self._need = 0
            raise
        if pos < n:
            pending += data[pos:] if pos else data
        self._need = need
        return out

    def _set_level(self, level: int) -> None:
        self._level = level
        self._table = _FIRST_BYTE[level]


def _remaining_length(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """Multi-byte remaining length at data[pos+1:]; returns (value, header_length) or (0, 0) if
    more bytes are needed."""
    value = 0
    shift = 0
    p = pos + 1
    for i in range(4):
        if p >= n:
            return 0, 0
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if i and b == 0:
                raise _malformed("remaining length not minimally encoded")
            return value, p - pos
        shift += 7
    raise _malformed("remaining length longer than 4 bytes")


# =========================================================================== encoder

_VARINT_1 = [bytes((i,)) for i in range(128)]


def encode_varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _VARINT_1[value]
    if value < 0 or value > MAX_REMAINING_LENGTH:
        raise EncodeError(f"variable byte integer {value} out of range")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_str(s: str, what: str = "string") -> bytes:
    if not isinstance(s, str):
        raise EncodeError(f"{what} must be str, not {type(s).__name__}")
    if "\x00" in s:
        raise EncodeError(f"{what} contains U+0000")
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{what} is not valid Unicode: {exc}") from None
    if len(b) > MAX_STRING_BYTES:
        raise EncodeError(f"{what} is longer than 65535 bytes")
    return _pack_H(len(b)) + b


def _enc_bin(b: bytes, what: str = "binary data") -> bytes:
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise EncodeError(f"{what} must be bytes, not {type(b).__name__}")
    if len(b) > MAX_STRING_BYTES:
        raise EncodeError(f"{what} is longer than 65535 bytes")
    return _pack_H(len(b)) + bytes(b)


def _enc_u8(v: int) -> bytes:
    if not isinstance(v, int) or not 0 <= v <= 0xFF:
        raise EncodeError(f"byte value {v!r} out of range")
    return _VARINT_1[v] if v < 128 else bytes((v,))


def _enc_u16(v: int) -> bytes:
    if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
        raise EncodeError(f"two-byte integer {v!r} out of range")
    return _pack_H(v)


def _enc_u32(v: int) -> bytes:
    if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
        raise EncodeError(f"four-byte integer {v!r} out of range")
    return _pack_I(v)


def _enc_varint_prop(v: int) -> bytes:
    if not isinstance(v, int):
        raise EncodeError(f"variable byte integer {v!r} is not an int")
    return encode_varint(v)


def _enc_pair(kv: tuple[str, str]) -> bytes:
    try:
        k, v = kv
    except (TypeError, ValueError):
        raise EncodeError(f"user property {kv!r} is not a (key, value) pair") from None
    return _enc_str(k, "user property key") + _enc_str(v, "user property value")


_WRITERS: dict[PropertyType, Callable[[Any], bytes]] = {
    PropertyType.BYTE: _enc_u8,
    PropertyType.TWO_BYTE_INT: _enc_u16,
    PropertyType.FOUR_BYTE_INT: _enc_u32,
    PropertyType.VARINT: _enc_varint_prop,
    PropertyType.UTF8_STRING: _enc_str,
    PropertyType.BINARY: _enc_bin,
    PropertyType.UTF8_PAIR: _enc_pair,
}


def _enc_props(props: Any, ctx: int) -> bytes:
    if not props:
        return b"\x00"
    parts = []
    for name, value in props.items():
        spec = PROPERTIES_BY_NAME.get(name)
        if spec is None:
            raise EncodeError(f"unknown property {name!r}")
        if ctx not in spec.packets:
            raise EncodeError(f"property {name} is not allowed in {_ctx_name(ctx)}")
        if spec.multiple:
            if isinstance(value, int):
                value = [value]
            elif not isinstance(value, (list, tuple)) or (
                name == "user_property" and len(value) == 2 and isinstance(value[0], str)
            ):
                raise EncodeError(f"property {name} must be a list")
            if name == "subscription_identifier" and ctx != PacketType.PUBLISH and len(value) > 1:
                raise EncodeError(f"only one {name} allowed in {_ctx_name(ctx)}")
            values = value
        else:
            values = (value,)
        writer = _WRITERS[spec.type]
        ident = _VARINT_1[spec.id]
        for v in values:
            encoded = writer(v)
            if spec.min_value is not None and v < spec.min_value or (
                spec.max_value is not None and v > spec.max_value
            ):
                raise EncodeError(f"property {name} value {v!r} out of range")
            parts.append(ident)
            parts.append(encoded)
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def _no_props(props: Any, what: str) -> None:
    if props:
        raise EncodeError(f"{what} properties require MQTT 5")


def _frame(b1: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((b1, n)) + body
    if n > MAX_REMAINING_LENGTH:
        raise EncodeError("packet too large for MQTT")
    return bytes((b1,)) + encode_varint(n) + body


def _check_pid(pid: Any, what: str) -> bytes:
    if type(pid) is not int or not 0 < pid <= 0xFFFF:
        raise EncodeError(f"{what} needs a packet identifier in 1..65535, got {pid!r}")
    return _pack_H(pid)


def _check_qos(qos: Any, what: str) -> int:
    if qos not in (0, 1, 2) or type(qos) is bool:
        raise EncodeError(f"{what} QoS must be 0, 1 or 2, got {qos!r}")
    return qos


def _enc_connect(pkt: Connect, level: int) -> bytes:
    if level not in SUPPORTED_PROTOCOL_LEVELS:
        raise EncodeError(f"unsupported protocol level {level}")
    v5 = level == MQTT_5
    flags = CONNECT_CLEAN_START if pkt.clean_start else 0
    if not isinstance(pkt.keepalive, int) or not 0 <= pkt.keepalive <= 0xFFFF:
        raise EncodeError(f"keepalive {pkt.keepalive!r} out of range")
    payload = [_enc_str(pkt.client_id, "client id")]
    will = pkt.will
    if will is not None:
        flags |= CONNECT_WILL | (_check_qos(will.qos, "Will") << 3)
        if will.retain:
            flags |= CONNECT_WILL_RETAIN
        if v5:
            payload.append(_enc_props(will.properties, WILL_PROPERTIES))
        else:
            _no_props(will.properties, "Will")
        if not _topics.is_valid_topic_name(will.topic):
            raise EncodeError(f"invalid Will topic {will.topic!r}")
        payload.append(_enc_str(will.topic, "Will topic"))
        payload.append(_enc_bin(will.payload, "Will payload"))
    if pkt.username is not None:
        flags |= CONNECT_USERNAME
        payload.append(_enc_str(pkt.username, "user name"))
    if pkt.password is not None:
        if not v5 and pkt.username is None:
            raise EncodeError("MQTT 3.1.1 does not allow a password without a user name")
        flags |= CONNECT_PASSWORD
        payload.append(_enc_bin(pkt.password, "password"))
    if v5:
        props = _enc_props(pkt.properties, PacketType.CONNECT)
    else:
        _no_props(pkt.properties, "CONNECT")
        props = b""
    header = PROTOCOL_NAME_BYTES + bytes((level, flags)) + _pack_H(pkt.keepalive) + props
    return _frame(0x10, header + b"".join(payload))


def _enc_connack(pkt: ConnAck, level: int) -> bytes:
    code = pkt.reason_code
    if level == MQTT_5:
        if code not in REASON_CODES_BY_PACKET[PacketType.CONNACK]:
            raise EncodeError(f"invalid CONNACK reason code {code!r}")
        props = _enc_props(pkt.properties, PacketType.CONNACK)
    else:
        if code not in range(6):
            raise EncodeError(f"invalid MQTT 3.1.1 CONNACK return code {code!r}")
        _no_props(pkt.properties, "CONNACK")
        props = b""
    if pkt.session_present and code:
        raise EncodeError("session_present requires a successful CONNACK")
    return _frame(0x20, bytes((1 if pkt.session_present else 0, code)) + props)


def _enc_publish(pkt: Publish, level: int) -> bytes:
    topic = pkt.topic
    qos = pkt.qos
    if qos not in (0, 1, 2) or type(qos) is bool:
        raise EncodeError(f"PUBLISH QoS must be 0, 1 or 2, got {qos!r}")
    if "+" in topic or "#" in topic:
        raise EncodeError(f"wildcard in PUBLISH topic {topic!r}")
    tb = _enc_str(topic, "topic")
    b1 = 0x30 | (qos << 1)
    if pkt.retain:
        b1 |= 1
    if pkt.dup:
        if not qos:
            raise EncodeError("DUP flag on a QoS 0 PUBLISH")
        b1 |= 0x08
    if qos:
        tb += _check_pid(pkt.packet_id, "QoS>0 PUBLISH")
    elif pkt.packet_id is not None:
        raise EncodeError("QoS 0 PUBLISH must not have a packet identifier")
    props = pkt.properties
    if level == MQTT_5:
        tb += _enc_props(props, PacketType.PUBLISH) if props else b"\x00"
        if not topic and "topic_alias" not in props:
            raise EncodeError("empty PUBLISH topic without a Topic Alias")
    else:
        if props:
            raise EncodeError("PUBLISH properties require MQTT 5")
        if not topic:
            raise EncodeError("empty PUBLISH topic")
    payload = pkt.payload
    n = len(tb) + len(payload)
    if n < 128:
        return bytes((b1, n)) + tb + payload
    if n > MAX_REMAINING_LENGTH:
        raise EncodeError("packet too large for MQTT")
    return b"".join((bytes((b1,)), encode_varint(n), tb, payload))


def _make_enc_pubresp(ptype: PacketType, b1: int) -> Callable[[Any, int], bytes]:
    allowed = REASON_CODES_BY_PACKET[ptype]
    what = ptype.name

    def enc(pkt: Any, level: int) -> bytes:
        pid = _check_pid(pkt.packet_id, what)
        code = pkt.reason_code
        props = pkt.properties
        if level != MQTT_5:
            if code:
                raise EncodeError(f"{what} reason codes require MQTT 5")
            _no_props(props, what)
            return bytes((b1, 2)) + pid
        if code not in allowed:
            raise EncodeError(f"invalid {what} reason code {code!r}")
        if not props:
            if not code:
                return bytes((b1, 2)) + pid
            return bytes((b1, 3)) + pid + bytes((code,))
        return _frame(b1, pid + bytes((code,)) + _enc_props(props, ptype))

    return enc


def _enc_subscribe(pkt: Subscribe, level: int) -> bytes:
    parts = [_check_pid(pkt.packet_id, "SUBSCRIBE")]
    v5 = level == MQTT_5
    if v5:
        parts.append(_enc_props(pkt.properties, PacketType.SUBSCRIBE))
    else:
        _no_props(pkt.properties, "SUBSCRIBE")
    if not pkt.subscriptions:
        raise EncodeError("SUBSCRIBE needs at least one subscription")
    for sub in pkt.subscriptions:
        if not _topics.is_valid_topic_filter(sub.topic_filter):
            raise EncodeError(f"invalid topic filter {sub.topic_filter!r}")
        opts = _check_qos(sub.qos, "subscription")
        if v5:
            if sub.no_local:
                opts |= 0x04
            if sub.retain_as_published:
                opts |= 0x08
            if sub.retain_handling not in (0, 1, 2):
                raise EncodeError(f"retain_handling must be 0, 1 or 2, got {sub.retain_handling!r}")
            opts |= sub.retain_handling << 4
        elif sub.no_local or sub.retain_as_published or sub.retain_handling:
            raise EncodeError("subscription options other than QoS require MQTT 5")
        parts.append(_enc_str(sub.topic_filter, "topic filter"))
        parts.append(bytes((opts,)))
    return _frame(0x82, b"".join(parts))


def _enc_suback(pkt: SubAck, level: int) -> bytes:
    parts = [_check_pid(pkt.packet_id, "SUBACK")]
    if level == MQTT_5:
        parts.append(_enc_props(pkt.properties, PacketType.SUBACK))
        allowed = REASON_CODES_BY_PACKET[PacketType.SUBACK]
    else:
        _no_props(pkt.properties, "SUBACK")
        allowed = SUBACK_V311_RETURN_CODES
    if not pkt.reason_codes:
        raise EncodeError("SUBACK needs at least one reason code")
    for c in pkt.reason_codes:
        if c not in allowed:
            raise EncodeError(f"invalid SUBACK reason code {c!r}")
    parts.append(bytes(pkt.reason_codes))
    return _frame(0x90, b"".join(parts))


def _enc_unsubscribe(pkt: Unsubscribe, level: int) -> bytes:
    parts = [_check_pid(pkt.packet_id, "UNSUBSCRIBE")]
    if level == MQTT_5:
        parts.append(_enc_props(pkt.properties, PacketType.UNSUBSCRIBE))
    else:
        _no_props(pkt.properties, "UNSUBSCRIBE")
    if not pkt.topic_filters or isinstance(pkt.topic_filters, str):
        raise EncodeError("UNSUBSCRIBE needs a non-empty sequence of topic filters")
    for f in pkt.topic_filters:
        if not _topics.is_valid_topic_filter(f):
            raise EncodeError(f"invalid topic filter {f!r}")
        parts.append(_enc_str(f, "topic filter"))
    return _frame(0xA2, b"".join(parts))


def _enc_unsuback(pkt: UnsubAck, level: int) -> bytes:
    pid = _check_pid(pkt.packet_id, "UNSUBACK")
    if level != MQTT_5:
        if pkt.reason_codes:
            raise EncodeError("UNSUBACK reason codes require MQTT 5")
        _no_props(pkt.properties, "UNSUBACK")
        return bytes((0xB0, 2)) + pid
    if not pkt.reason_codes:
        raise EncodeError("MQTT 5 UNSUBACK needs at least one reason code")
    allowed = REASON_CODES_BY_PACKET[PacketType.UNSUBACK]
    for c in pkt.reason_codes:
        if c not in allowed:
            raise EncodeError(f"invalid UNSUBACK reason code {c!r}")
    return _frame(0xB0, pid + _enc_props(pkt.properties, PacketType.UNSUBACK) + bytes(pkt.reason_codes))


def _enc_pingreq(pkt: PingReq, level: int) -> bytes:
    return b"\xc0\x00"


def _enc_pingresp(pkt: PingResp, level: int) -> bytes:
    return b"\xd0\x00"


def _make_enc_reason_only(ptype: PacketType, b1: int) -> Callable[[Any, int], bytes]:
    allowed = REASON_CODES_BY_PACKET[ptype]
    what = ptype.name

    def enc(pkt: Any, level: int) -> bytes:
        code = pkt.reason_code
        props = pkt.properties
        if level != MQTT_5:
            if ptype == PacketType.AUTH:
                raise EncodeError("AUTH requires MQTT 5")
            if code:
                raise EncodeError(f"{what} reason codes require MQTT 5")
            _no_props(props, what)
            return bytes((b1, 0))
        if code not in allowed:
            raise EncodeError(f"invalid {what} reason code {code!r}")
        if not props:
            return bytes((b1, 0)) if not code else bytes((b1, 1, code))
        return _frame(b1, bytes((code,)) + _enc_props(props, ptype))

    return enc


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _enc_connect,
    ConnAck: _enc_connack,
    Publish: _enc_publish,
    PubAck: _make_enc_pubresp(PacketType.PUBACK, 0x40),
    PubRec: _make_enc_pubresp(PacketType.PUBREC, 0x50),
    PubRel: _make_enc_pubresp(PacketType.PUBREL, 0x62),
    PubComp: _make_enc_pubresp(PacketType.PUBCOMP, 0x70),
    Subscribe: _enc_subscribe,
    SubAck: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    UnsubAck: _enc_unsuback,
    PingReq: _enc_pingreq,
    PingResp: _enc_pingresp,
    Disconnect: _make_enc_reason_only(PacketType.DISCONNECT, 0xE0),
    Auth: _make_enc_reason_only(PacketType.AUTH, 0xF0),
}


def encode(packet: Packet, protocol_level: int | None) -> bytes:
    """Serialize *packet* for *protocol_level* (4 or 5). For a :class:`Connect`, ``None`` means
    the packet's own ``protocol_level``; otherwise the two must agree."""
    enc = _ENCODERS.get(type(packet))
    if enc is None:
        raise EncodeError(f"not an MQTT packet: {packet!r}")
    if type(packet) is Connect:
        if protocol_level is None:
            protocol_level = packet.protocol_level
        elif protocol_level != packet.protocol_level:
            raise EncodeError(f"Connect.protocol_level {packet.protocol_level} != {protocol_level}")
    elif protocol_level != MQTT_3_1_1 and protocol_level != MQTT_5:
        raise EncodeError(f"unsupported protocol level {protocol_level!r}")
    return enc(packet, protocol_level)
