"""Checking the shape of a PDU that arrived from another server. Pure.

Everything that can be decided from the JSON alone is decided here: types, sizes, identifiers,
the room version's format rules. Signatures, hashes and auth need keys and state (inbound.py).
"""
from __future__ import annotations

from typing import Any

from ..canonical_json import CanonicalJSONError, encode_canonical_json
from ..event_hashing import compute_event_id
from ..events import Event
from ..identifiers import is_valid_user_id
from ..room_versions import RoomVersion

MAX_PDU_BYTES = 65536
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10


class BadPDU(ValueError):
    """A PDU that is malformed for its room version: dropped, never stored."""


def _str_list(value: Any, name: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("$") for v in value):
        raise BadPDU(f"'{name}' must be a list of event ids")
    if len(value) > limit:
        raise BadPDU(f"'{name}' lists more than {limit} events")
    return value


def parse_pdu(pdu: Any, room_version: RoomVersion) -> Event:
    """Validate a PDU's format and wrap it as an Event (its id is its reference hash)."""
    if not isinstance(pdu, dict):
        raise BadPDU("a PDU must be a JSON object")
    for key, kind in (("type", str), ("sender", str), ("content", dict), ("origin_server_ts", int),
                      ("depth", int), ("hashes", dict), ("signatures", dict)):
        if not isinstance(pdu.get(key), kind) or isinstance(pdu.get(key), bool):
            raise BadPDU(f"'{key}' is missing or not a {kind.__name__}")
    if not is_valid_user_id(pdu["sender"]):
        raise BadPDU("'sender' is not a user id")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise BadPDU("'state_key' must be a string")
    _str_list(pdu.get("prev_events"), "prev_events", MAX_PREV_EVENTS)
    _str_list(pdu.get("auth_events"), "auth_events", MAX_AUTH_EVENTS)
    if pdu["depth"] < 0:
        raise BadPDU("'depth' must not be negative")
    is_v12_create = room_version.room_id_is_create_event_id and pdu["type"] == "m.room.create"
    if is_v12_create:
        if "room_id" in pdu:
            raise BadPDU("a v12 create event has no room_id")
    elif not isinstance(pdu.get("room_id"), str) or not pdu["room_id"].startswith("!"):
        raise BadPDU("'room_id' is missing or malformed")
    try:
        size = len(encode_canonical_json(pdu))
    except CanonicalJSONError as exc:
        raise BadPDU(f"not canonical JSON: {exc}") from None
    if size > MAX_PDU_BYTES:
        raise BadPDU(f"PDU is {size} bytes; the limit is {MAX_PDU_BYTES}")
    unsigned_free = {k: v for k, v in pdu.items() if k != "unsigned"}
    return Event(unsigned_free, compute_event_id(unsigned_free, room_version), room_version)
