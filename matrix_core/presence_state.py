"""Presence: what PUT /presence/{userId}/status may say, and the `m.presence` content clients get.
Pure: the current time is a parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import errors

PRESENCE_STATES = ("online", "unavailable", "offline")
MAX_STATUS_MSG_CHARS = 1000  # a status line, not a document (the body limit would allow 128 KiB)


@dataclass(frozen=True, slots=True)
class UserPresence:
    presence: str
    status_msg: str | None
    last_active_ts: int  # ms since the epoch of the last pro-active change (0: never)


OFFLINE = UserPresence("offline", None, 0)


def parse_status_body(body: dict[str, Any]) -> tuple[str, str | None]:
    """(presence, status_msg) from a PUT body; M_BAD_JSON / M_MISSING_PARAM for anything else.
    Other keys are ignored (the spec's schema does not forbid them)."""
    if "presence" not in body:
        raise errors.missing_param("Missing 'presence'")
    presence = body["presence"]
    if presence not in PRESENCE_STATES:
        raise errors.bad_json(f"'presence' must be one of {', '.join(PRESENCE_STATES)}")
    status_msg = body.get("status_msg")
    if status_msg is not None and not isinstance(status_msg, str):
        raise errors.bad_json("'status_msg' must be a string")
    if status_msg is not None and len(status_msg) > MAX_STATUS_MSG_CHARS:
        raise errors.bad_json(f"'status_msg' is longer than {MAX_STATUS_MSG_CHARS} characters")
    return presence, status_msg


def updated(old: UserPresence, presence: str, status_msg: str | None, now_ms: int) -> UserPresence:
    """The state after a PUT. Setting `online` is a pro-active event (spec: it bumps the last
    active time); a PUT without `status_msg` clears it, as Synapse does."""
    last_active = now_ms if presence == "online" or old.last_active_ts == 0 else old.last_active_ts
    return UserPresence(presence, status_msg, last_active)


def is_news(old: UserPresence, new: UserPresence) -> bool:
    """Does the change need telling? (A refresh of the same state only moves last_active.)"""
    return (old.presence, old.status_msg) != (new.presence, new.status_msg)


def content(state: UserPresence, now_ms: int) -> dict[str, Any]:
    """The `m.presence` content (and GET /presence/{userId}/status body)."""
    body: dict[str, Any] = {"presence": state.presence}
    if state.last_active_ts:
        body["last_active_ago"] = max(0, now_ms - state.last_active_ts)
    if state.status_msg is not None:
        body["status_msg"] = state.status_msg
    return body


def event(user_id: str, state: UserPresence, now_ms: int) -> dict[str, Any]:
    """An `m.presence` event as /sync's top-level `presence` section carries it."""
    return {"type": "m.presence", "sender": user_id, "content": content(state, now_ms)}
