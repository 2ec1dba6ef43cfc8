"""The room versions this homeserver speaks, as data: each flag names one rule that changed.

Modelled on Synapse's room-version table: code asks a flag, never compares version strings.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    # v11 (MSC2174/MSC2176/MSC3821/MSC3989): `redacts` lives in content, `origin`/`membership`/
    # `prev_state` are no longer kept by redaction, create events keep all content, no `creator`.
    msc2176_redaction_rules: bool
    msc2174_redacts_in_content: bool
    implicit_room_creator: bool
    # v12 (MSC4291): the room id is derived from the create event's id; create events carry no
    # room_id and are not listed in auth_events.
    room_id_is_create_event_id: bool
    # v12 (MSC4289): the creators (sender + additional_creators) have infinite power.
    privileged_creators: bool
    # v12 (MSC4297): state resolution v2.1.
    state_res_v2_1: bool
    knock_restricted_join_rule: bool = True
    integer_only_power_levels: bool = True


ROOM_V10 = RoomVersion(
    "10",
    msc2176_redaction_rules=False,
    msc2174_redacts_in_content=False,
    implicit_room_creator=False,
    room_id_is_create_event_id=False,
    privileged_creators=False,
    state_res_v2_1=False,
)
ROOM_V11 = RoomVersion(
    "11",
    msc2176_redaction_rules=True,
    msc2174_redacts_in_content=True,
    implicit_room_creator=True,
    room_id_is_create_event_id=False,
    privileged_creators=False,
    state_res_v2_1=False,
)
ROOM_V12 = RoomVersion(
    "12",
    msc2176_redaction_rules=True,
    msc2174_redacts_in_content=True,
    implicit_room_creator=True,
    room_id_is_create_event_id=True,
    privileged_creators=True,
    state_res_v2_1=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (ROOM_V10, ROOM_V11, ROOM_V12)}
DEFAULT_ROOM_VERSION = ROOM_V12
