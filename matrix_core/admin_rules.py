"""The admin API's list rules (Synapse's shapes: `GET /_synapse/admin/v2/users` and
`GET /_synapse/admin/v1/rooms`): parsing their query parameters, filtering, ordering and paging.

Pure: data in, data out. Why in memory, not SQL: a hub has tens of accounts and at most a few
hundred rooms, and the rooms' summaries come from the in-memory room views anyway; one module
then holds every rule an admin tool relies on (Synapse's orderings, `next_token`, `next_batch`),
tested without a hub."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import errors

#: Synapse's default page size; our cap (a hub's lists are short, a huge limit is a mistake).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SEARCH = 256

#: `order_by` of the user list -> the user object's field (Synapse's names).
USER_ORDERS = ("name", "is_guest", "admin", "user_type", "deactivated", "shadow_banned", "displayname",
               "avatar_url", "creation_ts", "last_seen_ts")

#: `order_by` of the room list -> (the room object's field, whether larger comes first for dir=f).
ROOM_ORDERS: dict[str, tuple[str, bool]] = {
    "name": ("name", False), "alphabetical": ("name", False), "size": ("joined_members", True),
    "canonical_alias": ("canonical_alias", False), "joined_members": ("joined_members", True),
    "joined_local_members": ("joined_local_members", True), "version": ("version", True),
    "creator": ("creator", False), "encryption": ("encryption", False), "federatable": ("federatable", True),
    "public": ("public", True), "join_rules": ("join_rules", False), "guest_access": ("guest_access", False),
    "history_visibility": ("history_visibility", False), "state_events": ("state_events", True),
}

Query = dict[str, list[str]]


def _arg(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int(query: Query, name: str, default: int, maximum: int) -> int:
    raw = _arg(query, name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise errors.invalid_param(f"Query parameter {name} must be a string representing a positive integer.")
    return min(int(raw), maximum)


def _bool(query: Query, name: str, default: bool | None) -> bool | None:
    raw = _arg(query, name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise errors.invalid_param(f"Boolean query parameter {name!r} must be one of ['true', 'false']")
    return raw == "true"


def _text(query: Query, name: str) -> str | None:
    raw = _arg(query, name)
    if raw is not None and len(raw) > MAX_SEARCH:
        raise errors.invalid_param(f"Query parameter {name} is too long")
    return raw or None


def _direction(query: Query) -> bool:
    """True for backwards (`dir=b`)."""
    raw = _arg(query, "dir") or "f"
    if raw not in ("f", "b"):
        raise errors.invalid_param("Unknown direction: dir must be 'f' or 'b'")
    return raw == "b"


@dataclass(frozen=True, slots=True)
class Page:
    start: int
    limit: int
    order_by: str
    backwards: bool


def _page(query: Query, orders: Any, default_order: str) -> Page:
    start = _int(query, "from", 0, 2**31)
    limit = _int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    order_by = _arg(query, "order_by") or default_order
    if order_by not in orders:
        raise errors.invalid_param(f"Unknown value for order_by: {order_by[:40]!r}")
    return Page(start, limit, order_by, _direction(query))


def _sort_key(field: str, larger_first: bool) -> Callable[[dict[str, Any]], Any]:
    def key(item: dict[str, Any]) -> Any:
        value = item.get(field)
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and larger_first:
            value = -value
        # None last (as SQL's NULLs sort for Synapse's ascending orders); ties by the stable id
        return (value is None, value if value is not None else 0, item.get("name") or "",
                item.get("room_id") or "")
    return key


def _mixed_safe(items: list[dict[str, Any]], field: str) -> bool:
    """Whether every non-None value of the field is of one comparable kind."""
    kinds = {type(item.get(field)) for item in items if item.get(field) is not None}
    return len({bool if k is bool else (int if k in (int, float) else k) for k in kinds}) <= 1


def list_users(users: list[dict[str, Any]], query: Query) -> dict[str, Any]:
    """`GET /_synapse/admin/v2/users`: filter (user_id, name, guests, deactivated, admins), order
    (order_by, dir; ties by name), page (from, limit) -> {"users", "total", "next_token"?}."""
    page = _page(query, USER_ORDERS, "name")
    guests = _bool(query, "guests", True)
    deactivated = _bool(query, "deactivated", False)
    admins = _bool(query, "admins", None)
    name, user_id = _text(query, "name"), _text(query, "user_id")
    chosen = []
    for user in users:
        if not guests and user["is_guest"]:
            continue
        if not deactivated and user["deactivated"]:
            continue
        if admins is not None and user["admin"] != admins:
            continue
        if name is not None:
            localpart = user["name"][1:].split(":", 1)[0]
            if name.lower() not in localpart.lower() and name.lower() not in (user.get("displayname") or "").lower():
                continue
        elif user_id is not None and user_id.lower() not in user["name"].lower():
            continue
        chosen.append(user)
    return _paged(chosen, page, page.order_by, False, "users", "total", "next_token")


def _paged(items: list[dict[str, Any]], page: Page, field: str, larger_first: bool, key: str, total_key: str,
           next_key: str) -> dict[str, Any]:
    items = sorted(items, key=lambda i: (i.get("name") or "", i.get("room_id") or ""))
    if _mixed_safe(items, field):
        items.sort(key=_sort_key(field, larger_first))
    if page.backwards:
        items.reverse()
    window = items[page.start:page.start + page.limit]
    answer: dict[str, Any] = {key: window, total_key: len(items)}
    if page.start + len(window) < len(items):
        answer[next_key] = str(page.start + len(window)) if next_key == "next_token" else page.start + len(window)
    return answer


def list_rooms(rooms: list[dict[str, Any]], query: Query) -> dict[str, Any]:
    """`GET /_synapse/admin/v1/rooms`: search_term (in the name, canonical alias or room id, any
    case), order (order_by, dir), page -> {"rooms", "offset", "total_rooms", "next_batch"?,
    "prev_batch"?}."""
    page = _page(query, ROOM_ORDERS, "name")
    term = _text(query, "search_term")
    if term is not None:
        needle = term.lower()
        rooms = [r for r in rooms if needle in (r.get("name") or "").lower()
                 or needle in (r.get("canonical_alias") or "").lower() or needle in r["room_id"].lower()]
    field, larger_first = ROOM_ORDERS[page.order_by]
    answer = _paged(rooms, page, field, larger_first, "rooms", "total_rooms", "next_batch")
    answer["offset"] = page.start
    if page.start > 0:
        answer["prev_batch"] = max(0, page.start - page.limit)
    return answer


def room_summary(room_id: str, version: str, state: dict[tuple[str, str], dict[str, Any]],
                 joined: list[str], server_name: str, public: bool) -> dict[str, Any]:
    """One room of the list from its current state's contents ((type, state_key) -> content; the
    creator from the create event's `sender`, put in its content under "_sender" by the caller)."""
    def content(event_type: str) -> dict[str, Any]:
        return state.get((event_type, ""), {})

    def text(event_type: str, key: str) -> str | None:
        value = content(event_type).get(key)
        return value if isinstance(value, str) else None

    create = content("m.room.create")
    return {
        "room_id": room_id,
        "name": text("m.room.name", "name"),
        "canonical_alias": text("m.room.canonical_alias", "alias"),
        "joined_members": len(joined),
        "joined_local_members": sum(1 for user in joined if user.endswith(":" + server_name)),
        "version": version,
        "creator": create.get("creator") if isinstance(create.get("creator"), str) else create.get("_sender"),
        "encryption": text("m.room.encryption", "algorithm"),
        "federatable": create.get("m.federate", True) is not False,
        "public": public,
        "join_rules": text("m.room.join_rules", "join_rule"),
        "guest_access": text("m.room.guest_access", "guest_access"),
        "history_visibility": text("m.room.history_visibility", "history_visibility"),
        "state_events": len(state),
        "room_type": create.get("type") if isinstance(create.get("type"), str) else None,
    }
