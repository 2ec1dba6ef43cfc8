"""The pure parts of account data, tags and presence (issue 13): what may be stored, how numbers
are kept, which sync filters let what through, what a presence PUT may say."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_core import account_data_rules as rules
from matrix_core import presence_state
from matrix_core.canonical_json import CanonicalJSONError, JSONSyntaxError, encode_json, parse_plain_json
from matrix_core.errors import MatrixError


def errcode(fn, *args) -> tuple[int, str]:
    with pytest.raises(MatrixError) as info:
        fn(*args)
    return info.value.status, info.value.errcode


def test_plain_json_keeps_fractions_and_refuses_what_cannot_be_stored() -> None:
    assert parse_plain_json(b'{"order":0.5,"n":[1,2.25,-3e-2]}') == {"order": 0.5, "n": [1, 2.25, -0.03]}
    assert type(parse_plain_json(b'{"a":1}')["a"]) is int
    for bad in (b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b'{"a":9007199254740992}', b'"\\ud800"'):
        with pytest.raises(CanonicalJSONError):
            parse_plain_json(bad)
    for garbage in (b"{", b"\xff", b"[1,]"):
        with pytest.raises(JSONSyntaxError):
            parse_plain_json(garbage)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_comes_back_as_the_same_number(value: float) -> None:
    stored = rules.encode_content({"order": value})
    assert rules.decode_content(stored)["order"] == value
    assert parse_plain_json(encode_json(rules.decode_content(stored)))["order"] == value


def test_types_and_room_ids() -> None:
    assert rules.check_type("org.example.config") == "org.example.config"
    assert rules.check_type("u.My Work", "tag") == "u.My Work"  # user tags may have spaces
    assert errcode(rules.check_type, "") == (400, "M_INVALID_PARAM")
    assert errcode(rules.check_type, "a\nb") == (400, "M_INVALID_PARAM")
    assert errcode(rules.check_type, "é" * 128) == (400, "M_INVALID_PARAM")  # 256 bytes
    assert rules.check_type("x" * 255)
    assert errcode(rules.check_room_id, "@alice:hub") == (400, "M_INVALID_PARAM")
    assert errcode(rules.check_room_id, "!") == (400, "M_INVALID_PARAM")
    assert rules.check_room_id("!abc:hub") == "!abc:hub"


def test_server_managed_types_are_refused_with_405_bad_json() -> None:
    for managed in ("m.fully_read", "m.push_rules"):
        assert errcode(rules.check_client_settable, managed) == (405, "M_BAD_JSON")
    rules.check_client_settable("m.direct")


def test_content_must_be_a_storable_object() -> None:
    assert errcode(rules.encode_content, [1]) == (400, "M_BAD_JSON")
    assert errcode(rules.encode_content, {"a": math.nan}) == (400, "M_BAD_JSON")
    assert errcode(rules.encode_content, {"a": "\ud800"}) == (400, "M_BAD_JSON")
    assert errcode(rules.encode_content, {"a": {1: "int key"}}) == (400, "M_BAD_JSON")  # a CBOR map's
    assert errcode(rules.encode_content, {"a": [b"\x01"]}) == (400, "M_BAD_JSON")
    assert rules.encode_content({"a": "日本"}) == '{"a":"日本"}'


def test_tags() -> None:
    content = rules.with_tag(None, "m.favourite", {"order": 0.25})
    content = rules.with_tag(content, "u.work", {})
    assert rules.tags_of(content) == {"m.favourite": {"order": 0.25}, "u.work": {}}
    assert rules.without_tag(content, "u.none") is None  # no change
    assert rules.tags_of(rules.without_tag(content, "u.work")) == {"m.favourite": {"order": 0.25}}
    assert rules.tags_of({"tags": "broken"}) == {}
    for bad in ({"order": "0.5"}, {"order": True}, {"order": None}, {"order": math.inf}):
        assert errcode(rules.check_tag_body, bad) == (400, "M_BAD_JSON")
    assert rules.check_tag_body({"order": 1}) == {"order": 1}
    assert rules.check_tag_body({}) == {}


def test_filters() -> None:
    assert rules.event_filter_allows(None, "m.direct")
    assert rules.event_filter_allows({"types": ["m.*"]}, "m.direct")
    assert not rules.event_filter_allows({"types": ["m.*"]}, "org.x")
    assert not rules.event_filter_allows({"not_types": ["*"]}, "m.direct")
    assert not rules.event_filter_allows({"types": ["*"], "not_types": ["m.tag"]}, "m.tag")
    assert rules.event_filter_allows({"types": ["a.[b]"]}, "a.[b]")  # no character classes
    assert not rules.event_filter_allows({"types": ["a.[b]"]}, "a.b")
    assert not rules.event_filter_allows({"not_senders": ["@a:hub"]}, "m.presence", "@a:hub")
    assert not rules.event_filter_allows({"senders": ["@a:hub"]}, "m.presence", "@b:hub")
    assert rules.room_allowed({"rooms": ["!a"]}, "!a") and not rules.room_allowed({"rooms": ["!a"]}, "!b")
    assert not rules.room_allowed({"not_rooms": ["!a"]}, "!a")
    assert rules.explicit_limit({"limit": 2}) == 2
    assert rules.explicit_limit({}) is None and rules.explicit_limit({"limit": 0}) is None
    assert rules.explicit_limit({"limit": True}) is None


def test_presence_bodies_and_content() -> None:
    assert presence_state.parse_status_body({"presence": "online"}) == ("online", None)
    assert presence_state.parse_status_body({"presence": "unavailable", "status_msg": "lunch", "x": 1}) == \
        ("unavailable", "lunch")
    assert errcode(presence_state.parse_status_body, {}) == (400, "M_MISSING_PARAM")
    assert errcode(presence_state.parse_status_body, {"presence": "away"}) == (400, "M_BAD_JSON")
    assert errcode(presence_state.parse_status_body, {"presence": "online", "status_msg": 5}) == (400, "M_BAD_JSON")
    assert errcode(presence_state.parse_status_body, {"presence": "online", "status_msg": "x" * 1001}) == \
        (400, "M_BAD_JSON")
    online = presence_state.updated(presence_state.OFFLINE, "online", "hi", 1_000)
    assert presence_state.content(online, 1_500) == {"presence": "online", "last_active_ago": 500, "status_msg": "hi"}
    idle = presence_state.updated(online, "unavailable", None, 9_000)
    assert idle.last_active_ts == 1_000  # only a pro-active change moves last active
    assert presence_state.is_news(online, idle)
    assert not presence_state.is_news(online, presence_state.updated(online, "online", "hi", 2_000))
    assert presence_state.content(presence_state.OFFLINE, 5) == {"presence": "offline"}
