"""Simplified Sliding Sync (MSC4186), the pure parts: request validation, list filters, ordering
and ranges, `required_state` selection ($LAZY, $ME, wildcards), room name/avatar/heroes. Pure.

Why the bounds: a sliding sync request is one JSON body a client may fill with anything. Every
list, range, required_state entry and subscription costs work per request and per wake-up of a
long-poll, so each is capped (Synapse leaves most of this to pydantic types; a hub on a small
board must refuse 10,000 lists before doing anything). Unknown keys, including unknown
extensions, are ignored as Synapse's request models ignore them, so newer clients keep working.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import errors

MAX_LISTS = 64
MAX_LIST_NAME = 64
MAX_RANGES = 16
MAX_RANGE_END = 100_000          # an index past the user's room count answers nothing; past this, a bad body
MAX_REQUIRED_STATE = 100
MAX_SUBSCRIPTIONS = 200
MAX_TIMELINE_LIMIT = 500
MAX_FILTER_ITEMS = 50
MAX_HEROES = 5
MAX_CONN_ID = 64

WILDCARD = "*"
LAZY = "$LAZY"
ME = "$ME"

# Synapse's SLIDING_SYNC_DEFAULT_BUMP_EVENT_TYPES: what moves a room up the list (a membership
# change or a topic edit does not).
# MSC4360's threads extension: its stable name and the unstable one clients send today.
THREADS_EXTENSIONS = ("threads", "io.element.msc4360.threads")
THREADS_LIMIT = 100  # the MSC's default, and our ceiling ("servers may impose a smaller limit")
BUMP_EVENT_TYPES = frozenset({
    "m.room.create", "m.room.message", "m.room.encrypted", "m.sticker", "m.call.invite",
    "m.poll.start", "m.beacon_info",
})
EXTENSIONS = ("to_device", "e2ee", "account_data", "receipts", "typing", *THREADS_EXTENSIONS)

_ROOM_ID = re.compile(r"![^\s]{1,255}\Z")  # "!local:server", or v12's "!opaque"
_THREADS_TOKEN = re.compile(r"u([0-9]{1,16})_([0-9]{1,16})\Z")
_POS = re.compile(r"([a-z0-9]{1,16})-([0-9]{1,9})\Z")


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """What a list or a subscription asks of each of its rooms."""
    timeline_limit: int = 0
    required_state: tuple[tuple[str, str], ...] = ()

    def merge(self, other: RoomConfig) -> RoomConfig:
        """A room in several lists/subscriptions gets the union (Synapse's combine_room_sync_config)."""
        return RoomConfig(max(self.timeline_limit, other.timeline_limit),
                          tuple(dict.fromkeys(self.required_state + other.required_state)))


@dataclass(frozen=True, slots=True)
class ListFilters:
    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] = ()
    spaces: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ListRequest:
    ranges: tuple[tuple[int, int], ...]
    config: RoomConfig
    filters: ListFilters


@dataclass(slots=True)
class SlidingRequest:
    lists: dict[str, ListRequest] = field(default_factory=dict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    unsubscribe: tuple[str, ...] = ()
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> its request object
    conn_id: str = ""


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What list filters look at, gathered by the service."""
    room_id: str
    membership: str          # "join" or "invite"
    is_dm: bool
    is_encrypted: bool
    room_type: str | None
    spaces: frozenset[str] = frozenset()


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise errors.invalid_param(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _bool(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise errors.invalid_param(f"{what} must be a boolean")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.bad_json(f"{what} must be an object")
    return value


def _list(value: Any, what: str, cap: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise errors.bad_json(f"{what} must be an array")
    if len(value) > cap:
        raise errors.invalid_param(f"{what} has more than {cap} entries")
    return value


def room_id_param(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ROOM_ID.match(value):
        raise errors.invalid_param(f"{what} must be a room ID")
    return value


def parse_config(body: dict[str, Any], what: str) -> RoomConfig:
    limit = body.get("timeline_limit", 0)
    limit = _int(limit if limit is not None else 0, f"{what}.timeline_limit", 0, 2**31)
    required: list[tuple[str, str]] = []
    for entry in _list(body.get("required_state"), f"{what}.required_state", MAX_REQUIRED_STATE):
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(part, str) and len(part) <= 255 for part in entry)):
            raise errors.invalid_param(f"{what}.required_state entries are [event type, state key]")
        required.append((entry[0], entry[1]))
    return RoomConfig(min(limit, MAX_TIMELINE_LIMIT), tuple(dict.fromkeys(required)))


def _room_types(value: Any, what: str) -> tuple[str | None, ...]:
    items = _list(value, what, MAX_FILTER_ITEMS)
    if not all(item is None or isinstance(item, str) for item in items):
        raise errors.invalid_param(f"{what} entries are room types or null")
    return tuple(items)


def parse_filters(body: dict[str, Any], what: str) -> ListFilters:
    spaces = body.get("spaces")
    return ListFilters(
        is_dm=_bool(body.get("is_dm"), f"{what}.is_dm"),
        is_encrypted=_bool(body.get("is_encrypted"), f"{what}.is_encrypted"),
        is_invite=_bool(body.get("is_invite"), f"{what}.is_invite"),
        room_types=None if body.get("room_types") is None else _room_types(body["room_types"], f"{what}.room_types"),
        not_room_types=_room_types(body.get("not_room_types"), f"{what}.not_room_types"),
        spaces=None if spaces is None else tuple(room_id_param(s, f"{what}.spaces[]")
                                                  for s in _list(spaces, f"{what}.spaces", MAX_FILTER_ITEMS)),
    )


def parse_ranges(value: Any, what: str) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for entry in _list(value, what, MAX_RANGES):
        if not isinstance(entry, list) or len(entry) != 2:
            raise errors.invalid_param(f"{what} entries are [start, end]")
        start = _int(entry[0], f"{what} start", 0, MAX_RANGE_END)
        end = _int(entry[1], f"{what} end", 0, MAX_RANGE_END)
        if end < start:
            raise errors.invalid_param(f"{what}: end before start")
        out.append((start, end))
    return tuple(out)


def parse_request(body: dict[str, Any]) -> SlidingRequest:
    """The request body, checked whole before any work (M_BAD_JSON for wrong shapes,
    M_INVALID_PARAM for wrong values)."""
    req = SlidingRequest()
    conn_id = body.get("conn_id")
    if conn_id is not None:
        if not isinstance(conn_id, str) or len(conn_id) > MAX_CONN_ID:
            raise errors.invalid_param(f"conn_id must be a string of at most {MAX_CONN_ID} characters")
        req.conn_id = conn_id
    lists = _obj(body.get("lists"), "lists")
    if len(lists) > MAX_LISTS:
        raise errors.invalid_param(f"At most {MAX_LISTS} lists")
    for name, raw in lists.items():
        if not name or len(name) > MAX_LIST_NAME:
            raise errors.invalid_param(f"List names have 1 to {MAX_LIST_NAME} characters")
        what = f"lists.{name}"
        raw = _obj(raw, what)
        req.lists[name] = ListRequest(parse_ranges(raw.get("ranges"), f"{what}.ranges"),
                                      parse_config(raw, what), parse_filters(_obj(raw.get("filters"), what), what))
    subs = _obj(body.get("room_subscriptions"), "room_subscriptions")
    if len(subs) > MAX_SUBSCRIPTIONS:
        raise errors.invalid_param(f"At most {MAX_SUBSCRIPTIONS} room subscriptions")
    for room_id, raw in subs.items():
        req.subscriptions[room_id_param(room_id, "room_subscriptions key")] = parse_config(
            _obj(raw, f"room_subscriptions.{room_id}"), "room_subscription")
    req.unsubscribe = tuple(room_id_param(r, "unsubscribe_rooms[]")
                            for r in _list(body.get("unsubscribe_rooms"), "unsubscribe_rooms", MAX_SUBSCRIPTIONS))
    extensions = _obj(body.get("extensions"), "extensions")
    for name in EXTENSIONS:  # others are ignored, as Synapse does
        if name in extensions and extensions[name] is not None:
            ext = _obj(extensions[name], f"extensions.{name}")
            _bool(ext.get("enabled"), f"extensions.{name}.enabled")
            since = ext.get("since")
            if since is not None and (not isinstance(since, str) or len(since) > 40):
                raise errors.invalid_param(f"extensions.{name}.since must be a token")
            if "limit" in ext and ext["limit"] is not None:
                _int(ext["limit"], f"extensions.{name}.limit", 1 if name in THREADS_EXTENSIONS else 0, 10_000)
            if "include_roots" in ext:
                _bool(ext["include_roots"], f"extensions.{name}.include_roots")
            req.extensions[name] = ext
    return req


def parse_pos(raw: str) -> tuple[str, int]:
    """`pos` is `<connection nonce>-<answer number>`; anything else is unknown (M_UNKNOWN_POS)."""
    match = _POS.match(raw)
    if match is None:
        raise unknown_pos()
    return match.group(1), int(match.group(2))


def unknown_pos() -> errors.MatrixError:
    """MSC4186: the server lost (or never had) the connection: the client starts over without pos."""
    return errors.MatrixError(400, "M_UNKNOWN_POS", "Unknown position: start a new sliding sync connection")


# -- lists ----------------------------------------------------------------------------------------

def matches(filters: ListFilters, facts: RoomFacts) -> bool:
    if filters.is_dm is not None and facts.is_dm != filters.is_dm:
        return False
    if filters.is_encrypted is not None and facts.is_encrypted != filters.is_encrypted:
        return False
    if filters.is_invite is not None and (facts.membership == "invite") != filters.is_invite:
        return False
    if filters.room_types is not None and facts.room_type not in filters.room_types:
        return False
    if facts.room_type in filters.not_room_types:
        return False
    if filters.spaces is not None and not facts.spaces.intersection(filters.spaces):
        return False
    return True


def order_rooms(bump_stamps: Mapping[str, int]) -> list[str]:
    """Most recent first (bump stamp descending), room id as a stable tie-break."""
    return sorted(bump_stamps, key=lambda room_id: (-bump_stamps[room_id], room_id))


def in_ranges(ordered: list[str], ranges: Iterable[tuple[int, int]]) -> list[str]:
    """The rooms at the (inclusive) index ranges, each once, in list order."""
    picked: dict[str, None] = {}
    for start, end in ranges:
        for room_id in ordered[start:end + 1]:
            picked[room_id] = None
    return list(picked)


# -- a room's contents ----------------------------------------------------------------------------

StateMap = Mapping[tuple[str, str], Any]  # (type, state_key) -> event (anything with .sender)


def select_state(state: StateMap, required: Iterable[tuple[str, str]], user_id: str,
                 timeline_senders: Iterable[str]) -> list[tuple[str, str]]:
    """The state keys `required_state` asks for: `["*", "*"]` everything, `[type, "*"]` every key
    of a type, `$ME` the user's own key, `["m.room.member", "$LAZY"]` the members who sent
    something in the timeline (and the user), else exact [type, key] pairs that exist."""
    required = list(required)
    if not required:
        return []
    senders = list(timeline_senders)
    wanted: dict[tuple[str, str], None] = {}
    all_types = any(t == WILDCARD and k == WILDCARD for t, k in required)
    any_key_types = {t for t, k in required if k == WILDCARD and t != WILDCARD}
    exact: set[tuple[str, str]] = set()
    keys_any_type: set[str] = set()
    for event_type, state_key in required:
        key = user_id if state_key == ME else state_key
        if event_type == "m.room.member" and state_key == LAZY:
            for sender in senders + [user_id]:
                exact.add(("m.room.member", sender))
        elif event_type == WILDCARD and key != WILDCARD:
            keys_any_type.add(key)
        elif key != WILDCARD:
            exact.add((event_type, key))
    for pair in state:
        if all_types or pair[0] in any_key_types or pair in exact or pair[1] in keys_any_type:
            wanted[pair] = None
    return list(wanted)


def _content(state: StateMap, key: tuple[str, str]) -> dict[str, Any]:
    ev = state.get(key)
    content = getattr(ev, "content", None) if ev is not None else None
    return content if isinstance(content, dict) else {}


def room_name(state: StateMap) -> str | None:
    """The explicit name (m.room.name), else the canonical alias; None: the client builds one
    from `heroes` (MSC4186 leaves that to clients)."""
    name = _content(state, ("m.room.name", "")).get("name")
    if isinstance(name, str) and name:
        return name
    alias = _content(state, ("m.room.canonical_alias", "")).get("alias")
    return alias if isinstance(alias, str) and alias else None


def room_avatar(state: StateMap) -> str | None:
    url = _content(state, ("m.room.avatar", "")).get("url")
    return url if isinstance(url, str) and url else None


def heroes(state: StateMap, user_id: str) -> list[dict[str, Any]]:
    """Up to five other members (joined or invited; if none, those who left), in state order,
    with their display names and avatars: what a client names an unnamed room after."""
    present: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    for (event_type, member), ev in state.items():
        if event_type != "m.room.member" or member == user_id:
            continue
        content = _content(state, (event_type, member))
        hero: dict[str, Any] = {"user_id": member}
        if isinstance(content.get("displayname"), str):
            hero["displayname"] = content["displayname"]
        if isinstance(content.get("avatar_url"), str):
            hero["avatar_url"] = content["avatar_url"]
        (present if content.get("membership") in ("join", "invite") else gone).append(hero)
    return (present or gone)[:MAX_HEROES]


def member_counts(state: StateMap) -> tuple[int, int]:
    """(joined_count, invited_count)."""
    joined = invited = 0
    for (event_type, _), ev in state.items():
        if event_type == "m.room.member":
            membership = _content(state, (event_type, _)).get("membership")
            joined += membership == "join"
            invited += membership == "invite"
    return joined, invited


def dm_rooms(m_direct: Any) -> frozenset[str]:
    """Room ids named by an `m.direct` account data content ({user: [room ids]})."""
    if not isinstance(m_direct, dict):
        return frozenset()
    return frozenset(r for rooms in m_direct.values() if isinstance(rooms, list) for r in rooms if isinstance(r, str))


@dataclass(frozen=True, slots=True)
class ThreadUpdate:
    room_id: str
    root_id: str
    latest: int   # the position of the thread's newest reply in the window
    missed: int   # how many of its replies the window holds


def thread_updates(replies: dict[str, list[tuple[str, int]]], covered: dict[str, int], include_roots: bool,
                   limit: int) -> tuple[list[ThreadUpdate], bool]:
    """MSC4360: which threads to name in the `threads` extension, newest first, from each room's
    visible thread replies since the last answer ((root, position), any order). Without
    `include_roots` a thread whose replies all came down this answer's timeline of the room
    (`covered`: room -> the position of the timeline's first event) is left out: the client has
    them. Returns at most `limit` threads and whether some were left out for the limit."""
    found: dict[tuple[str, str], list[int]] = {}
    for room_id, rows in replies.items():
        for root_id, pos in rows:
            entry = found.setdefault((room_id, root_id), [pos, pos, 0])
            entry[0] = max(entry[0], pos)
            entry[1] = min(entry[1], pos)
            entry[2] += 1
    updates = [ThreadUpdate(room_id, root_id, latest, missed)
               for (room_id, root_id), (latest, earliest, missed) in found.items()
               if include_roots or room_id not in covered or earliest < covered[room_id]]
    updates.sort(key=lambda u: (-u.latest, u.room_id, u.root_id))
    return updates[:limit], len(updates) > limit


def threads_token(before: int, ceiling: int) -> str:
    """MSC4360's `prev_batch` / `next_batch` for /thread_updates: threads whose newest reply up to
    `ceiling` (where the window was cut) is at or before `before` are still to come."""
    return f"u{max(before, 0)}_{ceiling}"


def parse_threads_token(raw: str) -> tuple[int, int]:
    match = _THREADS_TOKEN.match(raw)
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise errors.invalid_param("'from' is not a thread updates token")
    return int(match.group(1)), int(match.group(2))
