"""MQTT 3.1.1 / 5.0 wire constants: packet types, protocol levels, property table, reason codes, limits.

Nothing here does I/O or parsing; :mod:`frontends.mqtt.codec` and the session layer import these.
Reason codes are the MQTT 5.0 numbering throughout (errors raised by the codec carry one); the
MQTT 3.1.1 CONNACK return codes are a separate small enum, with a mapping from the 5.0 codes.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

# --------------------------------------------------------------------------- protocol levels

PROTOCOL_NAME = "MQTT"
PROTOCOL_NAME_BYTES = b"\x00\x04MQTT"
MQTT_3_1_1 = 4
MQTT_5 = 5
SUPPORTED_PROTOCOL_LEVELS = frozenset({MQTT_3_1_1, MQTT_5})


class ProtocolLevel(enum.IntEnum):
    MQTT_3_1_1 = 4
    MQTT_5 = 5


# --------------------------------------------------------------------------- packet types


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5 only; reserved in 3.1.1


#: Pseudo packet type used as the context for Will Properties in the property table.
WILL_PROPERTIES = 0

#: Required low nibble of the fixed header's first byte, for every type except PUBLISH.
FIXED_HEADER_FLAGS = {
    PacketType.CONNECT: 0,
    PacketType.CONNACK: 0,
    PacketType.PUBACK: 0,
    PacketType.PUBREC: 0,
    PacketType.PUBREL: 0b0010,
    PacketType.PUBCOMP: 0,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.SUBACK: 0,
    PacketType.UNSUBSCRIBE: 0b0010,
    PacketType.UNSUBACK: 0,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
    PacketType.AUTH: 0,
}

# PUBLISH fixed-header flag bits
PUBLISH_DUP = 0x08
PUBLISH_QOS_MASK = 0x06
PUBLISH_QOS_SHIFT = 1
PUBLISH_RETAIN = 0x01

# CONNECT flag bits
CONNECT_RESERVED = 0x01
CONNECT_CLEAN_START = 0x02
CONNECT_WILL = 0x04
CONNECT_WILL_QOS_MASK = 0x18
CONNECT_WILL_QOS_SHIFT = 3
CONNECT_WILL_RETAIN = 0x20
CONNECT_PASSWORD = 0x40
CONNECT_USERNAME = 0x80

# SUBSCRIBE option bits
SUBOPT_QOS_MASK = 0x03
SUBOPT_NO_LOCAL = 0x04
SUBOPT_RETAIN_AS_PUBLISHED = 0x08
SUBOPT_RETAIN_HANDLING_MASK = 0x30
SUBOPT_RETAIN_HANDLING_SHIFT = 4
SUBOPT_RESERVED_V5 = 0xC0
SUBOPT_RESERVED_V311 = 0xFC


class RetainHandling(enum.IntEnum):
    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


# --------------------------------------------------------------------------- limits

MAX_REMAINING_LENGTH = 268_435_455  # 0xFF 0xFF 0xFF 0x7F
MAX_VARINT = MAX_REMAINING_LENGTH
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5  # fixed header byte + 4 length bytes
MAX_STRING_BYTES = 65_535
MAX_BINARY_BYTES = 65_535
MAX_PACKET_ID = 65_535
MAX_KEEPALIVE = 65_535
MAX_SUBSCRIPTION_IDENTIFIER = MAX_VARINT
MAX_TOPIC_ALIAS = 65_535
MAX_QOS = 2
SHARED_SUBSCRIPTION_PREFIX = "$share/"


# --------------------------------------------------------------------------- properties


class PropertyType(enum.Enum):
    BYTE = "byte"
    TWO_BYTE_INT = "two_byte_int"
    FOUR_BYTE_INT = "four_byte_int"
    VARINT = "varint"
    UTF8_STRING = "utf8_string"
    BINARY = "binary"
    UTF8_PAIR = "utf8_pair"


class PropertyId(enum.IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertySpec(NamedTuple):
    id: int
    name: str  # key used in packet ``properties`` mappings (lower snake case)
    type: PropertyType
    packets: frozenset[int]  # PacketType values (and WILL_PROPERTIES) where it may appear
    multiple: bool  # may appear more than once (value is then always a list)
    min_value: int | None = None  # smallest legal integer value (None: type's full range)
    max_value: int | None = None


_P = PacketType
_ALL_V5 = frozenset(
    {
        _P.CONNECT, _P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP,
        _P.SUBSCRIBE, _P.SUBACK, _P.UNSUBSCRIBE, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH,
        WILL_PROPERTIES,
    }
)
_PUB_WILL = frozenset({_P.PUBLISH, WILL_PROPERTIES})
_ACKS_WITH_REASON = frozenset(
    {_P.CONNACK, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP, _P.SUBACK, _P.UNSUBACK,
     _P.DISCONNECT, _P.AUTH}
)
_T = PropertyType
_PI = PropertyId

PROPERTY_SPECS: tuple[PropertySpec, ...] = (
    PropertySpec(_PI.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", _T.BYTE, _PUB_WILL, False, 0, 1),
    PropertySpec(_PI.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval", _T.FOUR_BYTE_INT, _PUB_WILL, False),
    PropertySpec(_PI.CONTENT_TYPE, "content_type", _T.UTF8_STRING, _PUB_WILL, False),
    PropertySpec(_PI.RESPONSE_TOPIC, "response_topic", _T.UTF8_STRING, _PUB_WILL, False),
    PropertySpec(_PI.CORRELATION_DATA, "correlation_data", _T.BINARY, _PUB_WILL, False),
    # Several in a server->client PUBLISH, at most one in SUBSCRIBE (checked by the codec).
    PropertySpec(_PI.SUBSCRIPTION_IDENTIFIER, "subscription_identifier", _T.VARINT,
                 frozenset({_P.PUBLISH, _P.SUBSCRIBE}), True, 1, MAX_SUBSCRIPTION_IDENTIFIER),
    PropertySpec(_PI.SESSION_EXPIRY_INTERVAL, "session_expiry_interval", _T.FOUR_BYTE_INT,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}), False),
    PropertySpec(_PI.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", _T.UTF8_STRING,
                 frozenset({_P.CONNACK}), False),
    PropertySpec(_PI.SERVER_KEEP_ALIVE, "server_keep_alive", _T.TWO_BYTE_INT, frozenset({_P.CONNACK}), False),
    PropertySpec(_PI.AUTHENTICATION_METHOD, "authentication_method", _T.UTF8_STRING,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}), False),
    PropertySpec(_PI.AUTHENTICATION_DATA, "authentication_data", _T.BINARY,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}), False),
    PropertySpec(_PI.REQUEST_PROBLEM_INFORMATION, "request_problem_information", _T.BYTE,
                 frozenset({_P.CONNECT}), False, 0, 1),
    PropertySpec(_PI.WILL_DELAY_INTERVAL, "will_delay_interval", _T.FOUR_BYTE_INT,
                 frozenset({WILL_PROPERTIES}), False),
    PropertySpec(_PI.REQUEST_RESPONSE_INFORMATION, "request_response_information", _T.BYTE,
                 frozenset({_P.CONNECT}), False, 0, 1),
    PropertySpec(_PI.RESPONSE_INFORMATION, "response_information", _T.UTF8_STRING, frozenset({_P.CONNACK}), False),
    PropertySpec(_PI.SERVER_REFERENCE, "server_reference", _T.UTF8_STRING,
                 frozenset({_P.CONNACK, _P.DISCONNECT}), False),
    PropertySpec(_PI.REASON_STRING, "reason_string", _T.UTF8_STRING, _ACKS_WITH_REASON, False),
    PropertySpec(_PI.RECEIVE_MAXIMUM, "receive_maximum", _T.TWO_BYTE_INT,
                 frozenset({_P.CONNECT, _P.CONNACK}), False, 1, None),
    PropertySpec(_PI.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", _T.TWO_BYTE_INT,
                 frozenset({_P.CONNECT, _P.CONNACK}), False),
    PropertySpec(_PI.TOPIC_ALIAS, "topic_alias", _T.TWO_BYTE_INT, frozenset({_P.PUBLISH}), False, 1, None),
    PropertySpec(_PI.MAXIMUM_QOS, "maximum_qos", _T.BYTE, frozenset({_P.CONNACK}), False, 0, 1),
    PropertySpec(_PI.RETAIN_AVAILABLE, "retain_available", _T.BYTE, frozenset({_P.CONNACK}), False, 0, 1),
    PropertySpec(_PI.USER_PROPERTY, "user_property", _T.UTF8_PAIR, _ALL_V5, True),
    PropertySpec(_PI.MAXIMUM_PACKET_SIZE, "maximum_packet_size", _T.FOUR_BYTE_INT,
                 frozenset({_P.CONNECT, _P.CONNACK}), False, 1, None),
    PropertySpec(_PI.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available", _T.BYTE,
                 frozenset({_P.CONNACK}), False, 0, 1),
    PropertySpec(_PI.SUBSCRIPTION_IDENTIFIER_AVAILABLE, "subscription_identifier_available", _T.BYTE,
                 frozenset({_P.CONNACK}), False, 0, 1),
    PropertySpec(_PI.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available", _T.BYTE,
                 frozenset({_P.CONNACK}), False, 0, 1),
)

PROPERTIES_BY_ID: dict[int, PropertySpec] = {int(s.id): s for s in PROPERTY_SPECS}
PROPERTIES_BY_NAME: dict[str, PropertySpec] = {s.name: s for s in PROPERTY_SPECS}
#: Property names whose value is always a list (repeatable properties).
MULTI_VALUED_PROPERTIES = frozenset(s.name for s in PROPERTY_SPECS if s.multiple)


# --------------------------------------------------------------------------- reason codes


class ConnackReturnCode(enum.IntEnum):
    """MQTT 3.1.1 CONNACK return codes."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USERNAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


#: MQTT 3.1.1 SUBACK return codes.
SUBACK_V311_RETURN_CODES = frozenset({0x00, 0x01, 0x02, 0x80})
SUBACK_V311_FAILURE = 0x80


class ReasonCode(enum.IntEnum):
    """MQTT 5.0 reason codes. Several names share a value (0x00 is Success, Normal disconnection
    and Granted QoS 0); enum aliases keep every spec name reachable."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


_R = ReasonCode

#: Reason codes each MQTT 5 packet type may carry (spec section 2.4 table).
REASON_CODES_BY_PACKET: dict[int, frozenset[int]] = {
    _P.CONNACK: frozenset({
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
        0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    }),
    _P.PUBACK: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _P.PUBREC: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _P.PUBREL: frozenset({0x00, 0x92}),
    _P.PUBCOMP: frozenset({0x00, 0x92}),
    _P.SUBACK: frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    _P.UNSUBACK: frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    _P.DISCONNECT: frozenset({
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
        0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    }),
    _P.AUTH: frozenset({0x00, 0x18, 0x19}),
}

_NAME_OVERRIDES: dict[tuple[int, int], str] = {
    (_P.DISCONNECT, 0x00): "Normal disconnection",
    (_P.SUBACK, 0x00): "Granted QoS 0",
}


def reason_code_name(code: int, packet_type: int | None = None) -> str:
    """Human-readable spec name of an MQTT 5 reason code (``'Packet too large'``)."""
    override = _NAME_OVERRIDES.get((packet_type, code)) if packet_type is not None else None
    if override:
        return override
    try:
        name = ReasonCode(code).name
    except ValueError:
        return f"Unknown reason code 0x{code:02X}"
    text = name.replace("_", " ").capitalize()
    return text.replace("Qos", "QoS").replace("user name", "User Name")


#: Best-effort translation of an MQTT 5 CONNACK reason code to an MQTT 3.1.1 return code.
V5_TO_V311_CONNACK: dict[int, int] = {
    0x00: ConnackReturnCode.ACCEPTED,
    0x84: ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
    0x85: ConnackReturnCode.IDENTIFIER_REJECTED,
    0x86: ConnackReturnCode.BAD_USERNAME_OR_PASSWORD,
    0x87: ConnackReturnCode.NOT_AUTHORIZED,
    0x88: ConnackReturnCode.SERVER_UNAVAILABLE,
    0x89: ConnackReturnCode.SERVER_UNAVAILABLE,
    0x8A: ConnackReturnCode.NOT_AUTHORIZED,
    0x8C: ConnackReturnCode.NOT_AUTHORIZED,
    0x9C: ConnackReturnCode.SERVER_UNAVAILABLE,
    0x9D: ConnackReturnCode.SERVER_UNAVAILABLE,
    0x9F: ConnackReturnCode.SERVER_UNAVAILABLE,
}


def connack_return_code_v311(reason_code: int) -> int:
    """The 3.1.1 CONNACK return code to send for an MQTT 5 CONNACK reason code.

    Codes without a 3.1.1 counterpart map to Server unavailable (0x03); spec 3.1.1 lets a
    server just close the connection instead, which the session may prefer."""
    return int(V5_TO_V311_CONNACK.get(reason_code, ConnackReturnCode.SERVER_UNAVAILABLE))
