"""Account data and room tags: what a client may store, and which of it a /sync filter lets
through. Pure (no I/O): the service stores what these functions accept.

Account data is not an event: it is never hashed, signed or federated, so its content is plain
JSON and keeps numbers with a fraction (Element stores room tags as `{"order": 0.5}`). It is
stored as JSON text and given back as the same JSON numbers (`0.5` stays `0.5`; a float is
written in its shortest round-trip form, so `1.0` may come back as `1.0`, never as `1`).
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

from . import errors

# Types the server manages: clients read them as any other account data but may not set them
# through the account data API (spec, "Server Behaviour": 405 M_BAD_JSON). `m.fully_read` is set
# with POST /rooms/{roomId}/read_markers, `m.push_rules` through /pushrules.
SERVER_MANAGED_TYPES = frozenset({"m.fully_read", "m.push_rules"})

MAX_TYPE_BYTES = 255  # an event type's limit; the spec's limit for a tag name too
TAG_TYPE = "m.tag"

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def check_type(value: str, what: str = "account data type") -> str:
    """An account data type (or tag name) from a path: non-empty, at most 255 bytes of UTF-8, no
    control characters. M_INVALID_PARAM otherwise."""
    if not value or not value.isprintable() or len(value.encode("utf-8", "surrogatepass")) > MAX_TYPE_BYTES:
        raise errors.invalid_param(f"Invalid {what}: {value[:40]!r}")
    return value


def check_client_settable(data_type: str) -> None:
    """Refuse the types the server manages (the spec's 405 with M_BAD_JSON)."""
    if data_type in SERVER_MANAGED_TYPES:
        raise errors.MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API: the server "
                                 "manages it" + (" (use /rooms/{roomId}/read_markers)" if data_type == "m.fully_read"
                                                 else " (use /pushrules)"))


def check_room_id(value: str) -> str:
    """A room id in an account data path ('!...'): M_INVALID_PARAM otherwise (the spec's answer)."""
    if not value.startswith("!") or len(value) < 2 or len(value) > MAX_TYPE_BYTES or " " in value \
            or not value.isprintable():
        raise errors.invalid_param(f"{value[:40]!r} is not a valid room ID")
    return value


def encode_content(content: Any) -> str:
    """The stored form of account data content: a JSON object as text. M_BAD_JSON for anything
    else (non-object, NaN/infinite numbers, strings that are not Unicode)."""
    if not isinstance(content, dict):
        raise errors.bad_json("Account data content must be a JSON object")
    _check_plain(content)
    try:
        text = _ENCODER.encode(content)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise errors.bad_json(f"Account data content is not storable JSON: {exc}") from None
    return text


_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any) -> None:
    """Only JSON's own shapes: the encoder would silently turn an integer key into a string (a
    CoAP device's CBOR map can have one) and fail on bytes with a less clear message."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise errors.bad_json("Account data keys must be strings")
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
        elif not isinstance(item, _SCALARS):
            raise errors.bad_json(f"Account data cannot hold a {type(item).__name__}")


def decode_content(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


# -- tags --------------------------------------------------------------------------------------


def check_tag_body(body: dict[str, Any]) -> dict[str, Any]:
    """A tag's content: any JSON object whose `order`, if present, is a finite number.

    The spec describes `order` as a number between 0 and 1 that clients sort by; a string there
    would break other clients' sorting, so it is refused (M_BAD_JSON). Numbers outside 0..1 are
    kept as sent (clients clamp or ignore them; refusing would lose a user's tag)."""
    order = body.get("order")
    if "order" in body and (isinstance(order, bool) or not isinstance(order, (int, float))
                            or not math.isfinite(order)):
        raise errors.bad_json("Tag 'order' must be a number (0 to 1)")
    return body


def with_tag(content: dict[str, Any] | None, tag: str, body: dict[str, Any]) -> dict[str, Any]:
    """The `m.tag` content after adding (or replacing) one tag."""
    tags = dict(_tags_of(content))
    tags[tag] = body
    return {"tags": tags}


def without_tag(content: dict[str, Any] | None, tag: str) -> dict[str, Any] | None:
    """The `m.tag` content after removing one tag; None when the tag was not there (no change)."""
    tags = dict(_tags_of(content))
    if tag not in tags:
        return None
    del tags[tag]
    return {"tags": tags}


def tags_of(content: dict[str, Any] | None) -> dict[str, Any]:
    """The tags of a room (GET /user/{u}/rooms/{r}/tags): {} when none."""
    return dict(_tags_of(content))


def _tags_of(content: dict[str, Any] | None) -> dict[str, Any]:
    tags = (content or {}).get("tags")
    return tags if isinstance(tags, dict) else {}


# -- /sync filters -----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")) + r"\Z", re.DOTALL)


def type_matches(globs: list[Any], event_type: str) -> bool:
    """Does any of a filter's `types`-style patterns match? ('*' matches any sequence.)"""
    return any(isinstance(g, str) and _pattern(g).match(event_type) is not None for g in globs)


def _list(filt: dict[str, Any], key: str) -> list[Any] | None:
    value = filt.get(key)
    return value if isinstance(value, list) else None


def event_filter_allows(filt: Any, event_type: str, sender: str | None = None) -> bool:
    """An EventFilter's `types`/`not_types` (and `senders`/`not_senders` when a sender is given).
    Anything that is not a filter object lets everything through."""
    if not isinstance(filt, dict):
        return True
    not_types = _list(filt, "not_types")
    if not_types is not None and type_matches(not_types, event_type):
        return False
    types = _list(filt, "types")
    if types is not None and not type_matches(types, event_type):
        return False
    if sender is not None:
        not_senders = _list(filt, "not_senders")
        if not_senders is not None and sender in not_senders:
            return False
        senders = _list(filt, "senders")
        if senders is not None and sender not in senders:
            return False
    return True


def room_allowed(filt: Any, room_id: str) -> bool:
    """A filter's `rooms`/`not_rooms` (the room filter's, or a RoomEventFilter's)."""
    if not isinstance(filt, dict):
        return True
    not_rooms = _list(filt, "not_rooms")
    if not_rooms is not None and room_id in not_rooms:
        return False
    rooms = _list(filt, "rooms")
    return rooms is None or room_id in rooms


def explicit_limit(filt: Any) -> int | None:
    """A filter's `limit` when the client gave one (a positive integer); None otherwise. The spec's
    default of 10 is not applied to account data: a client with more types than that would
    silently miss some of its settings (Synapse applies no limit there either)."""
    if not isinstance(filt, dict):
        return None
    limit = filt.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit
    return None


def global_filter(sync_filter: dict[str, Any]) -> Any:
    """The sync filter's top-level `account_data` EventFilter."""
    return sync_filter.get("account_data") if isinstance(sync_filter, dict) else None


def room_filters(sync_filter: dict[str, Any]) -> tuple[Any, Any]:
    """(the `room` filter, its `account_data` RoomEventFilter)."""
    room = sync_filter.get("room") if isinstance(sync_filter, dict) else None
    return room, (room.get("account_data") if isinstance(room, dict) else None)


def ephemeral_filter(sync_filter: dict[str, Any]) -> Any:
    """The sync filter's `room.ephemeral` RoomEventFilter (types, not_types, rooms, not_rooms)."""
    room = sync_filter.get("room") if isinstance(sync_filter, dict) else None
    return room.get("ephemeral") if isinstance(room, dict) else None


def ephemeral_kept(filt: Any, room_id: str, events: list[Any]) -> list[Any]:
    """A joined room's ephemeral events (m.receipt, m.typing) the `room.ephemeral` filter lets
    through: by type, and none for a room the filter's rooms/not_rooms leave out."""
    if not isinstance(filt, dict):
        return events
    if not room_allowed(filt, room_id):
        return []
    return [ev for ev in events if isinstance(ev, dict) and event_filter_allows(filt, str(ev.get("type", "")))]
