"""Topic name / filter validation, matching (incl. the `$` rule) and shared subscriptions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontends.mqtt.topics import (
    SharedSubscription,
    TopicError,
    has_wildcards,
    is_valid_topic_filter,
    is_valid_topic_name,
    parse_shared_subscription,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)


@pytest.mark.parametrize("name", ["a", "a/b/c", "/", "/a", "a/", "a//b", "$SYS/broker/load", "sport/tennis player1", "ü/€"])
def test_valid_topic_names(name):
    validate_topic_name(name)
    assert is_valid_topic_name(name)


@pytest.mark.parametrize("name", ["", "a/+", "+", "#", "a/#", "a+b", "a#", "a\x00b", "x" * 65536, "é" * 40000])
def test_invalid_topic_names(name):
    with pytest.raises(TopicError):
        validate_topic_name(name)
    assert not is_valid_topic_name(name)


@pytest.mark.parametrize(
    "flt",
    ["#", "+", "a/#", "a/+/c", "+/+", "/+", "+/", "a//#", "sport/tennis/+", "$SYS/#", "$share/g/a/#", "$share/g/#", "$share/grp/+"],
)
def test_valid_topic_filters(flt):
    validate_topic_filter(flt)
    assert is_valid_topic_filter(flt)


@pytest.mark.parametrize(
    "flt",
    [
        "", "a/#/b", "#/a", "a#", "a/b#", "a+", "a/+b", "+a/b", "a/b+/c", "a\x00",
        "$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/g#/a", "$share/g/a/#/b",
    ],
)
def test_invalid_topic_filters(flt):
    with pytest.raises(TopicError):
        validate_topic_filter(flt)
    assert not is_valid_topic_filter(flt)


def test_share_prefix_as_plain_filter_when_not_allowed_shared():
    assert is_valid_topic_filter("$share/g", allow_shared=False)
    assert not is_valid_topic_filter("$share/g", allow_shared=True)


def test_parse_shared_subscription():
    assert parse_shared_subscription("$share/grp/a/+/c") == SharedSubscription("grp", "a/+/c")
    assert parse_shared_subscription("$share/grp/#") == ("grp", "#")
    assert parse_shared_subscription("$share/grp//") == ("grp", "/")
    assert parse_shared_subscription("a/b") is None
    assert parse_shared_subscription("$SYS/share") is None
    assert parse_shared_subscription("$sharex/g/a") is None
    for bad in ("$share/", "$share//a", "$share/g", "$share/g/", "$share/+/a", "$share/g/a#"):
        with pytest.raises(TopicError):
            parse_shared_subscription(bad)


@pytest.mark.parametrize(
    "flt,name,expected",
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "anything/at/all", True),
        ("#", "/", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/#", "a", True),
        ("a/+/#", "a", False),
        ("a/+/#", "a/b", True),
        ("+", "", True),
        # the $ rule
        ("#", "$SYS/monitor/Clients", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/Clients", "$SYS/monitor/Clients", True),
        ("a/#", "a/$SYS", True),  # only the first level matters
        ("A/b", "a/b", False),
    ],
)
def test_topic_matches(flt, name, expected):
    assert topic_matches(flt, name) is expected


def test_has_wildcards():
    assert has_wildcards("a/+") and has_wildcards("#") and not has_wildcards("a/b")


_level = st.text(alphabet="abc$ ", max_size=3)
_names = st.lists(_level, min_size=1, max_size=5).map("/".join).filter(bool)


@given(_names)
def test_name_is_a_filter_that_matches_itself(name):
    assert is_valid_topic_name(name) and is_valid_topic_filter(name)
    assert topic_matches(name, name)


@given(_names)
def test_hash_matches_everything_but_dollar_topics(name):
    assert topic_matches("#", name) is (not name.startswith("$"))


@given(_names, st.data())
def test_replacing_levels_by_plus_still_matches(name, data):
    levels = name.split("/")
    mask = data.draw(st.lists(st.booleans(), min_size=len(levels), max_size=len(levels)))
    flt = "/".join("+" if m else lvl for m, lvl in zip(mask, levels))
    assert is_valid_topic_filter(flt)
    expected = not (mask[0] and name.startswith("$"))
    assert topic_matches(flt, name) is expected
    # and a trailing '#' after any prefix matches too
    cut = data.draw(st.integers(0, len(levels)))
    prefix = levels[:cut]
    flt_hash = "/".join(prefix + ["#"])
    assert topic_matches(flt_hash, name) is (not (cut == 0 and name.startswith("$")))


# -- deny rules (frontends/mqtt/deny.py) -------------------------------------------------------------


def _filters(depth: int, levels: tuple[str, ...] = ("a", "+", "#", "$s")) -> list[str]:
    out = [""]
    found = []
    for _ in range(depth):
        out = [f"{p}/{lvl}" if p else lvl for p in out for lvl in levels]
        found += [f for f in out if is_valid_topic_filter(f, allow_shared=False) and "$s" not in f[1:]]
    return found


def test_covers_is_exactly_topic_set_inclusion():
    """covers(outer, inner) <=> every name inner matches, outer matches (exhaustive on a small
    alphabet: names one level deeper than the filters witness every difference)."""
    from frontends.mqtt.deny import covers

    names = _filters(4, ("a", "c", "$s"))  # "c": a level no literal in the filters matches
    filters = _filters(3)
    for inner in filters:
        matched = [n for n in names if topic_matches(inner, n)]
        for outer in filters:
            expected = all(topic_matches(outer, n) for n in matched)
            assert covers(outer, inner) is expected, (outer, inner)


def test_deny_rules_refuse_and_hide():
    from frontends.mqtt.deny import DenyRules

    rules = DenyRules(["test/nosubscribe", "vault/#"])
    assert rules.refuses("test/nosubscribe") and rules.refuses("$share/g/vault/+/x") and rules.refuses("vault")
    assert not rules.refuses("test/+") and not rules.refuses("#") and not rules.refuses("vaults/x")
    assert rules.hides("vault/a/b") and rules.hides("test/nosubscribe") and not rules.hides("test/other")
    assert not DenyRules() and not DenyRules().refuses("#")
    with pytest.raises(ValueError):
        DenyRules(["a/#/b"])
