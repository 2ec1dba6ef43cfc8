"""The Matrix event authorization rules for room versions 10, 11 and 12, as pure functions.

Read this module side by side with the spec's "Authorization rules" section of room version 12
(https://spec.matrix.org/latest/rooms/v12/#authorization-rules); versions 10 and 11 share the
same skeleton. Rule numbers in comments (``# 5.3.4``) are the v12 numbering. Whatever differs
between versions is asked of the event's ``RoomVersion`` flags, never of version strings:

* ``implicit_room_creator`` (v11+): the creator is the create event's ``sender``, not
  ``content.creator`` (which v10 requires).
* ``room_id_is_create_event_id`` (v12, MSC4291): create events carry no ``room_id``; every
  other event's ``room_id`` names its create event, which must not be listed in ``auth_events``.
* ``privileged_creators`` (v12, MSC4289): the creators (create ``sender`` plus
  ``content.additional_creators``) have an infinite power level and may not appear in
  ``m.room.power_levels`` ``users``.
* ``knock_restricted_join_rule`` and ``integer_only_power_levels`` (all of v10-v12).

Everything here is a verdict over data: no I/O, no database, no clock. ``auth_state`` is a
mapping ``(type, state_key) -> Event`` holding the room state the event is checked against (its
auth events, or the current state, which is a superset of them). For v12 the caller includes the
create event under ``("m.room.create", "")`` even though v12 events do not list it.

Left to the caller, because they need keys or storage: signature checks (including rule 5.2, the
``join_authorised_via_users_server`` server's signature on a restricted join), and whether the
listed auth events were themselves rejected. ``check_auth_events`` covers the rest of rule 3.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AuthError
from .events import Event
from .room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from .signing import SignatureError, decode_base64, verify_json_signature

AuthState = Mapping[tuple[str, str], Event]

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

CREATE_KEY = (CREATE, "")
POWER_LEVELS_KEY = (POWER_LEVELS, "")
JOIN_RULES_KEY = (JOIN_RULES, "")

# --- power level tables -----------------------------------------------------------------------

# Levels named by a key of m.room.power_levels content, with the spec's default when the key is
# absent (and when there is no power levels event at all).
NAMED_LEVEL_DEFAULTS: dict[str, int] = {"ban": 50, "kick": 50, "redact": 50, "invite": 0}

# Rule 10.1/10.6: the top-level integer properties of m.room.power_levels.
PL_INTEGER_FIELDS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
# Rule 10.2/10.7/10.8: the properties that map a name to an integer level.
PL_MAPPING_FIELDS = ("events", "notifications")

# Without a power levels event: everyone is at 0, every event needs 0, except that the creator
# (v10/v11) is at 100. With one, these defaults fill the absent keys.
PL_ABSENT_CREATOR_LEVEL = 100
USERS_DEFAULT = 0
EVENTS_DEFAULT = 0
STATE_DEFAULT = 50

# --- identifiers ------------------------------------------------------------------------------

# A user id as the appendix's grammar allows it (historical localparts included): '@', one or
# more printable ASCII characters other than ':', then a server name (host, IPv4 or [IPv6],
# optional port). At most 255 bytes.
_USER_ID_RE = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+:"
    r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})"
    r"(?::[0-9]{1,5})?"
)


def is_valid_user_id(value: Any) -> bool:
    return isinstance(value, str) and len(value.encode()) <= 255 and _USER_ID_RE.fullmatch(value) is not None


def _domain(matrix_id: str) -> str:
    return matrix_id.split(":", 1)[1] if ":" in matrix_id else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_level(value: Any, room_version: RoomVersion | None) -> int | None:
    """A power level value as an int, or None if this room version does not accept it."""
    if _is_int(value):
        return value
    lenient = room_version is not None and not room_version.integer_only_power_levels
    if lenient and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return None


# --- reading the room state -------------------------------------------------------------------


def _create_event(auth_state: AuthState) -> Event | None:
    return auth_state.get(CREATE_KEY)


def _room_version_of(auth_state: AuthState) -> RoomVersion | None:
    create = _create_event(auth_state)
    if create is not None:
        return create.room_version
    return next((e.room_version for e in auth_state.values()), None)


def _membership(user_id: str, auth_state: AuthState) -> str | None:
    member = auth_state.get((MEMBER, user_id))
    return member.membership if member is not None else None


def _join_rule(auth_state: AuthState) -> str:
    event = auth_state.get(JOIN_RULES_KEY)
    # No join rules event: nobody may join uninvited.
    return event.content.get("join_rule", "invite") if event is not None else "invite"


def room_creators(auth_state: AuthState) -> set[str]:
    """The room's creators as this room version defines them; empty without a create event.

    v10: ``content.creator``; v11: the create event's sender; v12: the sender plus
    ``content.additional_creators``.
    """
    create = _create_event(auth_state)
    if create is None:
        return set()
    rv = create.room_version
    if not rv.implicit_room_creator:
        creator = create.content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    creators = {create.sender}
    if rv.privileged_creators:
        extra = create.content.get("additional_creators", [])
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return creators


def get_user_power_level(user_id: str, auth_state: AuthState) -> int | float:
    """The user's power level: ``math.inf`` for v12 creators, else from m.room.power_levels
    (``users``, falling back to ``users_default``), else 100 for the creator and 0 for others."""
    rv = _room_version_of(auth_state)
    creators = room_creators(auth_state)
    if rv is not None and rv.privileged_creators and user_id in creators:
        return math.inf
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is None:
        return PL_ABSENT_CREATOR_LEVEL if user_id in creators else USERS_DEFAULT
    users = pl.content.get("users")
    if isinstance(users, dict) and user_id in users:
        level = _parse_level(users[user_id], rv)
        if level is not None:
            return level
    default = _parse_level(pl.content.get("users_default", USERS_DEFAULT), rv)
    return default if default is not None else USERS_DEFAULT


def get_required_level(event_type: str, is_state: bool, auth_state: AuthState) -> int:
    """The power level needed to send an event of this type (``events``, else ``state_default`` or
    ``events_default``); 0 for everything when there is no power levels event."""
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is None:
        return 0
    rv = _room_version_of(auth_state)
    events = pl.content.get("events")
    if isinstance(events, dict) and event_type in events:
        level = _parse_level(events[event_type], rv)
        if level is not None:
            return level
    field, default = ("state_default", STATE_DEFAULT) if is_state else ("events_default", EVENTS_DEFAULT)
    level = _parse_level(pl.content.get(field, default), rv)
    return level if level is not None else default


def get_named_level(name: str, auth_state: AuthState, default: int | None = None) -> int:
    """The ``ban``/``kick``/``redact``/``invite`` level; ``default`` (or the spec's default from
    ``NAMED_LEVEL_DEFAULTS``) when absent."""
    if default is None:
        default = NAMED_LEVEL_DEFAULTS.get(name, 50)
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is None:
        return default
    level = _parse_level(pl.content.get(name, default), _room_version_of(auth_state))
    return level if level is not None else default


# --- auth events selection --------------------------------------------------------------------


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> list[tuple[str, str]]:
    """The (type, state_key) pairs an event's ``auth_events`` are chosen from (server-server
    spec, "Auth events selection"), in a stable order without duplicates."""
    if event_type == CREATE:
        return []
    wanted: list[tuple[str, str]] = []
    if not room_version.room_id_is_create_event_id:
        wanted.append(CREATE_KEY)
    wanted += [POWER_LEVELS_KEY, (MEMBER, sender)]
    if event_type == MEMBER and state_key is not None:
        membership = content.get("membership")
        wanted.append((MEMBER, state_key))
        if membership in ("join", "invite", "knock"):
            wanted.append(JOIN_RULES_KEY)
        if membership == "invite":
            token = _third_party_invite_token(content)
            if token is not None:
                wanted.append((THIRD_PARTY_INVITE, token))
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):  # every supported version has restricted rooms
            wanted.append((MEMBER, authoriser))
    return list(dict.fromkeys(wanted))


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    tpi = content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    token = signed.get("token") if isinstance(signed, dict) else None
    return token if isinstance(token, str) else None


def check_auth_events(event: Event, auth_events: Iterable[Event]) -> None:
    """Rule 3 (rule 2 in v10/v11) over the events an event lists in ``auth_events``: no duplicate
    (type, state_key), only pairs the selection algorithm picks, all in the event's room; v10/v11
    need the create event among them, v12 forbids it. Whether each was itself rejected is the
    caller's knowledge, not checked here."""
    if event.type == CREATE:
        if event.auth_event_ids:
            raise AuthError("create event has auth events")
        return
    rv = event.room_version
    allowed = set(auth_types_for_event(rv, event.type, event.sender, event.state_key, event.content))
    seen: set[tuple[str, str]] = set()
    for auth_event in auth_events:
        if auth_event.state_key is None:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        pair = auth_event.state_pair()
        if pair in seen:
            raise AuthError(f"duplicate auth event for {pair}")
        seen.add(pair)
        if pair not in allowed:
            raise AuthError(f"auth event {pair} is not one this event may cite")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} is in another room")
    if not rv.room_id_is_create_event_id and CREATE_KEY not in seen:
        raise AuthError("no create event among the auth events")


# --- the rules --------------------------------------------------------------------------------


def check_event_auth(event: Event, auth_state: AuthState) -> None:
    """Raise ``AuthError`` unless ``event`` is allowed against ``auth_state``."""
    rv = event.room_version
    if event.type == CREATE:  # 1
        _check_create(event)
        return

    create = _create_event(auth_state)
    if create is None:
        raise AuthError("the room has no create event")
    if rv.room_id_is_create_event_id:
        if event.room_id != create.room_id:  # 2
            raise AuthError("room_id does not name the room's create event")
        if create.event_id in event.auth_event_ids:  # 3.2
            raise AuthError("v12 events must not cite the create event in auth_events")
    for pair in [CREATE_KEY, *auth_types_for_event(rv, event.type, event.sender, event.state_key, event.content)]:
        state_event = auth_state.get(pair)  # 3.5: the state consulted must be this room's
        if state_event is not None and state_event.room_id != event.room_id:
            raise AuthError(f"auth event {state_event.event_id} is in another room")
    if create.content.get("m.federate", True) is False and _domain(event.sender) != _domain(create.sender):  # 4
        raise AuthError("room is not federated and the sender is on another server")

    if event.type == MEMBER:  # 5
        _check_membership(event, auth_state)
        return

    if _membership(event.sender, auth_state) != "join":  # 6
        raise AuthError(f"{event.sender} is not joined to the room")

    sender_level = get_user_power_level(event.sender, auth_state)
    if event.type == THIRD_PARTY_INVITE:  # 7
        if sender_level < get_named_level("invite", auth_state):
            raise AuthError("sender may not invite")
        return

    required = get_required_level(event.type, event.is_state, auth_state)
    if required > sender_level:  # 8
        raise AuthError(f"sending {event.type} needs power level {required}, sender has {sender_level}")

    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:  # 9
        raise AuthError("state_key names another user")

    if event.type == POWER_LEVELS:  # 10
        _check_power_levels(event, auth_state, sender_level)
    # 11: otherwise, allow. (m.room.redaction has no rule of its own: see check_redaction.)


def _check_create(event: Event) -> None:
    rv = event.room_version
    content = event.content
    if event.prev_event_ids:  # 1.1
        raise AuthError("create event has prev_events")
    if rv.room_id_is_create_event_id:
        if "room_id" in event.pdu:  # 1.2 (v12)
            raise AuthError("v12 create event must not have a room_id")
    elif _domain(event.pdu.get("room_id") or "") != _domain(event.sender):  # 1.2 (v10/v11)
        raise AuthError("room_id domain does not match the sender's")
    if "room_version" in content and content["room_version"] not in KNOWN_ROOM_VERSIONS:  # 1.3
        raise AuthError(f"unknown room version {content['room_version']!r}")
    if not rv.implicit_room_creator and "creator" not in content:  # 1.4 (v10)
        raise AuthError("create event has no creator")
    if rv.privileged_creators and "additional_creators" in content:  # 1.4 (v12)
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError("additional_creators must be a list of user ids")


# --- 5. m.room.member -------------------------------------------------------------------------


def _check_membership(event: Event, auth_state: AuthState) -> None:
    target = event.state_key
    membership = event.content.get("membership")
    if target is None or membership is None:  # 5.1
        raise AuthError("member event needs a state_key and a membership")
    # 5.2 (the authorising server's signature) is checked by the caller with the server's keys.
    rule = _MEMBERSHIP_RULES.get(membership)
    if rule is None:  # 5.8
        raise AuthError(f"unknown membership {membership!r}")
    rule(event, target, auth_state)


def _knock_join_rules(rv: RoomVersion) -> frozenset[str]:
    return frozenset({"knock", "knock_restricted"} if rv.knock_restricted_join_rule else {"knock"})


def _restricted_join_rules(rv: RoomVersion) -> frozenset[str]:
    return frozenset({"restricted", "knock_restricted"} if rv.knock_restricted_join_rule else {"restricted"})


def _check_join(event: Event, target: str, auth_state: AuthState) -> None:  # 5.3
    rv = event.room_version
    create = _create_event(auth_state)
    assert create is not None
    if event.prev_event_ids == [create.event_id] and target in _first_joiner(create):  # 5.3.1
        return
    if event.sender != target:  # 5.3.2
        raise AuthError("cannot join on behalf of another user")
    current = _membership(target, auth_state)
    if current == "ban":  # 5.3.3
        raise AuthError(f"{target} is banned")
    join_rule = _join_rule(auth_state)
    if join_rule in ("invite", "knock"):
        if current in ("invite", "join"):  # 5.3.4
            return
        raise AuthError(f"join rule is {join_rule!r} and {target} is not invited")
    if join_rule in _restricted_join_rules(rv):  # 5.3.5
        if current in ("invite", "join"):
            return
        authoriser = event.content.get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise AuthError("restricted join without join_authorised_via_users_server")
        if _membership(authoriser, auth_state) != "join":
            raise AuthError(f"authorising user {authoriser} is not joined")
        if get_user_power_level(authoriser, auth_state) < get_named_level("invite", auth_state):
            raise AuthError(f"authorising user {authoriser} may not invite")
        return
    if join_rule == "public":  # 5.3.6
        return
    raise AuthError(f"join rule {join_rule!r} does not allow joining")  # 5.3.7


def _first_joiner(create: Event) -> set[str]:
    """Who may join straight after the create event: ``content.creator`` (v10), else its sender."""
    if create.room_version.implicit_room_creator:
        return {create.sender}
    creator = create.content.get("creator")
    return {creator} if isinstance(creator, str) else set()


def _check_invite(event: Event, target: str, auth_state: AuthState) -> None:  # 5.4
    if "third_party_invite" in event.content:  # 5.4.1
        _check_third_party_invite(event, target, auth_state)
        return
    if _membership(event.sender, auth_state) != "join":  # 5.4.2
        raise AuthError(f"{event.sender} is not joined, so cannot invite")
    if _membership(target, auth_state) in ("join", "ban"):  # 5.4.3
        raise AuthError(f"{target} is already joined or is banned")
    if get_user_power_level(event.sender, auth_state) < get_named_level("invite", auth_state):  # 5.4.4
        raise AuthError("sender's power level is below the invite level")


def _check_leave(event: Event, target: str, auth_state: AuthState) -> None:  # 5.5
    current = _membership(target, auth_state)
    if event.sender == target:  # 5.5.1
        if current in ("invite", "join", "knock"):
            return
        raise AuthError(f"cannot leave from membership {current!r}")
    if _membership(event.sender, auth_state) != "join":  # 5.5.2
        raise AuthError(f"{event.sender} is not joined")
    sender_level = get_user_power_level(event.sender, auth_state)
    if current == "ban" and sender_level < get_named_level("ban", auth_state):  # 5.5.3
        raise AuthError("sender's power level is below the ban level, so cannot unban")
    if sender_level >= get_named_level("kick", auth_state) and get_user_power_level(target, auth_state) < sender_level:
        return  # 5.5.4
    raise AuthError("sender may not kick this user")  # 5.5.5


def _check_ban(event: Event, target: str, auth_state: AuthState) -> None:  # 5.6
    if _membership(event.sender, auth_state) != "join":  # 5.6.1
        raise AuthError(f"{event.sender} is not joined")
    sender_level = get_user_power_level(event.sender, auth_state)
    if sender_level >= get_named_level("ban", auth_state) and get_user_power_level(target, auth_state) < sender_level:
        return  # 5.6.2
    raise AuthError("sender may not ban this user")  # 5.6.3


def _check_knock(event: Event, target: str, auth_state: AuthState) -> None:  # 5.7
    if _join_rule(auth_state) not in _knock_join_rules(event.room_version):  # 5.7.1
        raise AuthError("the join rule does not allow knocking")
    if event.sender != target:  # 5.7.2
        raise AuthError("cannot knock on behalf of another user")
    if _membership(target, auth_state) in ("ban", "invite", "join"):  # 5.7.3/5.7.4
        raise AuthError(f"{target} cannot knock from their current membership")


_MEMBERSHIP_RULES = {
    "join": _check_join,
    "invite": _check_invite,
    "leave": _check_leave,
    "ban": _check_ban,
    "knock": _check_knock,
}


def _check_third_party_invite(event: Event, target: str, auth_state: AuthState) -> None:  # 5.4.1
    if _membership(target, auth_state) == "ban":  # 5.4.1.1
        raise AuthError(f"{target} is banned")
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):  # 5.4.1.2
        raise AuthError("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):  # 5.4.1.3
        raise AuthError("third_party_invite.signed needs mxid and token")
    if mxid != target:  # 5.4.1.4
        raise AuthError("third_party_invite mxid does not match the invitee")
    invite_event = auth_state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:  # 5.4.1.5
        raise AuthError("no m.room.third_party_invite event for this token")
    if invite_event.sender != event.sender:  # 5.4.1.6
        raise AuthError("third-party invite was issued by someone else")
    if not _signed_by_any(signed, _third_party_public_keys(invite_event.content)):  # 5.4.1.7/8
        raise AuthError("third_party_invite signature does not match the invite's public keys")


def _third_party_public_keys(content: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    for entry in content.get("public_keys", []) if isinstance(content.get("public_keys"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            keys.append(entry["public_key"])
    return keys


def _signed_by_any(signed: Mapping[str, Any], public_keys: list[str]) -> bool:
    """Whether any ed25519 signature on ``signed`` verifies under any of ``public_keys``."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    for server_name, server_sigs in signatures.items():
        if not isinstance(server_sigs, dict):
            continue
        for key_id in server_sigs:
            for public_key in public_keys:
                try:
                    verify_json_signature(dict(signed), server_name, str(key_id), decode_base64(public_key))
                    return True
                except (SignatureError, ValueError):
                    continue
    return False


# --- 10. m.room.power_levels ------------------------------------------------------------------


def _check_power_levels(event: Event, auth_state: AuthState, sender_level: int | float) -> None:
    rv = event.room_version
    new = event.content
    for field in PL_INTEGER_FIELDS:  # 10.1
        if field in new and _parse_level(new[field], rv) is None:
            raise AuthError(f"power levels {field} is not an integer")
    for field in PL_MAPPING_FIELDS:  # 10.2
        if field in new and not _is_level_map(new[field], rv):
            raise AuthError(f"power levels {field} is not an object of integers")
    users = new.get("users", {})
    if not _is_level_map(users, rv) or not all(is_valid_user_id(u) for u in users):  # 10.3
        raise AuthError("power levels users is not an object of user ids to integers")
    if rv.privileged_creators:  # 10.4
        listed = room_creators(auth_state) & set(users)
        if listed:
            raise AuthError(f"room creators cannot be given a power level: {sorted(listed)}")

    current_event = auth_state.get(POWER_LEVELS_KEY)
    if current_event is None:  # 10.5
        return
    old = current_event.content

    def too_high(value: Any) -> bool:
        level = _parse_level(value, rv)
        return level is not None and level > sender_level

    for field in PL_INTEGER_FIELDS:  # 10.6
        if old.get(field) != new.get(field):
            if too_high(old.get(field)) or too_high(new.get(field)):
                raise AuthError(f"sender's power level is too low to change {field}")
    for field in PL_MAPPING_FIELDS:  # 10.7 / 10.8
        for key, (before, after) in _changes(old.get(field), new.get(field)):
            if too_high(before) or too_high(after):
                raise AuthError(f"sender's power level is too low to change {field}[{key!r}]")
    for user, (before, after) in _changes(old.get("users"), users):
        before_level = _parse_level(before, rv)
        if user != event.sender and before_level is not None and before_level >= sender_level:  # 10.9
            raise AuthError(f"cannot change the power level of {user}, who is not below the sender")
        if too_high(after):  # 10.10
            raise AuthError(f"cannot raise {user} above the sender's own power level")


def _is_level_map(value: Any, rv: RoomVersion) -> bool:
    return isinstance(value, dict) and all(_parse_level(v, rv) is not None for v in value.values())


def _changes(old: Any, new: Any) -> list[tuple[str, tuple[Any, Any]]]:
    """Keys added, changed or removed between two level maps, with (before, after); None = absent."""
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    return [(k, (old.get(k), new.get(k))) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


# --- redactions -------------------------------------------------------------------------------


def check_redaction(redaction: Event, redacted: Event, auth_state: AuthState) -> None:
    """Whether a redaction (already allowed by ``check_event_auth``) may be applied to
    ``redacted`` (spec, "Handling redactions"): the sender needs the *redact level*, or must be
    on the same server as the redacted event's sender. Raises ``AuthError`` otherwise."""
    if redacted.room_id != redaction.room_id:
        raise AuthError("cannot redact an event in another room")
    if get_user_power_level(redaction.sender, auth_state) >= get_named_level("redact", auth_state):
        return
    if _domain(redaction.sender) == _domain(redacted.sender):
        return
    raise AuthError("sender may not redact another server's events")
