"""MQTT control packets as small frozen dataclasses (the codec's events).

One class per packet type, shared by MQTT 3.1.1 and 5.0: fields that only exist in 5.0
(``properties``, most ``reason_code``s) keep their defaults under 3.1.1, and the encoder refuses
values 3.1.1 cannot carry.

``properties`` is a read-only mapping keyed by the property's snake-case name (see
``constants.PROPERTY_SPECS``): ``{"message_expiry_interval": 60, "user_property": [("k", "v")]}``.
Repeatable properties (``user_property``, ``subscription_identifier``) are always lists, in wire
order, duplicates kept; the others are ``int``, ``str`` or ``bytes`` by wire type. The default
``NO_PROPERTIES`` is a shared empty mapping; treat decoded mappings as immutable too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NoReturn

from .constants import PacketType

Properties = Mapping[str, Any]


class _NoProperties(dict[str, Any]):
    """The shared, immutable, hashable empty property set (a dict subclass so that truth tests
    and lookups stay C-speed on the hot path)."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("NO_PROPERTIES is immutable")

    __setitem__ = __delitem__ = setdefault = update = pop = popitem = clear = __ior__ = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return 0

    def __repr__(self) -> str:
        return "NO_PROPERTIES"


NO_PROPERTIES: Properties = _NoProperties()

@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str = ""
    clean_start: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    protocol_level: int = 4
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNECT


@dataclass(frozen=True, slots=True)
class ConnAck:
    """``reason_code`` is the wire value for the protocol level: a 3.1.1 return code (0-5,
    ``ConnackReturnCode``) or an MQTT 5 reason code (``ReasonCode``)."""

    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNACK


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # required (1..65535) for QoS 1/2, absent for QoS 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBLISH


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBACK


@dataclass(frozen=True, slots=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREC


@dataclass(frozen=True, slots=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREL


@dataclass(frozen=True, slots=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True)
class Subscription:
    """One (topic filter, subscription options) pair of a SUBSCRIBE. Under 3.1.1 only ``qos`` is
    on the wire; the other options must keep their defaults."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0  # constants.RetainHandling


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBSCRIBE


@dataclass(frozen=True, slots=True)
class SubAck:
    """``reason_codes``: one per subscription; 3.1.1 return codes are 0, 1, 2 or 0x80."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBACK


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBSCRIBE


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """``reason_codes`` exist only in MQTT 5 (one per filter); empty under 3.1.1."""

    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBACK


@dataclass(frozen=True, slots=True)
class PingReq:
    packet_type = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    packet_type = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.DISCONNECT


@dataclass(frozen=True, slots=True)
class Auth:
    """MQTT 5 only."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.AUTH


Packet = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
    | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect | Auth
)

PACKET_CLASSES: dict[int, type] = {
    PacketType.CONNECT: Connect,
    PacketType.CONNACK: ConnAck,
    PacketType.PUBLISH: Publish,
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
    PacketType.SUBSCRIBE: Subscribe,
    PacketType.SUBACK: SubAck,
    PacketType.UNSUBSCRIBE: Unsubscribe,
    PacketType.UNSUBACK: UnsubAck,
    PacketType.PINGREQ: PingReq,
    PacketType.PINGRESP: PingResp,
    PacketType.DISCONNECT: Disconnect,
    PacketType.AUTH: Auth,
}
