"""The uplink's pure parts (frontends/mqtt/bridge.py): topic mapping with prefixes and directions,
backoff, and the checks of [[mqtt_bridge]] entries."""
from __future__ import annotations

from typing import Any

import pytest

from frontends.mqtt.bridge import (BridgeConfigError, TopicRule, backoff, inbound, outbound, parse_address,
                                   parse_bridge, parse_bridges, remote_subscriptions)

RULES = (
    TopicRule("sensors/#", "out", 1, "", "garage/"),
    TopicRule("cmd/#", "in", 2, "house/", "hub/"),
    TopicRule("shared/+", "both", 0, "lan/", "wan/"),
)


def test_outbound_maps_local_prefix_to_remote_prefix() -> None:
    assert outbound(RULES, "sensors/t1") == ("garage/sensors/t1", 1)
    assert outbound(RULES, "lan/shared/x") == ("wan/shared/x", 0)
    assert outbound(RULES, "house/cmd/light") is None  # an in-rule never sends
    assert outbound(RULES, "lan/shared/x/y") is None  # + is one level
    assert outbound(RULES, "other/t") is None


def test_inbound_maps_remote_prefix_to_local_prefix() -> None:
    assert inbound(RULES, "hub/cmd/light") == "house/cmd/light"
    assert inbound(RULES, "wan/shared/x") == "lan/shared/x"
    assert inbound(RULES, "garage/sensors/t1") is None  # an out-rule never receives
    assert inbound(RULES, "cmd/light") is None  # without the remote prefix


def test_first_matching_rule_wins() -> None:
    rules = (TopicRule("a/b", "out", 2, "", "x/"), TopicRule("a/#", "out", 0, "", "y/"))
    assert outbound(rules, "a/b") == ("x/a/b", 2)
    assert outbound(rules, "a/c") == ("y/a/c", 0)


def test_remote_subscriptions_are_the_in_and_both_rules() -> None:
    assert remote_subscriptions(RULES) == [("hub/cmd/#", 2), ("wan/shared/+", 0)]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(i, cap=10) for i in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff(10_000) == 60


@pytest.mark.parametrize("text, expected", [
    ("broker.lan:1883", ("broker.lan", 1883)), ("broker.lan", ("broker.lan", 1883)),
    ("[::1]:8883", ("::1", 8883)), ("10.0.0.2:1", ("10.0.0.2", 1)),
])
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "h:0", "h:65536", "h:x", "a b:1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_a_full_entry() -> None:
    b = parse_bridge({"name": "house", "address": ["a:1", "b:2, c:3"], "local_account": "bridge",
                      "remote_username": "u", "remote_password": "p", "protocol": "mqttv50",
                      "topic": ["sensors/# out 1 \"\" garage/", {"pattern": "cmd/#", "direction": "in"}]}, 0)
    assert b.addresses == (("a", 1), ("b", 2), ("c", 3))
    assert b.protocol_level == 5 and b.client_id == "mg-house"
    assert b.topics[0] == TopicRule("sensors/#", "out", 1, "", "garage/")
    assert b.sends and b.receives


@pytest.mark.parametrize("entry, named", [
    ({"address": "h", "topic": [{"pattern": "a", "direction": "up"}]}, "topic[0].direction"),
    ({"address": "h", "topic": [{"pattern": "a", "local_prefix": "x/#"}]}, "topic[0].local_prefix"),
    ({"address": "h", "topic": [{"pattern": "a", "colour": 1}]}, "'colour'"),
    ({"address": "h", "topic": []}, ".topic is empty"),
    ({"address": "h", "remote_password": "p", "topic": ["a"]}, "remote_password needs remote_username"),
    ({"address": "h", "keepalive": 1, "topic": ["a"]}, ".keepalive"),
    ({"address": "h", "restart_timeout": 0, "topic": ["a"]}, ".restart_timeout"),
    ({"address": 5, "topic": ["a"]}, ".address"),
    ({"name": "a b", "address": "h", "topic": ["a"]}, ".name"),
])
def test_bad_entries_name_the_key(entry: dict[str, Any], named: str) -> None:
    with pytest.raises(BridgeConfigError, match=None) as info:
        parse_bridge(entry, 0)
    assert named in str(info.value)


def test_names_are_unique() -> None:
    with pytest.raises(BridgeConfigError, match="used twice"):
        parse_bridges([{"name": "x", "address": "h", "topic": ["a"]}] * 2)
