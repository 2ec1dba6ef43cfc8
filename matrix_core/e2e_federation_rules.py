"""E2EE over federation, pure: the shapes of the `m.direct_to_device`, `m.device_list_update` and
`m.signing_key_update` EDUs as they arrive, and when a device-list update follows the cached list.

An EDU about a user of another server than its origin, or of the wrong shape, raises BadEDU: the
caller drops it with a rate-limited log line and the transaction goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import e2e_rules as rules
from . import errors
from .ephemeral import BadEDU
from .identifiers import is_valid_user_id, server_of


@dataclass(frozen=True)
class DirectToDevice:
    sender: str
    type: str
    message_id: str
    messages: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class DeviceListUpdate:
    user_id: str
    device_id: str
    stream_id: int
    prev_id: list[int]
    deleted: bool
    keys: dict[str, Any] | None


def own_keys(value: Any, user_id: str) -> dict[str, Any] | None:
    """A key object (device keys, master or self-signing key) if it names `user_id`, else None."""
    if isinstance(value, dict) and value.get("user_id") == user_id and isinstance(value.get("keys"), dict):
        return value
    return None


def _remote_user(origin: str, value: Any, name: str) -> str:
    if not isinstance(value, str) or not is_valid_user_id(value) or server_of(value) != origin:
        raise BadEDU(f"{name} must be a user of the sending server")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_direct_to_device(origin: str, content: Any) -> DirectToDevice:
    if not isinstance(content, dict):
        raise BadEDU("content is not an object")
    sender = _remote_user(origin, content.get("sender"), "sender")
    event_type, message_id = content.get("type"), content.get("message_id")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise BadEDU("type must be a non-empty string")
    if not isinstance(message_id, str) or not message_id or len(message_id) > rules.MAX_TXN_ID:
        raise BadEDU("message_id must be a non-empty string")
    try:
        messages = rules.check_to_device({"messages": content.get("messages")})
    except errors.MatrixError as exc:
        raise BadEDU(f"messages: {exc}") from None
    return DirectToDevice(sender, event_type, message_id, messages)


def parse_device_list_update(origin: str, content: Any) -> DeviceListUpdate:
    if not isinstance(content, dict):
        raise BadEDU("content is not an object")
    user_id = _remote_user(origin, content.get("user_id"), "user_id")
    device_id, stream_id = content.get("device_id"), content.get("stream_id")
    prev_id = content.get("prev_id", [])
    if not isinstance(device_id, str) or not device_id:
        raise BadEDU("device_id must be a string")
    if not isinstance(stream_id, int) or isinstance(stream_id, bool):
        raise BadEDU("stream_id must be an integer")
    if not isinstance(prev_id, list) or not all(_is_int(p) for p in prev_id):
        raise BadEDU("prev_id must be a list of integers")
    keys = content.get("keys")
    if keys is not None and own_keys(keys, user_id) is None:
        raise BadEDU("keys must be the device's keys")
    return DeviceListUpdate(user_id, device_id, stream_id, list(prev_id), content.get("deleted") is True, keys)


def parse_signing_key_update(origin: str, content: Any) -> tuple[str, dict[str, Any]]:
    """(user_id, {"master_key"/"self_signing_key": key}) of an `m.signing_key_update`."""
    if not isinstance(content, dict):
        raise BadEDU("content is not an object")
    user_id = _remote_user(origin, content.get("user_id"), "user_id")
    update = {}
    for field in ("master_key", "self_signing_key"):
        if field in content:
            if own_keys(content[field], user_id) is None:
                raise BadEDU(f"{field} must be the user's key")
            update[field] = content[field]
    return user_id, update


def follows(known: int | None, update: DeviceListUpdate) -> bool:
    """Whether an update can be applied to a list cached at stream id `known`: it is that update
    again, or its prev_id names only `known`. Otherwise updates were missed: resync."""
    if known is None:
        return False
    return update.stream_id == known or (bool(update.prev_id) and set(update.prev_id) <= {known})
