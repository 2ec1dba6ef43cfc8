"""Our own MQTT 3.1.1 / 5.0 protocol stack. This package starts with the sans-I/O layer:

* :mod:`.constants` - packet types, protocol levels, property table, reason codes, limits;
* :mod:`.packets` - frozen dataclasses, one per control packet;
* :mod:`.codec` - ``encode(packet, protocol_level)`` and the incremental ``Decoder``;
* :mod:`.topics` - topic name/filter validation, matching, shared subscriptions.

No sockets or asyncio here; the broker's session state machine and transport build on top.
"""

from .codec import (
    Decoder,
    EncodeError,
    InvalidTopicFilter,
    InvalidTopicName,
    MalformedPacket,
    MQTTCodecError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
    encode,
)
from .constants import MQTT_3_1_1, MQTT_5, ConnackReturnCode, PacketType, ReasonCode
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
    "Decoder", "EncodeError", "InvalidTopicFilter", "InvalidTopicName", "MalformedPacket",
    "MQTTCodecError", "PacketTooLarge", "ProtocolError", "UnsupportedProtocolVersion", "encode",
    "MQTT_3_1_1", "MQTT_5", "ConnackReturnCode", "PacketType", "ReasonCode",
    "NO_PROPERTIES", "Auth", "ConnAck", "Connect", "Disconnect", "Packet", "PingReq", "PingResp",
    "PubAck", "PubComp", "Publish", "PubRec", "PubRel", "SubAck", "Subscribe", "Subscription",
    "UnsubAck", "Unsubscribe", "Will",
]
