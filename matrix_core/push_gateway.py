"""Pushers and the Push Gateway API, as data: what `POST /pushers/set` may say, the notification a
push gateway gets (`POST {url}`, /_matrix/push/v1/notify), what its answer means, and when a
failing notification is tried again or given up. Pure: no sockets, database or clock (the time is
passed in); the delivery service (service/push_delivery.py) does the I/O.

A phone gets "the freezer is warm" while locked through this: the hub POSTs to the app's push
gateway (Sygnal, ntfy's Matrix gateway, ...), which wakes the app through APNs/FCM/UnifiedPush.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import errors

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_PUSHKEY_BYTES = 512  # the spec's limits
MAX_APP_ID_CHARS = 64
MAX_DATA_BYTES = 4096  # a pusher's `data` as stored (JSON); a real one is well under 200 bytes
MAX_TEXT_CHARS = 512  # display names, lang, profile_tag
MAX_PUSHERS_PER_USER = 64  # a phone or two per app; more is a client bug filling the store
FORMATS = ("event_id_only",)  # the spec's only format besides the default (absent)


@dataclass(frozen=True, slots=True)
class PusherConfig:
    """One pusher as stored: whose it is, which device (token) made it, where it pushes."""

    user_id: str
    device_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str
    lang: str
    data: dict[str, Any]
    pushkey_ts: int  # ms, when the pusher was set

    @property
    def url(self) -> str:
        return str(self.data["url"])

    @property
    def event_id_only(self) -> bool:
        return self.data.get("format") == "event_id_only"

    def as_client_json(self) -> dict[str, Any]:
        """The pusher as GET /pushers lists it."""
        body: dict[str, Any] = {
            "pushkey": self.pushkey, "kind": self.kind, "app_id": self.app_id,
            "app_display_name": self.app_display_name, "device_display_name": self.device_display_name,
            "lang": self.lang, "data": self.data,
        }
        if self.profile_tag:
            body["profile_tag"] = self.profile_tag
        return body

    def device(self, tweaks: dict[str, Any] | None) -> dict[str, Any]:
        """This pusher's entry in a notification's `devices` (its data minus the url)."""
        entry: dict[str, Any] = {
            "app_id": self.app_id, "pushkey": self.pushkey, "pushkey_ts": self.pushkey_ts // 1000,
            "data": {k: v for k, v in self.data.items() if k != "url"},
        }
        if tweaks:
            entry["tweaks"] = tweaks
        return entry


@dataclass(frozen=True, slots=True)
class SetPusher:
    """POST /pushers/set with a kind: create or replace the user's (app_id, pushkey) pusher."""

    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str
    lang: str
    data: dict[str, Any]
    append: bool


@dataclass(frozen=True, slots=True)
class DeletePusher:
    """POST /pushers/set with `kind: null`."""

    app_id: str
    pushkey: str


def _string(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise errors.bad_json(f"'{key}' must be a string")
    return value


def check_url(url: str) -> None:
    """An absolute http(s) URL whose path is the notify endpoint (the spec: MUST be
    `/_matrix/push/v1/notify`; https, but a gateway on the LAN or in a test may be plain http).
    Parsed by hand: urllib is I/O-adjacent and kept out of pure modules."""
    if not url.isprintable() or " " in url:
        raise errors.invalid_param("data.url must not contain spaces or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise errors.invalid_param("data.url must be an absolute http or https URL")
    authority, slash, tail = rest.partition("/")
    host = authority.rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal: [::1] or [::1]:8080
        name, bracket, after = host[1:].partition("]")
        colon, port = after[:1], after[1:]
        if not bracket or colon not in ("", ":"):
            raise errors.invalid_param("data.url has an invalid host")
    else:
        name, colon, port = host.partition(":")
    if not name or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
        raise errors.invalid_param("data.url has an invalid host or port")
    path = "/" + tail.partition("?")[0].partition("#")[0] if slash else ""
    if path != NOTIFY_PATH:
        raise errors.invalid_param(f"data.url must have the path {NOTIFY_PATH}")


def parse_set_pusher(body: dict[str, Any]) -> SetPusher | DeletePusher:
    """Check a POST /pushers/set body: M_MISSING_PARAM for absent required keys, M_BAD_JSON for
    wrong types, M_INVALID_PARAM for values the spec does not allow."""
    missing = [key for key in ("kind", "app_id", "pushkey") if key not in body]
    if missing:
        raise errors.missing_param(f"Missing parameters: {', '.join(missing)}")
    app_id, pushkey = _string(body, "app_id"), _string(body, "pushkey")
    if not app_id or not pushkey:
        raise errors.invalid_param("'app_id' and 'pushkey' must not be empty")
    if len(app_id) > MAX_APP_ID_CHARS:
        raise errors.invalid_param(f"'app_id' is longer than {MAX_APP_ID_CHARS} characters")
    if len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise errors.invalid_param(f"'pushkey' is longer than {MAX_PUSHKEY_BYTES} bytes")
    kind = body["kind"]
    if kind is None:
        return DeletePusher(app_id, pushkey)
    if not isinstance(kind, str):
        raise errors.bad_json("'kind' must be a string or null")
    if kind != "http":
        raise errors.invalid_param(f"Unsupported pusher kind {kind!r}: this hub only has 'http' pushers")
    missing = [key for key in ("app_display_name", "device_display_name", "lang", "data") if key not in body]
    if missing:
        raise errors.missing_param(f"Missing parameters: {', '.join(missing)}")
    texts = {key: _string(body, key, "") or "" for key in
             ("app_display_name", "device_display_name", "lang", "profile_tag")}
    for key, value in texts.items():
        if len(value) > MAX_TEXT_CHARS:
            raise errors.invalid_param(f"'{key}' is longer than {MAX_TEXT_CHARS} characters")
    data = body["data"]
    if not isinstance(data, dict):
        raise errors.bad_json("'data' must be an object")
    if "url" not in data:
        raise errors.missing_param("'data.url' is required for an http pusher")
    if not isinstance(data["url"], str):
        raise errors.bad_json("'data.url' must be a string")
    check_url(data["url"])
    if "format" in data and data["format"] not in FORMATS:
        raise errors.invalid_param(f"'data.format' must be one of: {', '.join(FORMATS)}")
    if len(json.dumps(data, ensure_ascii=False).encode()) > MAX_DATA_BYTES:
        raise errors.invalid_param(f"'data' is larger than {MAX_DATA_BYTES} bytes")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise errors.bad_json("'append' must be a boolean")
    return SetPusher(app_id, pushkey, kind, texts["app_display_name"], texts["device_display_name"],
                     texts["profile_tag"], texts["lang"], data, append)


# -- the notification ----------------------------------------------------------------------------


def tweaks_for(actions: list[Any]) -> dict[str, Any]:
    """The `set_tweak` actions as a dict ({"sound": "default", "highlight": True}); a tweak
    without a value means True (the spec)."""
    tweaks: dict[str, Any] = {}
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True)
    return tweaks


def should_notify(actions: list[Any]) -> bool:
    return "notify" in actions


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a notification says about an event, read from it and from its room beforehand."""

    event_id: str
    room_id: str
    type: str
    sender: str
    content: dict[str, Any]
    state_key: str | None = None
    sender_display_name: str | None = None
    room_name: str | None = None


def notification(facts: EventFacts, user_id: str, tweaks: dict[str, Any], unread: int,
                 event_id_only: bool) -> dict[str, Any]:
    """The `notification` object of a notify request, without `devices` (added per pusher when it
    is sent, from the pusher as it is then). Priority is high when the phone should ring: a sound
    or highlight tweak, or an encrypted event (the hub cannot tell what it says)."""
    prio = "high" if facts.type == "m.room.encrypted" or tweaks.get("highlight") or tweaks.get("sound") else "low"
    note: dict[str, Any] = {"event_id": facts.event_id, "room_id": facts.room_id, "prio": prio,
                            "counts": {"unread": unread}}
    if event_id_only:
        return note
    note.update(type=facts.type, sender=facts.sender)
    if facts.sender_display_name:
        note["sender_display_name"] = facts.sender_display_name
    if facts.room_name:
        note["room_name"] = facts.room_name
    if facts.type == "m.room.member" and facts.state_key is not None:
        note["membership"] = facts.content.get("membership")
        note["user_is_target"] = facts.state_key == user_id
    if facts.content:
        note["content"] = facts.content
    return note


def notify_body(note: dict[str, Any], pusher: PusherConfig, tweaks: dict[str, Any]) -> dict[str, Any]:
    """The whole request body for one pusher (event_id_only pushers get no tweaks: the spec's
    format carries the id and counts only)."""
    return {"notification": {**note, "devices": [pusher.device(None if pusher.event_id_only else tweaks)]}}


def rejected_pushkeys(answer: Any) -> list[str]:
    """The pushkeys a gateway's 200 answer says are no longer valid (`{"rejected": [...]}`)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("rejected"), list):
        return []
    return [key for key in answer["rejected"] if isinstance(key, str)]


# -- retries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a failing notification is retried. Retries start after `first_retry_s` and double
    up to `max_backoff_s`; a notification older than `give_up_after_s` is dropped (Synapse's 24 h:
    after that it is noise, not news, and a gateway that comes back gets no flood of stale ones)."""

    give_up_after_s: float = 86400.0
    max_backoff_s: float = 600.0
    timeout_s: float = 10.0  # one notify request, connection and answer
    max_concurrent: int = 8  # notify requests in flight in the whole hub
    max_queued_per_pusher: int = 1000  # past this the oldest queued notification is dropped

    @property
    def first_retry_s(self) -> float:
        """1 s, or less when the give-up window is short, so it still holds several tries."""
        return min(1.0, self.give_up_after_s / 64)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed try in a row."""
        return min(self.max_backoff_s, self.first_retry_s * 2 ** max(0, min(attempts - 1, 40)))

    def expired(self, queued_ms: int, now_ms: int) -> bool:
        return now_ms - queued_ms > self.give_up_after_s * 1000


def permanent_failure(status: int) -> bool:
    """A 4xx other than 408/429: the gateway refuses this request as such; sending it again
    cannot help (5xx, timeouts and refused connections are retried)."""
    return 400 <= status < 500 and status not in (408, 429)
