"""Typing notifications and read receipts as data: the client API's checks, the /sync events and
the federation EDUs (`m.typing`, `m.receipt`), parsed strictly. Pure: no clock, no I/O.

The services (service/typing.py, service/receipts.py) keep the state; this module says what a
valid request, a /sync event and an EDU look like, so the shapes are tested without sockets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import errors
from .identifiers import is_valid_user_id
from .params import MAX_ID_LENGTH, has_space_or_control

# Receipt types a client may post. m.fully_read is the read marker (room account data), not a
# receipt: /receipt takes it for the spec's sake and hands it to the read-marker path.
READ = "m.read"
READ_PRIVATE = "m.read.private"
FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
STORED_RECEIPT_TYPES = (READ, READ_PRIVATE)

MAIN_THREAD = "main"
UNTHREADED = "unthreaded"  # read_positions' key for receipts that name no thread

# Typing: a client's timeout is held to this (Synapse's clients ask for 30 s); a remote server's
# typing notification lasts this long unless it says "stopped" (federation sends no timeout).
MAX_TYPING_TIMEOUT_MS = 30_000
DEFAULT_TYPING_TIMEOUT_MS = 30_000
FEDERATION_TYPING_TIMEOUT_MS = 60_000

MAX_EDUS_PER_TRANSACTION = 100


class BadEDU(ValueError):
    """An EDU that does not have the spec's shape: dropped, never failing its transaction."""


def receipt_type(value: str) -> str:
    """A receipt type from the path: M_INVALID_PARAM unless one we know."""
    if value not in RECEIPT_TYPES:
        raise errors.invalid_param(f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}")
    return value


def _is_event_id(value: str) -> bool:
    return value.startswith("$") and 1 < len(value) <= MAX_ID_LENGTH and not has_space_or_control(value)


def event_id(value: Any, name: str = "event id") -> str:
    """An event id from a path or body: M_INVALID_PARAM unless it looks like one."""
    if not isinstance(value, str) or not _is_event_id(value):
        raise errors.invalid_param(f"Invalid {name}")
    return value


def receipt_thread(body: dict[str, Any], kind: str) -> str | None:
    """The receipt body's `thread_id` ("main" or a thread root's event id), None when absent
    (an unthreaded receipt). The read marker has no thread (Synapse refuses one, as we do)."""
    if "thread_id" not in body:
        return None
    thread = body["thread_id"]
    if not isinstance(thread, str) or not thread:
        raise errors.invalid_param("thread_id must be a non-empty string")
    if kind == FULLY_READ:
        raise errors.invalid_param(f"thread_id is not compatible with {FULLY_READ}")
    if thread != MAIN_THREAD and not _is_event_id(thread):
        raise errors.invalid_param("thread_id must be 'main' or a thread root's event id")
    return thread


@dataclass(frozen=True, slots=True)
class TypingRequest:
    typing: bool
    timeout_ms: int


def typing_request(body: dict[str, Any]) -> TypingRequest:
    """PUT /rooms/{roomId}/typing/{userId}'s body; the timeout bounded to MAX_TYPING_TIMEOUT_MS."""
    if "typing" not in body:
        raise errors.missing_param("Missing 'typing'")
    typing = body["typing"]
    if not isinstance(typing, bool):
        raise errors.bad_json("'typing' must be a boolean")
    timeout = body.get("timeout", DEFAULT_TYPING_TIMEOUT_MS)
    if typing and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise errors.bad_json("'timeout' must be a non-negative integer (milliseconds)")
    return TypingRequest(typing, min(timeout, MAX_TYPING_TIMEOUT_MS) if typing else 0)


# -- /sync events ----------------------------------------------------------------------------------

def typing_event(user_ids: list[str]) -> dict[str, Any]:
    return {"type": "m.typing", "content": {"user_ids": sorted(user_ids)}}


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str  # m.read or m.read.private
    user_id: str
    event_id: str
    ts: int
    thread_id: str | None  # None: unthreaded


def receipt_events(receipts: list[Receipt], viewer: str) -> dict[str, dict[str, Any]]:
    """room id -> its `m.receipt` event for /sync, as `viewer` may see it (their own private
    receipts only)."""
    by_room: dict[str, dict[str, Any]] = {}
    for r in receipts:
        if r.receipt_type == READ_PRIVATE and r.user_id != viewer:
            continue
        data: dict[str, Any] = {"ts": r.ts}
        if r.thread_id is not None:
            data["thread_id"] = r.thread_id
        content = by_room.setdefault(r.room_id, {})
        content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
    return {room_id: {"type": "m.receipt", "content": content} for room_id, content in by_room.items()}


# -- federation EDUs -------------------------------------------------------------------------------

def typing_edu(room_id: str, user_id: str, typing: bool) -> dict[str, Any]:
    return {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user_id, "typing": typing}}


def receipt_edu(r: Receipt) -> dict[str, Any]:
    """One public receipt as an `m.receipt` EDU (private receipts never leave the hub)."""
    data: dict[str, Any] = {"ts": r.ts}
    if r.thread_id is not None:
        data["thread_id"] = r.thread_id
    return {"edu_type": "m.receipt", "content": {
        r.room_id: {r.receipt_type: {r.user_id: {"event_ids": [r.event_id], "data": data}}}}}


@dataclass(frozen=True, slots=True)
class TypingEDU:
    room_id: str
    user_id: str
    typing: bool


def _room_id(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("!") or len(value) > MAX_ID_LENGTH \
            or has_space_or_control(value):
        raise BadEDU(f"bad room id {str(value)[:40]!r}")
    return value


def _user_id(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH or not is_valid_user_id(value):
        raise BadEDU(f"bad user id {str(value)[:40]!r}")
    return value


def parse_typing_edu(content: Any) -> TypingEDU:
    if not isinstance(content, dict):
        raise BadEDU("m.typing content is not an object")
    typing = content.get("typing")
    if not isinstance(typing, bool):
        raise BadEDU("m.typing without a boolean 'typing'")
    return TypingEDU(_room_id(content.get("room_id")), _user_id(content.get("user_id")), typing)


MAX_RECEIPTS_PER_EDU = 100


def parse_receipt_edu(content: Any) -> list[Receipt]:
    """An `m.receipt` EDU's receipts (m.read only: private ones never travel; other types are
    skipped). Each names one event, the last of `event_ids` (Synapse sends one)."""
    if not isinstance(content, dict):
        raise BadEDU("m.receipt content is not an object")
    out: list[Receipt] = []
    for room_id, by_type in content.items():
        _room_id(room_id)
        if not isinstance(by_type, dict):
            raise BadEDU("m.receipt room entry is not an object")
        for kind, by_user in by_type.items():
            if not isinstance(by_user, dict):
                raise BadEDU("m.receipt type entry is not an object")
            if kind != READ:
                continue
            for user_id, receipt in by_user.items():
                _user_id(user_id)
                if not isinstance(receipt, dict):
                    raise BadEDU("m.receipt user entry is not an object")
                ids = receipt.get("event_ids")
                if not isinstance(ids, list) or not ids or not all(isinstance(e, str) and _is_event_id(e)
                                                                   for e in ids):
                    raise BadEDU("m.receipt without valid event_ids")
                data = receipt.get("data", {})
                if not isinstance(data, dict):
                    raise BadEDU("m.receipt data is not an object")
                ts = data.get("ts", 0)
                if not isinstance(ts, int) or isinstance(ts, bool):
                    raise BadEDU("m.receipt ts is not an integer")
                thread = data.get("thread_id")
                if thread is not None and (not isinstance(thread, str)
                                           or (thread != MAIN_THREAD and not _is_event_id(thread))):
                    raise BadEDU("m.receipt with a bad thread_id")
                out.append(Receipt(room_id, kind, user_id, ids[-1], ts, thread))
                if len(out) > MAX_RECEIPTS_PER_EDU:
                    raise BadEDU("too many receipts in one EDU")
    return out
