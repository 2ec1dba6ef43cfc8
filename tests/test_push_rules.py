"""Push rules, pure: the default rule set, layering of a user's rules, validation, evaluation."""
from __future__ import annotations

import math
from typing import Any

import pytest

from matrix_core import push_rules as pr
from matrix_core.events import Event
from matrix_core.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

ALICE = "@alice:hub"
BOB = "@bob:hub"
CAROL = "@carol:hub"
ROOM = "!room:hub"


def ev(etype: str, content: dict[str, Any], sender: str = BOB, state_key: str | None = None,
       rv: RoomVersion = ROOM_V11, n: int = 0) -> Event:
    pdu: dict[str, Any] = {"type": etype, "content": content, "sender": sender, "room_id": ROOM}
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, f"$e{etype}{state_key}{n}", rv)


def state(members: dict[str, str | None], pl: dict[str, Any] | None = None, rv: RoomVersion = ROOM_V11,
          creator: str = CAROL) -> dict[tuple[str, str], Event]:
    out = {("m.room.create", ""): ev("m.room.create", {}, sender=creator, state_key="", rv=rv)}
    for user, name in members.items():
        content: dict[str, Any] = {"membership": "join"}
        if name is not None:
            content["displayname"] = name
        out[("m.room.member", user)] = ev("m.room.member", content, sender=user, state_key=user, rv=rv)
    if pl is not None:
        out[("m.room.power_levels", "")] = ev("m.room.power_levels", pl, sender=creator, state_key="", rv=rv)
    return out


THREE = state({ALICE: "Alice", BOB: "Bob", CAROL: None})
TWO = state({ALICE: "Alice", BOB: "Bob"})


def rule_for(pdu: dict[str, Any], st: dict[tuple[str, str], Event] = THREE, user: str = ALICE,
             rules: pr.UserRules | None = None) -> str | None:
    evaluator = pr.Evaluator(pr.ruleset(user, rules or pr.UserRules()))
    found = evaluator.matching_rule({"room_id": ROOM, "sender": BOB, **pdu}, pr.RoomFacts(st, user))
    return found.rule_id if found else None


def msg(body: str, **extra: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body, **extra}}


# --- the default set -------------------------------------------------------------------------

def test_default_rule_ids_in_the_spec_order() -> None:
    rules = pr.default_rules(ALICE)
    assert [r["rule_id"] for r in rules["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
        ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
        ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
        ".m.rule.suppress_edits"]
    assert [r["rule_id"] for r in rules["content"]] == [".m.rule.contains_user_name"]
    assert rules["content"][0]["pattern"] == "alice"
    assert [r["rule_id"] for r in rules["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message",
        ".m.rule.encrypted"]
    assert rules["room"] == [] and rules["sender"] == []
    assert rules["override"][0]["enabled"] is False  # master is off by default
    assert all(r["default"] for kind in rules.values() for r in kind)


def test_invite_for_me_names_the_user() -> None:
    rule = pr.find_rule(pr.default_rules(ALICE), "override", ".m.rule.invite_for_me")
    assert rule is not None and {"kind": "event_match", "key": "state_key", "pattern": ALICE} in rule["conditions"]


@pytest.mark.parametrize("pdu, expected", [
    (msg("hello"), ".m.rule.message"),
    ({"type": "m.room.message", "content": {"msgtype": "m.notice", "body": "bot"}}, ".m.rule.suppress_notices"),
    ({"type": "m.room.member", "state_key": ALICE, "content": {"membership": "invite"}}, ".m.rule.invite_for_me"),
    ({"type": "m.room.member", "state_key": CAROL, "content": {"membership": "invite"}}, ".m.rule.member_event"),
    ({"type": "m.room.member", "state_key": BOB, "content": {"membership": "join"}}, ".m.rule.member_event"),
    (msg("hi", **{"m.mentions": {"user_ids": [ALICE]}}), ".m.rule.is_user_mention"),
    (msg("hi", **{"m.mentions": {"user_ids": [CAROL]}}), ".m.rule.message"),
    (msg("hey Alice, look"), ".m.rule.contains_display_name"),
    (msg("hey alice!"), ".m.rule.contains_display_name"),
    (msg("malice aforethought"), ".m.rule.message"),
    (msg("hey Alice", **{"m.mentions": {}}), ".m.rule.message"),   # legacy rules off with m.mentions
    (msg("@room fire!"), ".m.rule.message"),                        # bob (PL 0) may not @room
    ({"type": "m.room.tombstone", "state_key": "", "content": {"body": "moved"}}, ".m.rule.tombstone"),
    ({"type": "m.room.tombstone", "state_key": "x", "content": {}}, None),
    ({"type": "m.reaction", "content": {}}, ".m.rule.reaction"),
    ({"type": "m.room.server_acl", "state_key": "", "content": {}}, ".m.rule.room.server_acl"),
    (msg("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}), ".m.rule.suppress_edits"),
    ({"type": "m.call.invite", "content": {}}, ".m.rule.call"),
    ({"type": "m.room.encrypted", "content": {}}, ".m.rule.encrypted"),
    ({"type": "com.example.sensor", "content": {"t": 21}}, None),
])
def test_default_rules_pick(pdu: dict[str, Any], expected: str | None) -> None:
    assert rule_for(pdu) == expected


def test_one_to_one_rules_need_two_members() -> None:
    assert rule_for(msg("hello"), TWO) == ".m.rule.room_one_to_one"
    assert rule_for({"type": "m.room.encrypted", "content": {}}, TWO) == ".m.rule.encrypted_room_one_to_one"


def test_contains_user_name_is_a_word_match_on_the_localpart() -> None:
    nameless = state({ALICE: None, BOB: "Bob", CAROL: None})
    assert rule_for(msg("ping alice: now"), nameless) == ".m.rule.contains_user_name"
    assert rule_for(msg("ping ALICE"), nameless) == ".m.rule.contains_user_name"
    assert rule_for(msg("palicea"), nameless) == ".m.rule.message"
    assert rule_for(msg("alice", **{"m.mentions": {}}), nameless) == ".m.rule.message"


def test_room_mention_needs_the_power_to_notify_the_room() -> None:
    pl = {"users": {BOB: 50}, "notifications": {"room": 50}}
    st = state({ALICE: "Alice", BOB: "Bob", CAROL: None}, pl)
    assert rule_for(msg("all", **{"m.mentions": {"room": True}}), st) == ".m.rule.is_room_mention"
    assert rule_for(msg("all", **{"m.mentions": {"room": True}})) == ".m.rule.message"  # no PL event: bob at 0
    assert rule_for(msg("@room fire"), st) == ".m.rule.roomnotif"
    low = state({ALICE: "Alice", BOB: "Bob"}, {"users": {BOB: 50}, "notifications": {"room": 60}})
    assert rule_for(msg("all", **{"m.mentions": {"room": True}}), low) == ".m.rule.room_one_to_one"
    # "room": 1 is not true
    assert rule_for(msg("all", **{"m.mentions": {"room": 1}}), st) == ".m.rule.message"


def test_room_version_12_creators_have_infinite_power_for_room_mentions() -> None:
    st12 = state({ALICE: "Alice", BOB: "Bob", CAROL: None}, {"users": {}, "notifications": {"room": 100}},
                 rv=ROOM_V12, creator=BOB)
    facts = pr.RoomFacts(st12, ALICE)
    assert facts.power_level(BOB) == math.inf
    assert rule_for(msg("x", **{"m.mentions": {"room": True}}), st12) == ".m.rule.is_room_mention"
    st11 = state({ALICE: "Alice", BOB: "Bob", CAROL: None}, {"users": {}, "notifications": {"room": 100}},
                 rv=ROOM_V11, creator=BOB)
    assert rule_for(msg("x", **{"m.mentions": {"room": True}}), st11) == ".m.rule.message"


def test_v10_levels_are_integers_only() -> None:
    st = state({ALICE: "A", BOB: "B", CAROL: None}, {"users": {BOB: 10}, "notifications": {"room": "5"}},
               rv=ROOM_V10)
    # a string level is not valid in v10: the default (50) applies, bob's 10 is below
    assert pr.RoomFacts(st, ALICE).notification_level("room") == 50


# --- conditions --------------------------------------------------------------------------------

def cond_matches(cond: dict[str, Any], pdu: dict[str, Any], st: dict[tuple[str, str], Event] = THREE) -> bool:
    rules = {"override": [{"rule_id": "x", "conditions": [cond], "actions": ["notify"]}]}
    return pr.Evaluator(rules).matching_rule(pdu, pr.RoomFacts(st, ALICE)) is not None


@pytest.mark.parametrize("pattern, value, expected", [
    ("m.room.message", "m.room.message", True),
    ("M.ROOM.MESSAGE", "m.room.message", True),
    ("m.room.*", "m.room.message", True),
    ("m.room.*", "m.room", False),
    ("m.room.?essage", "m.room.message", True),
    ("m.room.??essage", "m.room.message", False),
    ("*", "", True),
    ("m.room", "m.room.message", False),
    ("a.c", "abc", False),  # '.' is literal
    ("[ab]", "a", False),   # no character classes
])
def test_event_match_glob_on_whole_values(pattern: str, value: str, expected: bool) -> None:
    assert cond_matches({"kind": "event_match", "key": "type", "pattern": pattern},
                        {"type": value, "content": {}}) is expected


@pytest.mark.parametrize("pattern, body, expected", [
    ("cake", "I like cake", True),
    ("cake", "cakes are nice", False),
    ("cake*", "cakes are nice", True),
    ("cake", "CAKE!", True),
    ("@room", "hey @room.", True),
    ("lunch time", "is it lunch time?", True),
    ("b?d", "a bad day", True),
    ("b?d", "a bead", False),
    ("foo", "multi\nline foo", True),
])
def test_event_match_on_content_body_matches_words(pattern: str, body: str, expected: bool) -> None:
    assert cond_matches({"kind": "event_match", "key": "content.body", "pattern": pattern},
                        {"type": "m.room.message", "content": {"body": body}}) is expected


def test_event_match_needs_a_string_value() -> None:
    cond = {"kind": "event_match", "key": "content.n", "pattern": "1"}
    assert not cond_matches(cond, {"type": "t", "content": {"n": 1}})
    assert not cond_matches({"kind": "event_match", "key": "content", "pattern": "*"}, {"type": "t", "content": {}})


@pytest.mark.parametrize("key, parts", [
    ("content.body", ["content", "body"]),
    ("content.m\\.mentions.room", ["content", "m.mentions", "room"]),
    ("content.a\\\\b", ["content", "a\\b"]),
    ("content.a\\\\.b", ["content", "a\\", "b"]),
    ("content.a\\b", ["content", "a\\b"]),
    ("content.x.", ["content", "x", ""]),
])
def test_dotted_keys_with_escapes(key: str, parts: list[str]) -> None:
    assert pr.split_key(key) == parts


@pytest.mark.parametrize("value, content, expected", [
    (True, {"flag": True}, True),
    (True, {"flag": 1}, False),
    (1, {"flag": True}, False),
    (1, {"flag": 1}, True),
    (None, {"flag": None}, True),
    (None, {}, False),
    ("x", {"flag": "x"}, True),
    ("x", {"flag": "X"}, False),
    ("x", {"flag": ["x"]}, False),
])
def test_event_property_is(value: Any, content: dict[str, Any], expected: bool) -> None:
    assert cond_matches({"kind": "event_property_is", "key": "content.flag", "value": value},
                        {"type": "t", "content": content}) is expected


@pytest.mark.parametrize("value, content, expected", [
    ("a", {"list": ["a", "b"]}, True),
    ("c", {"list": ["a", "b"]}, False),
    (1, {"list": [True]}, False),
    (True, {"list": [True]}, True),
    ("a", {"list": "a"}, False),
    ("a", {"list": [["a"]]}, False),
])
def test_event_property_contains(value: Any, content: dict[str, Any], expected: bool) -> None:
    assert cond_matches({"kind": "event_property_contains", "key": "content.list", "value": value},
                        {"type": "t", "content": content}) is expected


def test_event_property_on_a_dotted_content_key() -> None:
    pdu = {"type": "t", "content": {"m.mentions": {"user_ids": [ALICE]}}}
    assert cond_matches({"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
                         "value": ALICE}, pdu)
    assert not cond_matches({"kind": "event_property_contains", "key": "content.m.mentions.user_ids",
                             "value": ALICE}, pdu)


@pytest.mark.parametrize("spec, expected", [
    ("3", True), ("==3", True), ("<3", False), ("<4", True), (">2", True), (">3", False),
    (">=3", True), ("<=2", False), ("<=3", True), ("=3", False), ("abc", False), ("", False),
])
def test_room_member_count(spec: str, expected: bool) -> None:
    assert cond_matches({"kind": "room_member_count", "is": spec}, {"type": "t", "content": {}}) is expected


def test_contains_display_name() -> None:
    cond = {"kind": "contains_display_name"}
    assert cond_matches(cond, {"type": "t", "content": {"body": "ask alice about it"}})
    assert not cond_matches(cond, {"type": "t", "content": {"body": "Alicex"}})
    nameless = state({ALICE: None, BOB: "Bob"})
    assert not cond_matches(cond, {"type": "t", "content": {"body": ""}}, nameless)
    odd = state({ALICE: "A.l (ice)", BOB: "Bob"})
    assert cond_matches(cond, {"type": "t", "content": {"body": "hey A.l (ice)!"}}, odd)


def test_unknown_condition_kinds_never_match() -> None:
    assert not cond_matches({"kind": "org.example.new"}, {"type": "t", "content": {}})


def test_a_rule_with_no_conditions_matches_everything() -> None:
    rules = {"override": [{"rule_id": "all", "conditions": [], "actions": ["notify"]}]}
    assert pr.Evaluator(rules).actions({"type": "t", "content": {}}, pr.RoomFacts(THREE, ALICE)) == ["notify"]


# --- layering --------------------------------------------------------------------------------------

def test_user_rules_come_before_defaults_but_after_master() -> None:
    user = pr.UserRules()
    user.custom["override"].append({"rule_id": "mine", "conditions": [], "actions": []})
    user.custom["underride"].append({"rule_id": "under", "conditions": [], "actions": ["notify"]})
    rules = pr.ruleset(ALICE, user)
    ids = [r["rule_id"] for r in rules["override"]]
    assert ids[:3] == [".m.rule.master", "mine", ".m.rule.suppress_notices"]
    assert rules["override"][1]["default"] is False and rules["override"][1]["enabled"] is True
    assert [r["rule_id"] for r in rules["underride"]][0] == "under"


def test_room_and_sender_rules() -> None:
    user = pr.UserRules()
    user.custom["room"].append({"rule_id": ROOM, "actions": []})
    assert rule_for(msg("hello"), rules=user) == ROOM
    user = pr.UserRules()
    user.custom["sender"].append({"rule_id": BOB, "actions": ["notify", {"set_tweak": "highlight"}]})
    assert rule_for(msg("hello"), rules=user) == BOB
    shaped = pr.ruleset(ALICE, user)["sender"][0]
    assert "conditions" not in shaped and "pattern" not in shaped


def test_content_rule_keyword() -> None:
    user = pr.UserRules()
    user.custom["content"].append({"rule_id": "freezer", "pattern": "freezer", "actions": ["notify"]})
    assert rule_for(msg("The Freezer is warm"), rules=user) == "freezer"
    assert rule_for(msg("freezers"), rules=user) == ".m.rule.message"


def test_master_enabled_silences_everything() -> None:
    user = pr.UserRules(enabled={"override/.m.rule.master": True})
    assert rule_for(msg("hey alice", **{"m.mentions": {"user_ids": [ALICE]}}), rules=user) == ".m.rule.master"
    actions = pr.Evaluator(pr.ruleset(ALICE, user)).actions(msg("x"), pr.RoomFacts(THREE, ALICE))
    assert pr.notifies(actions) == (False, False)


def test_disabled_default_rule_and_changed_actions() -> None:
    user = pr.UserRules(enabled={"underride/.m.rule.message": False})
    assert rule_for(msg("hello"), rules=user) is None
    user = pr.UserRules(actions={"underride/.m.rule.message": ["notify", {"set_tweak": "highlight"}]})
    rules = pr.ruleset(ALICE, user)
    found = pr.find_rule(rules, "underride", ".m.rule.message")
    assert found is not None and found["actions"][1] == {"set_tweak": "highlight"}
    actions = pr.Evaluator(rules).actions(msg("x"), pr.RoomFacts(THREE, ALICE))
    assert pr.notifies(actions) == (True, True)


@pytest.mark.parametrize("actions, expected", [
    (["notify"], (True, False)),
    (["notify", {"set_tweak": "highlight"}], (True, True)),
    (["notify", {"set_tweak": "highlight", "value": True}], (True, True)),
    (["notify", {"set_tweak": "highlight", "value": False}], (True, False)),
    ([{"set_tweak": "highlight"}], (False, False)),
    (["dont_notify"], (False, False)),
    ([], (False, False)),
])
def test_notifies(actions: list[Any], expected: tuple[bool, bool]) -> None:
    assert pr.notifies(actions) == expected


# --- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, rule_id", [
    ("override", ".m.rule.mine"), ("override", "a/b"), ("override", "a\\b"), ("override", ""),
    ("room", "not-a-room"), ("sender", "bob"), ("override", "x" * 256), ("override", "a\nb"),
])
def test_bad_rule_ids(kind: str, rule_id: str) -> None:
    with pytest.raises(pr.RuleError) as err:
        pr.check_new_rule_id(kind, rule_id)
    assert err.value.code == "M_INVALID_PARAM"


def test_bad_kind() -> None:
    with pytest.raises(pr.RuleError) as err:
        pr.check_kind("postcontent")
    assert err.value.code == "M_INVALID_PARAM"


@pytest.mark.parametrize("kind, body", [
    ("override", {"actions": "notify"}),
    ("override", {"actions": ["shout"]}),
    ("override", {"actions": [{"value": 1}]}),
    ("override", {"actions": [1]}),
    ("override", {}),
    ("override", {"actions": [], "conditions": {}}),
    ("override", {"actions": [], "conditions": [{"key": "type"}]}),
    ("override", {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]}),
    ("override", {"actions": [], "conditions": [{"kind": "event_property_is", "key": "x", "value": {}}]}),
    ("override", {"actions": [], "conditions": [{"kind": "room_member_count", "is": "lots"}]}),
    ("content", {"actions": []}),
    ("content", {"actions": [], "pattern": ""}),
    ("override", []),
])
def test_bad_rule_bodies(kind: str, body: Any) -> None:
    with pytest.raises(pr.RuleError) as err:
        pr.new_rule(kind, "r", body)
    assert err.value.code == "M_BAD_JSON"


def test_good_rule_bodies_are_kept() -> None:
    rule = pr.new_rule("override", "r", {"actions": ["notify", "dont_notify", {"set_tweak": "sound", "value": "x"}],
                                        "conditions": [{"kind": "org.example.future", "x": 1}]})
    assert rule["conditions"] == [{"kind": "org.example.future", "x": 1}]
    assert pr.new_rule("room", ROOM, {"actions": []}) == {"rule_id": ROOM, "actions": []}


def test_thread_of() -> None:
    assert pr.thread_of({"content": {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}}) == "$root"
    assert pr.thread_of({"content": {"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}}) == "main"
    assert pr.thread_of({"content": {}}) == "main"


def test_type_gated_rules_match_case_insensitively_and_globs_are_not_gated() -> None:
    rules = {"override": [
        {"rule_id": "upper", "conditions": [{"kind": "event_match", "key": "type", "pattern": "COM.EXAMPLE.T"},
                                            {"kind": "event_match", "key": "content.x", "pattern": "y"}],
         "actions": ["notify"]},
        {"rule_id": "glob", "conditions": [{"kind": "event_match", "key": "type", "pattern": "org.*"}],
         "actions": ["notify"]},
    ]}
    evaluator = pr.Evaluator(rules)
    facts = pr.RoomFacts(THREE, ALICE)
    found = evaluator.matching_rule({"type": "com.example.t", "content": {"x": "Y"}}, facts)
    assert found is not None and found.rule_id == "upper"
    assert evaluator.matching_rule({"type": "com.example.t", "content": {"x": "z"}}, facts) is None
    found = evaluator.matching_rule({"type": "org.sensor", "content": {}}, facts)
    assert found is not None and found.rule_id == "glob"
    assert evaluator.matching_rule({"content": {}}, facts) is None  # no type at all
