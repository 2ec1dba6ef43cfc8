"""How events look to clients (the client-server API's ClientEvent format). Pure."""
from __future__ import annotations

from typing import Any

from .event_hashing import redact_pdu
from .events import Event

STRIPPED_STATE_TYPES = (
    ("m.room.create", ""),
    ("m.room.join_rules", ""),
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.encryption", ""),
    ("m.room.topic", ""),
)


def client_event(
    event: Event,
    now_ms: int,
    redaction: Event | None = None,
    transaction_id: str | None = None,
    include_room_id: bool = True,
) -> dict[str, Any]:
    """The ClientEvent for `event`, its content pruned if a redaction applies."""
    pdu = redact_pdu(event.pdu, event.room_version) if redaction is not None else event.pdu
    unsigned: dict[str, Any] = {"age": max(0, now_ms - event.origin_server_ts)}
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "content": pdu.get("content", {}),
        "sender": event.sender,
        "origin_server_ts": event.origin_server_ts,
        "unsigned": unsigned,
    }
    if include_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.type == "m.room.redaction" and event.redacts:
        out["redacts"] = event.redacts
    if redaction is not None:
        unsigned["redacted_because"] = client_event(redaction, now_ms)
    if transaction_id is not None:
        unsigned["transaction_id"] = transaction_id
    return out


def stripped_state(event: Event) -> dict[str, Any]:
    """The stripped form used for invite_state / knock_state."""
    return {
        "type": event.type,
        "state_key": event.state_key or "",
        "content": event.content,
        "sender": event.sender,
    }
