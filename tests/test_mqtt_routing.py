"""Topic <-> room rules and the message <-> content mapping (pure functions)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridges.mqtt.messages import message_content, parse_mqtt, publish_content
from bridges.mqtt.routing import Rule, TopicRules, alias_localpart, default_binding, literal_prefix
from bridges.mqtt.topics import is_valid_topic_name


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
