"""The authorization rules of room versions 10, 11 and 12 (matrix_core.auth_rules), rule by rule.

Events are built directly as PDU dicts (no hashing, no signing); ``Room`` grows a room's state
step by step. Each rule has an allowed and a refused case, parametrized over the room versions
where it applies or differs.
"""
from __future__ import annotations

import base64
import itertools
import math
from typing import Any

import pytest

from matrix_core.auth_rules import (
    auth_types_for_event,
    check_auth_events,
    check_event_auth,
    check_redaction,
    get_named_level,
    get_required_level,
    get_user_power_level,
    is_valid_user_id,
    room_creators,
)
from matrix_core.errors import AuthError
from matrix_core.events import Event
from matrix_core.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

ALICE = "@alice:hub.test"  # creator
BOB = "@bob:hub.test"  # moderator (50)
CAROL = "@carol:hub.test"  # plain member (0)
DAVE = "@dave:remote.test"  # outsider on another server
ERIN = "@erin:hub.test"  # outsider on this server

ALL_VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
versions = pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: f"v{rv.identifier}")

_ids = itertools.count()


def creator_levels(rv: RoomVersion, level: int = 100) -> dict[str, int]:
    """Before v12 the creator is listed in power_levels.users; in v12 it may not be."""
    return {} if rv.privileged_creators else {ALICE: level}


class Room:
    """A room's state built step by step: ``send`` checks then applies, ``put`` only applies."""

    def __init__(self, rv: RoomVersion, creator: str = ALICE, create_content: dict[str, Any] | None = None) -> None:
        self.rv = rv
        self.state: dict[tuple[str, str], Event] = {}
        content = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        pdu: dict[str, Any] = {
            "type": "m.room.create", "state_key": "", "sender": creator, "content": content,
            "prev_events": [], "auth_events": [], "depth": 1,
        }
        if not rv.room_id_is_create_event_id:
            pdu["room_id"] = "!room:hub.test"
        self.create = Event(pdu, f"$create{next(_ids)}", rv)
        check_event_auth(self.create, {})
        self.room_id = self.create.room_id
        self.state[("m.room.create", "")] = self.create
        self.last = self.create

    def event(self, type: str, sender: str, content: dict[str, Any], state_key: str | None = None,
              **pdu_extra: Any) -> Event:
        auth_pairs = auth_types_for_event(self.rv, type, sender, state_key, content)
        pdu: dict[str, Any] = {
            "type": type, "sender": sender, "content": content, "room_id": self.room_id,
            "prev_events": [self.last.event_id],
            "auth_events": [self.state[p].event_id for p in auth_pairs if p in self.state],
            "depth": self.last.depth + 1,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu.update(pdu_extra)
        return Event(pdu, f"${type.rsplit('.', 1)[-1]}{next(_ids)}", self.rv)

    def member(self, sender: str, target: str, membership: str, **content: Any) -> Event:
        return self.event("m.room.member", sender, {"membership": membership, **content}, target)

    def check(self, event: Event) -> None:
        check_event_auth(event, self.state)

    def put(self, event: Event) -> Event:
        if event.is_state:
            self.state[event.state_pair()] = event
        self.last = event
        return event

    def send(self, event: Event) -> Event:
        self.check(event)
        return self.put(event)

    def set_member(self, user: str, membership: str) -> None:
        """Setup shortcut: give ``user`` a membership without going through the rules."""
        self.put(self.member(user, user, membership))

    def power_levels(self, sender: str = ALICE, **content: Any) -> Event:
        return self.event("m.room.power_levels", sender, content, "")


def make_room(rv: RoomVersion, join_rule: str = "invite", users: dict[str, int] | None = None,
              create_content: dict[str, Any] | None = None, **pl_extra: Any) -> Room:
    """create, creator joins, power levels (bob 50), join rules, bob and carol joined."""
    room = Room(rv, create_content=create_content)
    room.send(room.member(ALICE, ALICE, "join"))
    levels = {**creator_levels(rv), BOB: 50, **(users or {})}
    room.send(room.power_levels(users=levels, **pl_extra))
    room.send(room.event("m.room.join_rules", ALICE, {"join_rule": join_rule}, ""))
    room.set_member(BOB, "join")
    room.set_member(CAROL, "join")
    return room


def allowed(room: Room, event: Event) -> None:
    room.check(event)


def refused(room: Room, event: Event, reason_part: str = "") -> None:
    with pytest.raises(AuthError) as info:
        room.check(event)
    assert reason_part in info.value.reason


# --- 1. m.room.create ---------------------------------------------------------------------------


def create_pdu(rv: RoomVersion, **overrides: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = ALICE
    pdu: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": ALICE, "content": content,
                           "prev_events": [], "auth_events": []}
    if not rv.room_id_is_create_event_id:
        pdu["room_id"] = "!room:hub.test"
    pdu.update(overrides)
    return pdu


@versions
def test_create_allowed(rv: RoomVersion) -> None:
    check_event_auth(Event(create_pdu(rv), "$c", rv), {})


@versions
def test_create_with_prev_events_refused(rv: RoomVersion) -> None:
    with pytest.raises(AuthError, match="prev_events"):
        check_event_auth(Event(create_pdu(rv, prev_events=["$x"]), "$c", rv), {})


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
@pytest.mark.parametrize("room_id, ok", [("!room:hub.test", True), ("!room:remote.test", False), ("!room", False)])
def test_create_room_id_domain_must_match_sender(rv: RoomVersion, room_id: str, ok: bool) -> None:
    event = Event(create_pdu(rv, room_id=room_id), "$c", rv)
    if ok:
        check_event_auth(event, {})
    else:
        with pytest.raises(AuthError, match="room_id"):
            check_event_auth(event, {})


def test_v12_create_must_not_have_room_id() -> None:
    event = Event(create_pdu(ROOM_V12, room_id="!room:hub.test"), "$c", ROOM_V12)
    with pytest.raises(AuthError, match="room_id"):
        check_event_auth(event, {})


@versions
@pytest.mark.parametrize("room_version, ok", [("10", True), ("11", True), ("12", True), ("9000", False), (12, False)])
def test_create_content_room_version_must_be_known(rv: RoomVersion, room_version: Any, ok: bool) -> None:
    pdu = create_pdu(rv)
    pdu["content"]["room_version"] = room_version
    event = Event(pdu, "$c", rv)
    if ok:
        check_event_auth(event, {})
    else:
        with pytest.raises(AuthError, match="unknown room version"):
            check_event_auth(event, {})


@pytest.mark.parametrize("rv, ok", [(ROOM_V10, False), (ROOM_V11, True), (ROOM_V12, True)], ids=["v10", "v11", "v12"])
def test_create_without_creator_field(rv: RoomVersion, ok: bool) -> None:
    pdu = create_pdu(rv)
    pdu["content"].pop("creator", None)
    event = Event(pdu, "$c", rv)
    if ok:
        check_event_auth(event, {})
    else:
        with pytest.raises(AuthError, match="creator"):
            check_event_auth(event, {})


@pytest.mark.parametrize("additional, ok", [
    ([], True),
    ([BOB, DAVE], True),
    (["@old_style=user!:[::1]:8448"], True),
    (BOB, False),
    ([BOB, 5], False),
    (["bob"], False),
    (["@bob"], False),
    (["@:hub.test"], False),
    ([None], False),
])
def test_v12_additional_creators_must_be_user_ids(additional: Any, ok: bool) -> None:
    pdu = create_pdu(ROOM_V12)
    pdu["content"]["additional_creators"] = additional
    event = Event(pdu, "$c", ROOM_V12)
    if ok:
        check_event_auth(event, {})
    else:
        with pytest.raises(AuthError, match="additional_creators"):
            check_event_auth(event, {})


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_additional_creators_means_nothing_before_v12(rv: RoomVersion) -> None:
    pdu = create_pdu(rv)
    pdu["content"]["additional_creators"] = "not checked"
    check_event_auth(Event(pdu, "$c", rv), {})


# --- 2-4. the room, its create event and auth events -----------------------------------------


@versions
def test_event_without_create_event_in_state_refused(rv: RoomVersion) -> None:
    room = make_room(rv)
    event = room.event("m.room.message", ALICE, {"body": "hi"})
    state = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    with pytest.raises(AuthError, match="no create event"):
        check_event_auth(event, state)


def test_v12_room_id_must_name_the_create_event() -> None:
    room = make_room(ROOM_V12)
    allowed(room, room.event("m.room.message", ALICE, {}))
    refused(room, room.event("m.room.message", ALICE, {}, room_id="!someotherroom"), "create event")


@pytest.mark.parametrize("rv, ok", [(ROOM_V10, True), (ROOM_V11, True), (ROOM_V12, False)], ids=["v10", "v11", "v12"])
def test_citing_the_create_event_in_auth_events(rv: RoomVersion, ok: bool) -> None:
    room = make_room(rv)
    event = room.event("m.room.message", ALICE, {})
    cited = room.event("m.room.message", ALICE, {}, auth_events=[*event.auth_event_ids, room.create.event_id])
    allowed(room, event)
    (allowed if ok else refused)(room, cited)


@versions
def test_state_from_another_room_refused(rv: RoomVersion) -> None:
    room = make_room(rv)
    stray = dict(room.state[("m.room.power_levels", "")].pdu, room_id="!elsewhere:hub.test")
    room.state[("m.room.power_levels", "")] = Event(stray, "$stray", rv)
    refused(room, room.event("m.room.message", ALICE, {}), "another room")


@versions
@pytest.mark.parametrize("federate", [True, False])
def test_m_federate_false_refuses_foreign_senders(rv: RoomVersion, federate: bool) -> None:
    room = make_room(rv, join_rule="public", create_content={"m.federate": federate})
    allowed(room, room.member(ERIN, ERIN, "join"))
    foreign = room.member(DAVE, DAVE, "join")
    if federate:
        allowed(room, foreign)
    else:
        refused(room, foreign, "not federated")


# --- 5.3 join -------------------------------------------------------------------------------


@pytest.mark.parametrize("rv, first_joiner, other", [
    (ROOM_V10, CAROL, ALICE),  # v10: content.creator, whoever sent the create event
    (ROOM_V11, ALICE, CAROL),  # v11+: the create event's sender
    (ROOM_V12, ALICE, CAROL),
], ids=["v10", "v11", "v12"])
def test_creator_first_join(rv: RoomVersion, first_joiner: str, other: str) -> None:
    room = Room(rv, create_content={"creator": CAROL} if not rv.implicit_room_creator else None)
    allowed(room, room.member(first_joiner, first_joiner, "join"))
    refused(room, room.member(other, other, "join"))


@versions
def test_creator_join_only_right_after_create(rv: RoomVersion) -> None:
    room = Room(rv)
    join = room.event("m.room.member", ALICE, {"membership": "join"}, ALICE, prev_events=["$something_else"])
    refused(room, join)  # no join rules event: invite-only, and alice is not invited


@versions
def test_join_public_room(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="public")
    allowed(room, room.member(ERIN, ERIN, "join"))
    allowed(room, room.member(DAVE, DAVE, "join"))


@versions
def test_join_on_behalf_of_someone_else_refused(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="public")
    refused(room, room.member(ALICE, ERIN, "join"), "on behalf")


@versions
def test_banned_user_cannot_join_public_room(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="public")
    room.set_member(ERIN, "ban")
    refused(room, room.member(ERIN, ERIN, "join"), "banned")


@versions
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
def test_invite_only_room(rv: RoomVersion, join_rule: str) -> None:
    room = make_room(rv, join_rule=join_rule)
    refused(room, room.member(ERIN, ERIN, "join"), "not invited")
    room.send(room.member(CAROL, ERIN, "invite"))
    room.send(room.member(ERIN, ERIN, "join"))
    allowed(room, room.member(ERIN, ERIN, "join"))  # re-joining (e.g. a profile change)


@versions
def test_room_without_join_rules_is_invite_only(rv: RoomVersion) -> None:
    room = make_room(rv)
    del room.state[("m.room.join_rules", "")]
    refused(room, room.member(ERIN, ERIN, "join"))
    room.set_member(ERIN, "invite")
    allowed(room, room.member(ERIN, ERIN, "join"))


@versions
@pytest.mark.parametrize("join_rule", ["private", "made_up", "knock_restricted_v2"])
def test_unknown_join_rule_refuses_joins(rv: RoomVersion, join_rule: str) -> None:
    room = make_room(rv, join_rule=join_rule)
    refused(room, room.member(ERIN, ERIN, "join"))


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
class TestRestrictedJoin:
    def test_invited_user_joins_without_authoriser(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule)
        room.set_member(ERIN, "invite")
        allowed(room, room.member(ERIN, ERIN, "join"))

    def test_no_authoriser_refused(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule)
        refused(room, room.member(ERIN, ERIN, "join"), "join_authorised_via_users_server")

    def test_authoriser_who_may_invite(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule, invite=50)
        allowed(room, room.member(DAVE, DAVE, "join", join_authorised_via_users_server=BOB))

    def test_authoriser_below_invite_level_refused(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule, invite=50)
        refused(room, room.member(DAVE, DAVE, "join", join_authorised_via_users_server=CAROL), "may not invite")

    def test_authoriser_not_joined_refused(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule)
        room.set_member(BOB, "leave")
        refused(room, room.member(DAVE, DAVE, "join", join_authorised_via_users_server=BOB), "not joined")

    def test_banned_user_refused_even_with_authoriser(self, rv: RoomVersion, join_rule: str) -> None:
        room = make_room(rv, join_rule=join_rule)
        room.set_member(DAVE, "ban")
        refused(room, room.member(DAVE, DAVE, "join", join_authorised_via_users_server=BOB), "banned")


# --- 5.4 invite -----------------------------------------------------------------------------


@versions
def test_invite_by_joined_member(rv: RoomVersion) -> None:
    room = make_room(rv)
    allowed(room, room.member(CAROL, ERIN, "invite"))
    room.set_member(ERIN, "invite")
    allowed(room, room.member(CAROL, ERIN, "invite"))  # inviting again is fine


@versions
def test_invite_by_non_member_refused(rv: RoomVersion) -> None:
    room = make_room(rv)
    refused(room, room.member(DAVE, ERIN, "invite"), "not joined")
    room.set_member(DAVE, "invite")
    refused(room, room.member(DAVE, ERIN, "invite"), "not joined")


@versions
@pytest.mark.parametrize("target_membership", ["join", "ban"])
def test_invite_of_joined_or_banned_user_refused(rv: RoomVersion, target_membership: str) -> None:
    room = make_room(rv)
    room.set_member(ERIN, target_membership)
    refused(room, room.member(BOB, ERIN, "invite"), "joined or is banned")


@versions
@pytest.mark.parametrize("sender, ok", [(ALICE, True), (BOB, True), (CAROL, False)])
def test_invite_needs_invite_level(rv: RoomVersion, sender: str, ok: bool) -> None:
    room = make_room(rv, invite=50)
    event = room.member(sender, ERIN, "invite")
    allowed(room, event) if ok else refused(room, event, "invite level")


# --- 5.4.1 third-party invites --------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@pytest.fixture
def signing_key():
    nacl_signing = pytest.importorskip("nacl.signing")
    return nacl_signing.SigningKey.generate()


def third_party_room(rv: RoomVersion, signing_key: Any, sender: str = BOB) -> Room:
    room = make_room(rv)
    public_key = _b64(bytes(signing_key.verify_key))
    room.send(room.event("m.room.third_party_invite", sender, {
        "display_name": "e***@example.org", "key_validity_url": "https://id.example/validity",
        "public_key": public_key, "public_keys": [{"public_key": public_key}],
    }, "tok123"))
    return room


def signed_block(signing_key: Any, mxid: str = ERIN, token: str = "tok123") -> dict[str, Any]:
    from canonicaljson import encode_canonical_json

    signed = {"mxid": mxid, "token": token}
    signature = signing_key.sign(encode_canonical_json(signed)).signature
    return {**signed, "signatures": {"id.example": {"ed25519:0": _b64(signature)}}}


@versions
def test_third_party_invite_allowed(rv: RoomVersion, signing_key: Any) -> None:
    room = third_party_room(rv, signing_key)
    tpi = {"display_name": "e***", "signed": signed_block(signing_key)}
    event = room.member(BOB, ERIN, "invite", third_party_invite=tpi)
    assert ("m.room.third_party_invite", "tok123") in auth_types_for_event(
        rv, event.type, event.sender, event.state_key, event.content)
    allowed(room, event)


@versions
@pytest.mark.parametrize("case", ["no_signed", "no_token", "wrong_mxid", "unknown_token", "other_sender",
                                  "bad_signature", "banned_target"])
def test_third_party_invite_refused(rv: RoomVersion, signing_key: Any, case: str) -> None:
    from nacl.signing import SigningKey

    room = third_party_room(rv, signing_key)
    signed = signed_block(signing_key)
    sender = BOB
    if case == "no_signed":
        signed = None
    elif case == "no_token":
        del signed["token"]
    elif case == "wrong_mxid":
        signed = signed_block(signing_key, mxid=CAROL)
    elif case == "unknown_token":
        signed = signed_block(signing_key, token="nope")
    elif case == "other_sender":
        sender = ALICE
    elif case == "bad_signature":
        signed = signed_block(SigningKey.generate())
    elif case == "banned_target":
        room.set_member(ERIN, "ban")
    tpi = {"display_name": "e***"} if signed is None else {"display_name": "e***", "signed": signed}
    refused(room, room.member(sender, ERIN, "invite", third_party_invite=tpi))


@versions
@pytest.mark.parametrize("sender, ok", [(BOB, True), (CAROL, False)])
def test_third_party_invite_event_needs_invite_level(rv: RoomVersion, sender: str, ok: bool) -> None:
    room = make_room(rv, invite=50)
    event = room.event("m.room.third_party_invite", sender, {"public_key": "abc"}, "tok")
    allowed(room, event) if ok else refused(room, event, "may not invite")
    room.set_member(CAROL, "leave")
    refused(room, room.event("m.room.third_party_invite", CAROL, {"public_key": "abc"}, "tok"), "not joined")


# --- 5.5 leave, kick, unban -----------------------------------------------------------------


@versions
@pytest.mark.parametrize("current, ok", [("join", True), ("invite", True), ("knock", True),
                                         ("leave", False), ("ban", False), (None, False)])
def test_leaving_oneself(rv: RoomVersion, current: str | None, ok: bool) -> None:
    room = make_room(rv)
    if current is not None:
        room.set_member(ERIN, current)
    event = room.member(ERIN, ERIN, "leave")
    allowed(room, event) if ok else refused(room, event)


@versions
@pytest.mark.parametrize("sender, target, ok", [
    (ALICE, BOB, True),    # creator kicks moderator
    (BOB, CAROL, True),    # moderator kicks plain member
    (CAROL, BOB, False),   # plain member kicks moderator
    (BOB, ALICE, False),   # moderator kicks creator
])
def test_kick(rv: RoomVersion, sender: str, target: str, ok: bool) -> None:
    room = make_room(rv)
    event = room.member(sender, target, "leave")
    allowed(room, event) if ok else refused(room, event, "kick")


@versions
def test_kick_of_equal_level_refused(rv: RoomVersion) -> None:
    room = make_room(rv, users={ERIN: 50})
    room.set_member(ERIN, "join")
    refused(room, room.member(BOB, ERIN, "leave"), "kick")


@versions
def test_kick_by_non_member_refused(rv: RoomVersion) -> None:
    room = make_room(rv)
    room.set_member(BOB, "leave")
    refused(room, room.member(BOB, CAROL, "leave"), "not joined")


@versions
def test_ban_kick_unban_flow(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="public")
    room.send(room.member(ERIN, ERIN, "join"))
    room.send(room.member(BOB, ERIN, "leave"))  # kick
    room.send(room.member(ERIN, ERIN, "join"))  # public: comes back
    refused(room, room.member(CAROL, ERIN, "ban"), "may not ban")
    room.send(room.member(BOB, ERIN, "ban"))
    refused(room, room.member(ERIN, ERIN, "join"), "banned")
    refused(room, room.member(ERIN, ERIN, "leave"))  # a banned user cannot un-ban themselves
    refused(room, room.member(CAROL, ERIN, "leave"), "ban level")  # unban needs the ban level
    room.send(room.member(BOB, ERIN, "leave"))  # unban
    room.send(room.member(ERIN, ERIN, "join"))


@versions
def test_unban_needs_both_ban_and_kick_level(rv: RoomVersion) -> None:
    room = make_room(rv, ban=75, kick=50, users={"@mod2:hub.test": 75})
    room.set_member("@mod2:hub.test", "join")
    room.set_member(ERIN, "ban")
    refused(room, room.member(BOB, ERIN, "leave"), "ban level")  # 50: kick but not ban
    allowed(room, room.member("@mod2:hub.test", ERIN, "leave"))  # 75: both
    room2 = make_room(rv, ban=50, kick=75)
    room2.set_member(ERIN, "ban")
    refused(room2, room2.member(BOB, ERIN, "leave"), "kick")  # 50: ban but not kick


# --- 5.6 ban --------------------------------------------------------------------------------


@versions
@pytest.mark.parametrize("sender, target, ok", [
    (BOB, CAROL, True),
    (BOB, ERIN, True),     # banning a non-member pre-emptively
    (CAROL, ERIN, False),  # below ban level
    (BOB, ALICE, False),   # target above sender
])
def test_ban(rv: RoomVersion, sender: str, target: str, ok: bool) -> None:
    room = make_room(rv)
    event = room.member(sender, target, "ban")
    allowed(room, event) if ok else refused(room, event, "ban")


@versions
def test_ban_by_non_member_refused(rv: RoomVersion) -> None:
    room = make_room(rv)
    room.set_member(BOB, "invite")
    refused(room, room.member(BOB, CAROL, "ban"), "not joined")


@pytest.mark.parametrize("rv, admin_can_ban_creator, creator_can_ban_admin", [
    (ROOM_V10, False, False),  # both at 100: neither is below the other
    (ROOM_V11, False, False),
    (ROOM_V12, False, True),   # the creator is infinitely powerful
], ids=["v10", "v11", "v12"])
def test_creator_versus_admin(rv: RoomVersion, admin_can_ban_creator: bool, creator_can_ban_admin: bool) -> None:
    room = make_room(rv, users={ERIN: 100})
    room.set_member(ERIN, "join")
    for event, ok in [(room.member(ERIN, ALICE, "ban"), admin_can_ban_creator),
                      (room.member(ALICE, ERIN, "ban"), creator_can_ban_admin)]:
        allowed(room, event) if ok else refused(room, event)


def test_v12_additional_creator_cannot_be_kicked_and_can_kick_admins() -> None:
    room = make_room(ROOM_V12, users={ERIN: 100}, create_content={"additional_creators": [DAVE]})
    room.set_member(DAVE, "join")
    room.set_member(ERIN, "join")
    refused(room, room.member(ERIN, DAVE, "leave"), "kick")
    allowed(room, room.member(DAVE, ERIN, "leave"))
    refused(room, room.member(DAVE, ALICE, "ban"))  # creators cannot act on each other


# --- 5.7 knock ------------------------------------------------------------------------------


@versions
@pytest.mark.parametrize("join_rule, ok", [("knock", True), ("knock_restricted", True), ("public", False),
                                           ("invite", False), ("restricted", False)])
def test_knock_depends_on_join_rule(rv: RoomVersion, join_rule: str, ok: bool) -> None:
    room = make_room(rv, join_rule=join_rule)
    event = room.member(DAVE, DAVE, "knock")
    allowed(room, event) if ok else refused(room, event, "knock")


@versions
def test_knock_on_behalf_of_another_refused(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="knock")
    refused(room, room.member(CAROL, DAVE, "knock"), "behalf")


@versions
@pytest.mark.parametrize("current, ok", [(None, True), ("leave", True), ("knock", True),
                                         ("ban", False), ("invite", False), ("join", False)])
def test_knock_depends_on_current_membership(rv: RoomVersion, current: str | None, ok: bool) -> None:
    room = make_room(rv, join_rule="knock")
    if current is not None:
        room.set_member(DAVE, current)
    event = room.member(DAVE, DAVE, "knock")
    allowed(room, event) if ok else refused(room, event)


@versions
def test_knock_then_invite_then_join(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="knock")
    room.send(room.member(DAVE, DAVE, "knock"))
    refused(room, room.member(DAVE, DAVE, "join"))
    room.send(room.member(BOB, DAVE, "invite"))
    room.send(room.member(DAVE, DAVE, "join"))


# --- 5.1 / 5.8 malformed memberships ----------------------------------------------------------


@versions
@pytest.mark.parametrize("content, state_key", [
    ({"membership": "dance"}, CAROL),
    ({}, CAROL),
    ({"membership": "join"}, None),
])
def test_malformed_member_events_refused(rv: RoomVersion, content: dict[str, Any], state_key: str | None) -> None:
    room = make_room(rv, join_rule="public")
    refused(room, room.event("m.room.member", CAROL, content, state_key))


# --- 6, 8, 9. ordinary events -------------------------------------------------------------------


@versions
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_non_member_message_refused(rv: RoomVersion, membership: str | None) -> None:
    room = make_room(rv, join_rule="public")
    if membership is not None:
        room.set_member(ERIN, membership)
    refused(room, room.event("m.room.message", ERIN, {"body": "hi"}), "not joined")
    allowed(room, room.event("m.room.message", CAROL, {"body": "hi"}))


@versions
@pytest.mark.parametrize("event_type, state_key, sender, ok", [
    ("m.room.message", None, CAROL, True),            # events_default 0
    ("m.room.topic", "", CAROL, False),                # state_default 50
    ("m.room.topic", "", BOB, True),
    ("m.room.name", "", BOB, False),                   # events["m.room.name"] = 75
    ("m.room.name", "", ALICE, True),
    ("m.reaction", None, CAROL, False),                # events["m.reaction"] = 10
    ("m.reaction", None, BOB, True),
    ("org.example.device", "", BOB, True),
    ("org.example.device", CAROL, CAROL, False),       # state_default still applies
])
def test_required_power_level(rv: RoomVersion, event_type: str, state_key: str | None, sender: str, ok: bool) -> None:
    room = make_room(rv, events={"m.room.name": 75, "m.reaction": 10})
    event = room.event(event_type, sender, {}, state_key)
    allowed(room, event) if ok else refused(room, event, "needs power level")


@versions
def test_events_default_raised(rv: RoomVersion) -> None:
    room = make_room(rv, events_default=20)
    refused(room, room.event("m.room.message", CAROL, {}), "needs power level")
    allowed(room, room.event("m.room.message", BOB, {}))


@versions
def test_without_power_levels_event_only_membership_matters(rv: RoomVersion) -> None:
    room = make_room(rv)
    del room.state[("m.room.power_levels", "")]
    allowed(room, room.event("m.room.topic", CAROL, {}, ""))
    allowed(room, room.member(CAROL, ERIN, "invite"))
    refused(room, room.member(CAROL, BOB, "ban"))  # ban level 50 > 0


@versions
@pytest.mark.parametrize("state_key, ok", [(BOB, True), (CAROL, False), ("@", False), ("bob", True), ("", True)])
def test_state_key_naming_another_user_refused(rv: RoomVersion, state_key: str, ok: bool) -> None:
    room = make_room(rv, state_default=0)
    event = room.event("org.example.presence", BOB, {}, state_key)
    allowed(room, event) if ok else refused(room, event, "another user")


# --- 10. m.room.power_levels ----------------------------------------------------------------


BAD_LEVELS = ["50", 50.0, True, None, [50], {"a": 1}]


@versions
@pytest.mark.parametrize("field", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"])
@pytest.mark.parametrize("value", BAD_LEVELS, ids=repr)
def test_power_levels_integer_fields_must_be_integers(rv: RoomVersion, field: str, value: Any) -> None:
    room = make_room(rv)
    refused(room, room.power_levels(users=creator_levels(rv), **{field: value}), "not an integer")
    allowed(room, room.power_levels(users=creator_levels(rv), **{field: 0}))


@versions
@pytest.mark.parametrize("field", ["events", "notifications"])
@pytest.mark.parametrize("value", [{"x": "50"}, {"x": 1.5}, {"x": False}, [], "room", 5], ids=repr)
def test_power_levels_maps_must_hold_integers(rv: RoomVersion, field: str, value: Any) -> None:
    room = make_room(rv)
    refused(room, room.power_levels(users=creator_levels(rv), **{field: value}), field)
    allowed(room, room.power_levels(users=creator_levels(rv), **{field: {"x": 0}}))


@versions
@pytest.mark.parametrize("users", [{BOB: "50"}, {BOB: 50.0}, {"bob": 50}, {"@bob": 0}, [BOB], "x"], ids=repr)
def test_power_levels_users_must_map_user_ids_to_integers(rv: RoomVersion, users: Any) -> None:
    room = make_room(rv)
    refused(room, room.power_levels(users=users), "users")


@pytest.mark.parametrize("rv, ok", [(ROOM_V10, True), (ROOM_V11, True), (ROOM_V12, False)], ids=["v10", "v11", "v12"])
def test_listing_a_creator_in_users(rv: RoomVersion, ok: bool) -> None:
    room = make_room(rv)
    event = room.power_levels(users={ALICE: 100, BOB: 50})
    allowed(room, event) if ok else refused(room, event, "creators")


def test_v12_listing_an_additional_creator_refused() -> None:
    room = make_room(ROOM_V12, create_content={"additional_creators": [DAVE]})
    refused(room, room.power_levels(users={DAVE: 50}), "creators")
    allowed(room, room.power_levels(users={BOB: 50}))


def test_v12_initial_power_levels_listing_creator_refused() -> None:
    room = Room(ROOM_V12)
    room.send(room.member(ALICE, ALICE, "join"))
    refused(room, room.power_levels(users={ALICE: 100}), "creators")
    allowed(room, room.power_levels(users={BOB: 100}))


@versions
def test_first_power_levels_event_may_set_anything(rv: RoomVersion) -> None:
    room = Room(rv)
    room.send(room.member(ALICE, ALICE, "join"))
    allowed(room, room.power_levels(users={**creator_levels(rv, 9000), BOB: 9000}, ban=9000, events={"x": 9000}))


@versions
@pytest.mark.parametrize("sender, users_change, ok", [
    (ALICE, {CAROL: 50}, True),           # raise someone to below own level
    (ALICE, {CAROL: 100}, True),          # ... or to own level
    (BOB, {CAROL: 50}, True),             # moderator raises a user to own level
    (BOB, {CAROL: 51}, False),            # ... but not above it
    (BOB, {CAROL: 10}, True),             # ... or to anything lower
    (BOB, {BOB: 10}, True),               # lowering oneself
    (BOB, {BOB: 60}, False),              # raising oneself
    (BOB, {ERIN: 50}, True),              # adding a new user at own level
    (BOB, {"@mod2:hub.test": 10}, False),  # changing a peer (50 >= 50)
    (BOB, {"@mod2:hub.test": None}, False),  # removing a peer
    (ALICE, {"@mod2:hub.test": None}, True),
    (ALICE, {BOB: 0}, True),              # creator demotes moderator
    (CAROL, {CAROL: 0}, False),           # carol cannot send power levels at all (state_default 50)
])
def test_changing_users(rv: RoomVersion, sender: str, users_change: dict[str, int | None], ok: bool) -> None:
    room = make_room(rv, users={"@mod2:hub.test": 50})
    users = dict(room.state[("m.room.power_levels", "")].content["users"])
    for user, level in users_change.items():
        if level is None:
            users.pop(user)
        else:
            users[user] = level
    event = room.power_levels(sender, users=users)
    allowed(room, event) if ok else refused(room, event)


@pytest.mark.parametrize("rv, ok", [(ROOM_V10, False), (ROOM_V11, False), (ROOM_V12, True)], ids=["v10", "v11", "v12"])
def test_demoting_a_fellow_admin(rv: RoomVersion, ok: bool) -> None:
    """An admin at 100 cannot touch another 100; a v12 creator (infinite) can."""
    room = make_room(rv, users={ERIN: 100})
    event = room.power_levels(ALICE, users={**creator_levels(rv), BOB: 50, ERIN: 50})
    allowed(room, event) if ok else refused(room, event, "not below the sender")


@versions
@pytest.mark.parametrize("field, old, new, ok", [
    ("ban", 50, 40, True),         # within the sender's reach
    ("ban", 50, 51, False),        # new value above the sender
    ("ban", 75, 50, False),        # old value above the sender
    ("ban", None, 50, True),       # added at own level
    ("ban", None, 60, False),
    ("ban", 50, None, True),       # removed (falls back to the 50 default)
    ("ban", 60, None, False),
    ("users_default", 0, 50, True),
    ("users_default", 0, 60, False),
    ("state_default", 50, 50, True),
    ("invite", 0, 50, True),
    ("kick", 100, 40, False),
    ("redact", 50, 0, True),
])
def test_changing_named_levels(rv: RoomVersion, field: str, old: int | None, new: int | None, ok: bool) -> None:
    old_extra = {} if old is None else {field: old}
    room = make_room(rv, **old_extra)
    content = dict(room.state[("m.room.power_levels", "")].content)
    content.pop(field, None)
    if new is not None:
        content[field] = new
    event = room.power_levels(BOB, **content)
    allowed(room, event) if ok else refused(room, event, field)


@versions
@pytest.mark.parametrize("field", ["events", "notifications"])
@pytest.mark.parametrize("old, new, ok", [
    ({"x": 50}, {"x": 10}, True),
    ({"x": 50}, {"x": 51}, False),
    ({"x": 75}, {"x": 10}, False),       # changing an entry above the sender
    ({"x": 75}, {}, False),              # removing it
    ({"x": 75}, {"x": 75, "y": 10}, True),  # untouched entries above the sender are fine
    ({}, {"y": 50}, True),
    ({}, {"y": 60}, False),
])
def test_changing_events_and_notifications(rv: RoomVersion, field: str, old: dict, new: dict, ok: bool) -> None:
    room = make_room(rv, **{field: old})
    content = dict(room.state[("m.room.power_levels", "")].content, **{field: new})
    event = room.power_levels(BOB, **content)
    allowed(room, event) if ok else refused(room, event, field)


# --- redactions -----------------------------------------------------------------------------


@versions
def test_redaction_event_follows_the_ordinary_rules(rv: RoomVersion) -> None:
    room = make_room(rv)
    content = {"redacts": "$x"} if rv.msc2174_redacts_in_content else {}
    extra = {} if rv.msc2174_redacts_in_content else {"redacts": "$x"}
    allowed(room, room.event("m.room.redaction", CAROL, content, **extra))
    refused(room, room.event("m.room.redaction", ERIN, content, **extra), "not joined")
    room2 = make_room(rv, events={"m.room.redaction": 50})
    refused(room2, room2.event("m.room.redaction", CAROL, content, **extra), "needs power level")


@versions
@pytest.mark.parametrize("redacter, original_sender, ok", [
    (BOB, CAROL, True),      # redact level (50)
    (BOB, DAVE, True),       # ... applies to other servers' events too
    (CAROL, CAROL, True),    # own event
    (CAROL, ERIN, True),     # same server: the server vouches
    (CAROL, DAVE, False),    # another server's event without the redact level
    (DAVE, CAROL, False),
    (DAVE, DAVE, True),
])
def test_check_redaction(rv: RoomVersion, redacter: str, original_sender: str, ok: bool) -> None:
    room = make_room(rv)
    room.set_member(DAVE, "join")
    original = room.put(room.event("m.room.message", original_sender, {"body": "oops"}))
    redaction = room.event("m.room.redaction", redacter, {"redacts": original.event_id})
    if ok:
        check_redaction(redaction, original, room.state)
    else:
        with pytest.raises(AuthError, match="redact"):
            check_redaction(redaction, original, room.state)


@versions
def test_check_redaction_redact_level_setting(rv: RoomVersion) -> None:
    room = make_room(rv, redact=0)
    room.set_member(DAVE, "join")
    original = room.put(room.event("m.room.message", DAVE, {}))
    check_redaction(room.event("m.room.redaction", CAROL, {}), original, room.state)


@versions
def test_check_redaction_across_rooms_refused(rv: RoomVersion) -> None:
    room, other = make_room(rv), make_room(rv)
    original = Event(dict(other.event("m.room.message", CAROL, {}).pdu, room_id="!other:hub.test"), "$o", rv)
    with pytest.raises(AuthError, match="another room"):
        check_redaction(room.event("m.room.redaction", ALICE, {}), original, room.state)


# --- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rv, expected", [
    (ROOM_V10, {CAROL}),                 # content.creator
    (ROOM_V11, {ALICE}),                 # sender; additional_creators ignored
    (ROOM_V12, {ALICE, DAVE}),
], ids=["v10", "v11", "v12"])
def test_room_creators(rv: RoomVersion, expected: set[str]) -> None:
    content: dict[str, Any] = {"additional_creators": [DAVE]}
    if not rv.implicit_room_creator:
        content["creator"] = CAROL
    room = Room(rv, create_content=content)
    assert room_creators(room.state) == expected
    assert room_creators({}) == set()


@pytest.mark.parametrize("rv, creator_level", [(ROOM_V10, 100), (ROOM_V11, 100), (ROOM_V12, math.inf)],
                         ids=["v10", "v11", "v12"])
def test_user_power_level_without_power_levels_event(rv: RoomVersion, creator_level: float) -> None:
    room = Room(rv)
    assert get_user_power_level(ALICE, room.state) == creator_level
    assert get_user_power_level(BOB, room.state) == 0


@pytest.mark.parametrize("rv, creator_level", [(ROOM_V10, 100), (ROOM_V11, 100), (ROOM_V12, math.inf)],
                         ids=["v10", "v11", "v12"])
def test_user_power_level_with_power_levels_event(rv: RoomVersion, creator_level: float) -> None:
    room = make_room(rv, users_default=5, create_content={"additional_creators": [DAVE]})
    assert get_user_power_level(ALICE, room.state) == creator_level
    assert get_user_power_level(BOB, room.state) == 50
    assert get_user_power_level(ERIN, room.state) == 5
    assert get_user_power_level(DAVE, room.state) == (math.inf if rv.privileged_creators else 5)


@versions
def test_required_and_named_levels(rv: RoomVersion) -> None:
    bare = Room(rv)
    assert get_required_level("m.room.topic", True, bare.state) == 0
    assert get_required_level("m.room.message", False, bare.state) == 0
    assert [get_named_level(n, bare.state) for n in ("ban", "kick", "redact", "invite")] == [50, 50, 50, 0]
    assert get_named_level("ban", bare.state, 7) == 7

    room = make_room(rv)  # power levels without explicit defaults
    assert get_required_level("m.room.topic", True, room.state) == 50
    assert get_required_level("m.room.message", False, room.state) == 0
    assert [get_named_level(n, room.state) for n in ("ban", "kick", "redact", "invite")] == [50, 50, 50, 0]

    custom = make_room(rv, state_default=20, events_default=3, events={"m.room.name": 90, "m.ping": 1},
                       ban=60, kick=70, redact=80, invite=10)
    assert get_required_level("m.room.topic", True, custom.state) == 20
    assert get_required_level("m.room.message", False, custom.state) == 3
    assert get_required_level("m.room.name", True, custom.state) == 90
    assert get_required_level("m.ping", False, custom.state) == 1
    assert [get_named_level(n, custom.state, 0) for n in ("ban", "kick", "redact", "invite")] == [60, 70, 80, 10]


@pytest.mark.parametrize("value, ok", [
    (ALICE, True), ("@a:b", True), ("@x:[::1]:8448", True), ("@x:1.2.3.4:80", True), ("@OLD!\"#:hub.test", True),
    ("alice:hub.test", False), ("@alice", False), ("@:hub.test", False), ("@a:b:c", False), ("@a b:c", False),
    ("@" + "a" * 250 + ":hub.test", False), (None, False), (5, False),
])
def test_is_valid_user_id(value: Any, ok: bool) -> None:
    assert is_valid_user_id(value) is ok


# --- auth events selection ------------------------------------------------------------------


CREATE_KEY = ("m.room.create", "")
PL_KEY = ("m.room.power_levels", "")
JR_KEY = ("m.room.join_rules", "")


def member_key(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


@pytest.mark.parametrize("event_type, state_key, content, expected", [
    ("m.room.create", "", {}, []),
    ("m.room.message", None, {"body": "x"}, [PL_KEY, member_key(BOB)]),
    ("m.room.topic", "", {}, [PL_KEY, member_key(BOB)]),
    ("m.room.member", BOB, {"membership": "join"}, [PL_KEY, member_key(BOB), JR_KEY]),
    ("m.room.member", CAROL, {"membership": "invite"}, [PL_KEY, member_key(BOB), member_key(CAROL), JR_KEY]),
    ("m.room.member", BOB, {"membership": "knock"}, [PL_KEY, member_key(BOB), JR_KEY]),
    ("m.room.member", CAROL, {"membership": "ban"}, [PL_KEY, member_key(BOB), member_key(CAROL)]),
    ("m.room.member", BOB, {"membership": "leave"}, [PL_KEY, member_key(BOB)]),
    ("m.room.member", CAROL, {"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}},
     [PL_KEY, member_key(BOB), member_key(CAROL), JR_KEY, ("m.room.third_party_invite", "t")]),
    ("m.room.member", CAROL, {"membership": "invite", "third_party_invite": {"signed": {}}},
     [PL_KEY, member_key(BOB), member_key(CAROL), JR_KEY]),
    ("m.room.member", BOB, {"membership": "join", "join_authorised_via_users_server": ALICE},
     [PL_KEY, member_key(BOB), JR_KEY, member_key(ALICE)]),
])
@versions
def test_auth_types_for_event(rv: RoomVersion, event_type: str, state_key: str | None, content: dict,
                              expected: list[tuple[str, str]]) -> None:
    if expected and not rv.room_id_is_create_event_id:
        expected = [CREATE_KEY, *expected]
    assert auth_types_for_event(rv, event_type, BOB, state_key, content) == expected


@versions
def test_check_auth_events_accepts_the_selection(rv: RoomVersion) -> None:
    room = make_room(rv, join_rule="public")
    event = room.member(ERIN, ERIN, "join")
    check_auth_events(event, [room.state[p] for p in auth_types_for_event(
        rv, event.type, event.sender, event.state_key, event.content) if p in room.state])


@versions
def test_check_auth_events_refusals(rv: RoomVersion) -> None:
    room = make_room(rv)
    event = room.event("m.room.message", CAROL, {})
    pl, carol = room.state[PL_KEY], room.state[member_key(CAROL)]
    base = [pl, carol] if rv.room_id_is_create_event_id else [room.create, pl, carol]
    check_auth_events(event, base)
    with pytest.raises(AuthError, match="duplicate"):
        check_auth_events(event, [*base, pl])
    with pytest.raises(AuthError, match="may not cite|not one this event"):
        check_auth_events(event, [*base, room.state[JR_KEY]])
    with pytest.raises(AuthError, match="another room"):
        check_auth_events(event, [*base[:-1], Event(dict(carol.pdu, room_id="!x:hub.test"), "$x", rv)])
    if rv.room_id_is_create_event_id:
        with pytest.raises(AuthError):
            check_auth_events(event, [room.create, *base])
    else:
        with pytest.raises(AuthError, match="no create event"):
            check_auth_events(event, [pl, carol])


@versions
def test_check_auth_events_create_has_none(rv: RoomVersion) -> None:
    check_auth_events(Event(create_pdu(rv), "$c", rv), [])
    with pytest.raises(AuthError):
        check_auth_events(Event(create_pdu(rv, auth_events=["$a"]), "$c", rv), [])
