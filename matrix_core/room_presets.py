"""What `createRoom` puts into a new room, as data: presets, default power levels. Pure."""
from __future__ import annotations

from typing import Any

from . import errors
from .params import has_space_or_control
from .room_versions import RoomVersion

PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                     "invitees_are_admins": False},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                             "invitees_are_admins": True},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden",
                    "invitees_are_admins": False},
}


# createRoom's body fields and the JSON type each must have (the spec's request schema). A field
# of the wrong type is M_BAD_JSON before anything is built (a dict preset used to be a 500).
# room_version and room_alias_name keep their own errcodes (checked where they are used).
BODY_FIELD_TYPES: dict[str, type] = {
    "creation_content": dict, "initial_state": list, "invite": list, "invite_3pid": list,
    "is_direct": bool, "name": str, "power_level_content_override": dict, "preset": str,
    "topic": str, "visibility": str,
}
VISIBILITIES = ("public", "private")
MAX_ALIAS_LENGTH = 255


def check_body(body: dict[str, Any], server_name: str) -> None:
    """Refuse a createRoom body whose fields have the wrong types or values (null counts as absent)."""
    for name, kind in BODY_FIELD_TYPES.items():
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise errors.bad_json(f"'{name}' must be {_KIND_NAMES[kind]}")
    if body.get("visibility") is not None and body["visibility"] not in VISIBILITIES:
        raise errors.bad_json("'visibility' must be 'public' or 'private'")
    preset = body.get("preset")
    if preset is not None and preset not in PRESETS:
        raise errors.bad_json(f"Unknown preset {preset[:40]!r}")
    alias_name = body.get("room_alias_name")
    if alias_name is not None:
        if not isinstance(alias_name, str) or not alias_name or ":" in alias_name or "#" in alias_name \
                or has_space_or_control(alias_name) or len(f"#{alias_name}:{server_name}") > MAX_ALIAS_LENGTH:
            raise errors.invalid_param("Invalid room_alias_name")


_KIND_NAMES = {dict: "an object", list: "a list", bool: "a boolean", str: "a string"}


def default_power_levels(version: RoomVersion, creator: str, invitee_admins: list[str]) -> dict[str, Any]:
    users: dict[str, int] = {} if version.privileged_creators else {creator: 100}
    for invitee in invitee_admins:
        users[invitee] = 100
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 150 if version.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "historical": 100,
        "notifications": {"room": 50},
    }


def initial_state_events(
    version: RoomVersion,
    creator: str,
    body: dict[str, Any],
    alias: str | None,
) -> list[tuple[str, str, dict[str, Any]]]:
    """The (type, state_key, content) events after the create and creator-join events, in order."""
    preset_name = body.get("preset")
    if preset_name is None:
        preset_name = "public_chat" if body.get("visibility") == "public" else "private_chat"
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise errors.bad_json(f"Unknown preset {preset_name!r}")
    preset = PRESETS[preset_name]
    invites = body.get("invite", [])
    if not isinstance(invites, list) or not all(isinstance(i, str) for i in invites):
        raise errors.bad_json("'invite' must be a list of user ids")

    power_levels = default_power_levels(version, creator, invites if preset["invitees_are_admins"] else [])
    override = body.get("power_level_content_override")
    if override is not None:
        if not isinstance(override, dict):
            raise errors.bad_json("'power_level_content_override' must be an object")
        power_levels.update(override)

    events: list[tuple[str, str, dict[str, Any]]] = [("m.room.power_levels", "", power_levels)]
    if alias is not None:
        events.append(("m.room.canonical_alias", "", {"alias": alias}))
    events.append(("m.room.join_rules", "", {"join_rule": preset["join_rule"]}))
    events.append(("m.room.history_visibility", "", {"history_visibility": preset["history_visibility"]}))
    events.append(("m.room.guest_access", "", {"guest_access": preset["guest_access"]}))

    initial_state = body.get("initial_state", [])
    if not isinstance(initial_state, list):
        raise errors.bad_json("'initial_state' must be a list")
    for entry in initial_state:
        if not (isinstance(entry, dict) and isinstance(entry.get("type"), str)
                and isinstance(entry.get("content", {}), dict)
                and isinstance(entry.get("state_key", ""), str)):
            raise errors.bad_json("each 'initial_state' entry needs a string 'type' and an object 'content'")
        events.append((entry["type"], entry.get("state_key", ""), entry.get("content", {})))

    name = body.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise errors.bad_json("'name' must be a string")
        events.append(("m.room.name", "", {"name": name}))
    topic = body.get("topic")
    if topic is not None:
        if not isinstance(topic, str):
            raise errors.bad_json("'topic' must be a string")
        events.append(("m.room.topic", "", {"topic": topic}))
    return events
