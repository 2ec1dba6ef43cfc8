"""Topic <-> room rules and the message <-> content mapping (pure functions)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from frontends.mqtt.messages import message_content, parse_mqtt, publish_content
from frontends.mqtt.routing import (
    HUB,
    OWNER,
    Rule,
    TopicRules,
    alias_localpart,
    binding_authority,
    default_binding,
    effective_bindings,
    literal_prefix,
    tree_key,
    tree_levels,
)
from frontends.mqtt.topics import is_valid_topic_filter, is_valid_topic_name


def test_most_specific_rule_wins_and_admin_breaks_ties() -> None:
    rules = TopicRules([
        Rule("#", "!all", True),
        Rule("home/#", "!home", False),
        Rule("home/+/temp", "!temps", False),
        Rule("home/kitchen/#", "!kitchen", False),
        Rule("home/kitchen/temp", "!exact", False),
        Rule("home/kitchen/#", "!admin-kitchen", True),
    ])
    assert rules.resolve("home/kitchen/temp") == "!exact"
    assert rules.resolve("home/kitchen/light") == "!admin-kitchen"
    assert rules.resolve("home/hall/temp") == "!temps"
    assert rules.resolve("home/hall/light") == "!home"
    assert rules.resolve("garden") == "!all"
    assert rules.resolve("$SYS/x") is None  # '#' never matches $ topics


def test_bind_unbind_and_admin_rules_update_the_cache() -> None:
    rules = TopicRules()
    assert rules.resolve("a/b") is None
    rules.bind("a/#", "!r")
    assert rules.resolve("a/b") == "!r"
    assert rules.topic_of_room("!r") == "a"
    assert rules.set_admin_rules([Rule("a/b", "!admin", True)])
    assert rules.resolve("a/b") == "!admin"
    assert not rules.set_admin_rules([Rule("a/b", "!admin", True)])  # no change
    rules.unbind("a/#", "!r")
    assert rules.resolve("a/c") is None


def test_default_binding() -> None:
    assert default_binding("home/kitchen/temp", 2) == ("home/kitchen", "home/kitchen/#")
    assert default_binding("home/kitchen", 2) == ("home/kitchen", "home/kitchen/#")
    assert default_binding("test", 2) == ("test", "test")
    assert default_binding("a/b/c/d", 3) == ("a/b/c", "a/b/c/#")
    assert literal_prefix("a/+/c") == "a"
    assert literal_prefix("#") is None


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_alias_localparts_are_injective_and_safe(a: str, b: str) -> None:
    la, lb = alias_localpart(a), alias_localpart(b)
    assert ":" not in la and "#" not in la and len(la) <= 200
    if a != b:
        assert la != lb


def test_alias_readable() -> None:
    assert alias_localpart("home/kitchen") == "mqtt/home/kitchen"
    assert alias_localpart("Zigbee Lamp:1") == "mqtt/Zigbee=20Lamp=3A1"


@given(st.binary(max_size=300), st.sampled_from([0, 1, 2]),
       st.text(min_size=1, max_size=40).filter(is_valid_topic_name))
def test_publish_content_roundtrip(payload: bytes, qos: int, topic: str) -> None:
    props = {"user_property": [("k", "v"), ("k", "w")], "correlation_data": b"\x00\xff",
             "response_topic": "r/t", "message_expiry_interval": 60, "content_type": "x/y"}
    mqtt = publish_content(topic, payload, qos, props)
    content = message_content(mqtt)
    assert content["body"].startswith(topic + ": ")
    assert parse_mqtt(content["mqtt"]) == (topic, payload, qos, props)


def test_parse_mqtt_refuses_what_is_not_a_message() -> None:
    assert parse_mqtt({"topic": "a/+", "payload": {"kind": "text", "text": "x"}}) is None
    assert parse_mqtt({"topic": "a", "payload": {"kind": "nope"}}) is None
    assert parse_mqtt("a") is None


# -- who may bind what (issue 20, L3) ---------------------------------------------------------------

ADMINS = frozenset({"@root:hub"})
OWNERS = {"home/kitchen": "@alice:hub", "home/hall": "@bob:hub", "test": "@alice:hub"}


def test_zigbee2mqtt_and_home_assistant_trees_are_one_room_each() -> None:
    """issue 16: 100 Zigbee2MQTT devices must not become 101 rooms; HA's discovery and birth
    message share one room."""
    assert {default_binding(f"zigbee2mqtt/device{i}/set", 2) for i in range(100)} == {
        ("zigbee2mqtt", "zigbee2mqtt/#")}
    assert default_binding("zigbee2mqtt/bridge/state", 2) == ("zigbee2mqtt", "zigbee2mqtt/#")
    assert default_binding("zigbee2mqtt", 2) == ("zigbee2mqtt", "zigbee2mqtt/#")
    assert default_binding("homeassistant/sensor/t1/config", 2) == ("homeassistant", "homeassistant/#")
    assert default_binding("homeassistant/status", 3) == ("homeassistant", "homeassistant/#")
    assert default_binding("zigbee2mqttx/a/b", 2) == ("zigbee2mqttx/a", "zigbee2mqttx/a/#")
    # the owner of the tree may bind anything in it (one key for the whole tree)
    assert tree_key("zigbee2mqtt/#", 2) == "zigbee2mqtt"
    assert tree_key("zigbee2mqtt/lamp/+", 2) == "zigbee2mqtt"
    assert tree_key("homeassistant/switch/x/set", 2) == "homeassistant"
    assert tree_levels("home", 2) == 2


def test_tree_key_is_the_default_rooms_key_of_every_topic_of_the_filter() -> None:
    assert tree_key("home/kitchen/#", 2) == "home/kitchen"  # matches home/kitchen too: same key
    assert tree_key("home/kitchen/temp", 2) == "home/kitchen"
    assert tree_key("home/kitchen/+/set", 2) == "home/kitchen"
    assert tree_key("home/kitchen", 2) == "home/kitchen"
    assert tree_key("test", 2) == "test"  # a short topic is its own key
    assert tree_key("home/#", 2) is None  # home, home/a, home/b...: several keys
    assert tree_key("home/+/temp", 2) is None
    assert tree_key("+/kitchen/temp", 2) is None
    assert tree_key("#", 2) is None
    assert tree_key("test/#", 2) is None  # test and test/a are different keys
    assert tree_key("home/#", 1) == "home"


def test_an_admin_binds_anything_an_owner_only_inside_her_tree_and_nobody_else_anything() -> None:
    def who(topic_filter: str, sender: str) -> str | None:
        return binding_authority(topic_filter, sender, ADMINS, OWNERS.get, 2)

    assert who("#", "@root:hub") == HUB
    assert who("home/kitchen/temp", "@root:hub") == HUB
    assert who("home/kitchen/temp", "@alice:hub") == OWNER
    assert who("home/kitchen/#", "@alice:hub") == OWNER
    assert who("test", "@alice:hub") == OWNER
    # the hijack and the denial of service of issue 20
    assert who("home/kitchen/temp", "@mallory:hub") is None
    assert who("#", "@mallory:hub") is None
    assert who("#", "@alice:hub") is None  # owning one tree is not owning all
    assert who("home/#", "@alice:hub") is None
    assert who("+/kitchen/temp", "@alice:hub") is None
    assert who("home/hall/temp", "@alice:hub") is None  # bob's tree
    assert who("garden/bed/x", "@mallory:hub") is None  # nobody's tree yet: nobody's to bind


def test_owner_bindings_apply_only_where_no_rule_of_the_hubs_authority_does() -> None:
    bindings = {
        ("!alices-fridge", "home/kitchen/fridge/#"): "@alice:hub",  # owner, inside her tree
        ("!alices-kitchen", "home/kitchen/#"): "@alice:hub",  # her default room's own binding
        ("!root-door", "home/kitchen/fridge/door"): "@root:hub",  # a hub admin's binding
        ("!mallory", "home/kitchen/temp"): "@mallory:hub",  # the hijack: ignored
        ("!mallory", "#"): "@mallory:hub",  # the denial of service: ignored
    }
    rules = TopicRules([Rule("home/kitchen/light/#", "!cli-light", True)])
    assert rules.set_bindings(effective_bindings(bindings, ADMINS, OWNERS.get, 2))
    assert rules.resolve("home/kitchen/temp") == "!alices-kitchen"
    assert rules.resolve("home/kitchen/fridge/temp") == "!alices-fridge"
    assert rules.resolve("home/kitchen/fridge/door") == "!root-door"
    assert rules.resolve("home/kitchen/light/set") == "!cli-light"  # less specific, but the admin's
    assert rules.resolve("garden/bed") is None  # the default rule, not mallory's '#'
    assert rules.topic_of_room("!alices-fridge") == "home/kitchen/fridge"
    assert not rules.set_bindings(effective_bindings(bindings, ADMINS, OWNERS.get, 2))  # no change


def test_an_admins_explicit_rule_wins_over_the_default_room_her_first_publish_made() -> None:
    """An admin who published first owns her tree's default room, whose broker-made binding is
    the default rule: an explicit rule into that tree, mapped before or after, still wins (it lost
    to `garden/bed1/#` by specificity when the admin's default binding ranked as a hub rule)."""
    owners = {"garden/bed1": "@root:hub"}
    assert binding_authority("garden/bed1/#", "@root:hub", ADMINS, owners.get, 2) == OWNER
    assert binding_authority("garden/bed1/moisture", "@root:hub", ADMINS, owners.get, 2) == HUB
    bindings = {("!root-default", "garden/bed1/#"): "@root:hub"}
    rules = TopicRules([Rule("garden/+/moisture", "!garden", True)])
    rules.set_bindings(effective_bindings(bindings, ADMINS, owners.get, 2))
    assert rules.resolve("garden/bed1/moisture") == "!garden"
    assert rules.resolve("garden/bed1/light") == "!root-default"


_level = st.sampled_from(["home", "kitchen", "hall", "temp", "test", "+", "x"])
_filters = st.lists(_level, min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join(levels + ["#"])])).filter(is_valid_topic_filter)
_topics = st.lists(st.sampled_from(["home", "kitchen", "hall", "temp", "test", "x"]), min_size=1,
                   max_size=5).map("/".join)


@given(st.lists(st.tuples(_filters, st.sampled_from(["@root:hub", "@alice:hub", "@bob:hub"])), max_size=6),
       st.lists(_filters, min_size=1, max_size=6), st.lists(_topics, min_size=1, max_size=10))
def test_what_a_stranger_binds_changes_no_topics_room(others: list[tuple[str, str]], mallorys: list[str],
                                                      topics: list[str]) -> None:
    """Whatever bindings exist, adding any set of bindings by a user who is neither admin nor
    owner (in rooms of hers) sends no topic anywhere else."""
    base = {(f"!r{i}", f): sender for i, (f, sender) in enumerate(others)}
    with_mallory = dict(base)
    with_mallory.update({("!mallory", f): "@mallory:hub" for f in mallorys})
    before = TopicRules([Rule("home/hall/#", "!cli", True)])
    before.set_bindings(effective_bindings(base, ADMINS, OWNERS.get, 2))
    after = TopicRules([Rule("home/hall/#", "!cli", True)])
    after.set_bindings(effective_bindings(with_mallory, ADMINS, OWNERS.get, 2))
    for topic in topics:
        assert after.resolve(topic) == before.resolve(topic)
