"""Tests for frontends.coap.short_paths: CoAP short paths -> full Matrix paths."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontends.coap import short_paths as sp
from frontends.coap.short_paths import (
    ACCESS_TOKEN_OPTION,
    MSC3079_PATHS,
    QUERY_ABBREVIATIONS,
    ROUTES,
    SEGMENT_ABBREVIATIONS,
    UnknownShortPath,
    expand_path,
    expand_query,
    shorten_path,
    shorten_query,
)


def p(path: str) -> list[str]:
    """'/a/b' -> ['a', 'b'] (what CoAP Uri-Path options carry)."""
    return path[1:].split("/")


# ------------------------------------------------------------------------------------------
# the seed's path
# ------------------------------------------------------------------------------------------


def test_seed_path_exact():
    assert expand_path(p("/_m/c/a/v1/r/ROOM_ID/s/m.room.message")) == p(
        "/_matrix/client/api/v1/rooms/ROOM_ID/send/m.room.message"
    )
    assert expand_query([("a", "ACCESS_TOKEN")]) == [("access_token", "ACCESS_TOKEN")]


def test_seed_path_with_real_room_id():
    assert expand_path(["_m", "c", "a", "v1", "r", "!abc123:hub.local", "s", "m.room.message"]) == [
        "_matrix", "client", "api", "v1", "rooms", "!abc123:hub.local", "send", "m.room.message",
    ]


# ------------------------------------------------------------------------------------------
# mixed, full, position-aware
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "short, full",
    [
        ("/_matrix/client/api/v1/rooms/R/send/m.room.message", "/_matrix/client/api/v1/rooms/R/send/m.room.message"),
        ("/_m/client/v3/r/R/send/m.sensor/t1", "/_matrix/client/v3/rooms/R/send/m.sensor/t1"),
        ("/_matrix/c/r0/rooms/R/s/m.room.message/t1", "/_matrix/client/r0/rooms/R/send/m.room.message/t1"),
        ("/_m/c/v3/sy", "/_matrix/client/v3/sync"),
        ("/_m/c/v3/r/R/st/m.room.name/", "/_matrix/client/v3/rooms/R/state/m.room.name/"),
        ("/_m/c/v3/r/R/st", "/_matrix/client/v3/rooms/R/state"),
        ("/_m/c/v3/r/R/m", "/_matrix/client/v3/rooms/R/messages"),
        ("/_m/c/v3/r/R/e/$ev", "/_matrix/client/v3/rooms/R/event/$ev"),
        ("/_m/c/v3/r/R/j", "/_matrix/client/v3/rooms/R/join"),
        ("/_m/c/v3/j/#room:hub", "/_matrix/client/v3/join/#room:hub"),
        ("/_m/c/v3/ac/w", "/_matrix/client/v3/account/whoami"),
        ("/_m/c/v3/lg", "/_matrix/client/v3/login"),
        ("/_m/c/vs", "/_matrix/client/versions"),
        ("/_m/c/v3/r/R/rd/$ev/t1", "/_matrix/client/v3/rooms/R/redact/$ev/t1"),
        ("/_m/c/v3/r/R/ki", "/_matrix/client/v3/rooms/R/kick"),
        ("/_m/c/v3/r/R/b", "/_matrix/client/v3/rooms/R/ban"),
        ("/_m/c/v3/r/R/ub", "/_matrix/client/v3/rooms/R/unban"),
        ("/_m/c/v3/r/R/i", "/_matrix/client/v3/rooms/R/invite"),
        ("/_m/c/v3/r/R/l", "/_matrix/client/v3/rooms/R/leave"),
        ("/_m/c/v3/r/R/mb", "/_matrix/client/v3/rooms/R/members"),
        ("/_m/c/v3/u/@a:hub/fl/7", "/_matrix/client/v3/user/@a:hub/filter/7"),
        ("/_m/c/v3/pr/@a:hub/dn", "/_matrix/client/v3/profile/@a:hub/displayname"),
        ("/_m/c/v3/ks/upl", "/_matrix/client/v3/keys/upload"),
        ("/_m/c/v3/sd/m.x/t1", "/_matrix/client/v3/sendToDevice/m.x/t1"),
        ("/_m/f/v1/s/txn1", "/_matrix/federation/v1/send/txn1"),
        ("/_m/f/v1/ver", "/_matrix/federation/v1/version"),
        ("/_m/k/v2/sv", "/_matrix/key/v2/server"),
        ("/_m/md/v3/dl/hub/abc", "/_matrix/media/v3/download/hub/abc"),
    ],
)
def test_expand_examples(short, full):
    assert expand_path(p(short)) == p(full)
    assert expand_path(p(full)) == p(full)  # full paths are a fixed point


@pytest.mark.parametrize(
    "short, full",
    [
        # event type "s" (looks like the abbreviation for send) is data
        ("/_m/c/v3/r/R/s/s/t1", "/_matrix/client/v3/rooms/R/send/s/t1"),
        # txn id "st" and event type "m" are data
        ("/_m/c/v3/r/R/s/m/st", "/_matrix/client/v3/rooms/R/send/m/st"),
        # room alias that looks like an abbreviation
        ("/_m/c/v3/j/#s:hub", "/_matrix/client/v3/join/#s:hub"),
        ("/_m/c/v3/j/s", "/_matrix/client/v3/join/s"),
        # room id "r" / "s" in the room position
        ("/_m/c/v3/r/r/s/s/s", "/_matrix/client/v3/rooms/r/send/s/s"),
        ("/_m/c/v3/r/s/st/st/st", "/_matrix/client/v3/rooms/s/state/st/st"),
        # state key "c" and event type "e"
        ("/_m/c/v3/r/R/st/e/c", "/_matrix/client/v3/rooms/R/state/e/c"),
        # user id / filter id that look like route words
        ("/_m/c/v3/u/j/fl/sy", "/_matrix/client/v3/user/j/filter/sy"),
        # event id "e" after /event/
        ("/_m/c/v3/r/R/e/e", "/_matrix/client/v3/rooms/R/event/e"),
        # segments past a known route are data too
        ("/_m/c/v3/r/R/s/s/t1/s", "/_matrix/client/v3/rooms/R/send/s/t1/s"),
    ],
)
def test_data_segments_never_rewritten(short, full):
    assert expand_path(p(short)) == p(full)


def test_unknown_keyword_passes_through_unchanged():
    # An unknown (e.g. unstable or future) endpoint: keep it and everything after it as given,
    # so the HTTP router answers it like any unknown path.
    assert expand_path(p("/_m/c/unstable/org.matrix.msc9999/s/r")) == p(
        "/_matrix/client/unstable/org.matrix.msc9999/s/r"
    )
    assert expand_path(p("/_m/c/v3/zz/s")) == p("/_matrix/client/v3/zz/s")
    assert expand_path(p("/_m/zz/s")) == p("/_matrix/zz/s")


def test_segments_are_kept_as_given():
    # Uri-Path options are already percent-decoded: no further decoding or normalisation.
    room = "!a%2Fb:hub"
    assert expand_path(["_m", "c", "v3", "r", room, "s", "m room/x", ""]) == [
        "_matrix", "client", "v3", "rooms", room, "send", "m room/x", "",
    ]


@pytest.mark.parametrize(
    "segments",
    [[], ["x"], ["", "_m", "c"], ["matrix", "client"], ["_M"], ["7x"], ["client", "v3", "sync"]],
)
def test_unknown_short_path(segments):
    with pytest.raises(UnknownShortPath):
        expand_path(segments)
    assert issubclass(UnknownShortPath, ValueError)


# ------------------------------------------------------------------------------------------
# MSC3079 path enums
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "short, full",
    [
        ("/0", "/_matrix/client/versions"),
        ("/1", "/_matrix/client/r0/login"),
        ("/7", "/_matrix/client/r0/sync"),
        ("/9/!7mqP7DYBUOmwAweF:localhost/m.room.message/$.AAABeH6obLU",
         "/_matrix/client/r0/rooms/!7mqP7DYBUOmwAweF:localhost/send/m.room.message/$.AAABeH6obLU"),
        ("/8/!r:hub/m.room.name/", "/_matrix/client/r0/rooms/!r:hub/state/m.room.name/"),
        ("/8/!r:hub/m.room.name", "/_matrix/client/r0/rooms/!r:hub/state/m.room.name/"),
        ("/8/!r:hub/m.room.member/@a:hub", "/_matrix/client/r0/rooms/!r:hub/state/m.room.member/@a:hub"),
        ("/A/!r:hub/$ev", "/_matrix/client/r0/rooms/!r:hub/event/$ev"),
        ("/B/!r:hub", "/_matrix/client/r0/rooms/!r:hub/state"),
        ("/E/!r:hub", "/_matrix/client/r0/rooms/!r:hub/messages"),
        ("/F/!r:hub/$ev/t1", "/_matrix/client/r0/rooms/!r:hub/redact/$ev/t1"),
        ("/H/#s:hub", "/_matrix/client/r0/directory/room/#s:hub"),
        ("/L/#s:hub", "/_matrix/client/r0/join/#s:hub"),
        ("/W/@a:hub", "/_matrix/client/r0/profile/@a:hub"),
        ("/Z/!r:hub/m.read/$ev", "/_matrix/client/r0/rooms/!r:hub/receipt/m.read/$ev"),
        ("/c/m.x/t1", "/_matrix/client/r0/sendToDevice/m.x/t1"),
        ("/n", "/_matrix/client/r0/pushrules/"),
        ("/n/global/", "/_matrix/client/r0/pushrules/global/"),
        ("/s/@a:hub/!r:hub/m.tag", "/_matrix/client/r0/user/@a:hub/rooms/!r:hub/account_data/m.tag"),
        ("/u/!r:hub/$ev", "/_matrix/client/r0/rooms/!r:hub/report/$ev"),
        # parameters that look like codes or abbreviations stay data
        ("/9/s/s/7", "/_matrix/client/r0/rooms/s/send/s/7"),
    ],
)
def test_msc3079_examples(short, full):
    assert expand_path(p(short)) == p(full)


def test_msc3079_table_is_complete_v1():
    codes = "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstu"
    assert list(MSC3079_PATHS) == list(codes)
    assert ACCESS_TOKEN_OPTION == 256


@pytest.mark.parametrize("code", list(MSC3079_PATHS))
def test_msc3079_every_code(code):
    template = MSC3079_PATHS[code]
    segs = template[1:].split("/")
    params = [f"P{i}" for i, s in enumerate(segs) if s.startswith("{")]
    out = expand_path([code, *params])
    expected = [f"P{i}" if s.startswith("{") else s for i, s in enumerate(segs)]
    assert out == expected
    # the full form is itself understood (and is a fixed point of the expander)
    assert expand_path(out) == out
    # and the MSC3079 templates are part of the route grammar: shorten/expand round-trips
    assert expand_path(shorten_path(out)) == out
    if code != "n":
        assert shorten_path(out, msc3079=True) == [code, *params]


@pytest.mark.parametrize("segments", [["9"], ["9", "!r", "m.x"], ["9", "a", "b", "c", "d"], ["7", "x"], ["A", "!r"], ["0", ""]])
def test_msc3079_wrong_arity(segments):
    with pytest.raises(UnknownShortPath):
        expand_path(segments)


# ------------------------------------------------------------------------------------------
# table invariants and round trips
# ------------------------------------------------------------------------------------------


def _route_keywords():
    words = set()
    stack = [sp._ROOT]
    while stack:
        node = stack.pop()
        words.update(node.literals)
        stack.extend(node.literals.values())
        if node.param is not None:
            stack.append(node.param)
    return words


def test_abbreviation_table_invariants():
    keywords = _route_keywords()
    # no abbreviation is itself a route keyword (so a full word is never re-read as another)
    assert not set(SEGMENT_ABBREVIATIONS) & keywords
    # every abbreviation names a route keyword, and no two abbreviations share a word
    assert set(SEGMENT_ABBREVIATIONS.values()) <= keywords
    assert len(set(SEGMENT_ABBREVIATIONS.values())) == len(SEGMENT_ABBREVIATIONS)
    assert len(set(QUERY_ABBREVIATIONS.values())) == len(QUERY_ABBREVIATIONS)
    assert not set(QUERY_ABBREVIATIONS) & set(QUERY_ABBREVIATIONS.values())
    for short, full in SEGMENT_ABBREVIATIONS.items():
        assert len(short) < len(full), short


data_segment = st.one_of(
    st.sampled_from(sorted(SEGMENT_ABBREVIATIONS) + sorted(set(SEGMENT_ABBREVIATIONS.values())) + ["", "#s:hub", "!r:hub"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ROUTES), st.data())
def test_every_route_roundtrips_with_any_data(route, data):
    template = route[1:].split("/")
    full = [data.draw(data_segment) if s.startswith("{") else s for s in template]
    short = shorten_path(full)
    assert expand_path(short) == full
    assert expand_path(full) == full
    assert len("/".join(short)) <= len("/".join(full))


def test_seed_path_is_what_shorten_produces():
    full = p("/_matrix/client/api/v1/rooms/ROOM_ID/send/m.room.message")
    assert shorten_path(full) == p("/_m/c/a/v1/r/ROOM_ID/s/m.room.message")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=6))
def test_random_paths_never_crash(segments):
    try:
        out = expand_path(segments)
    except UnknownShortPath:
        return
    assert len(out) >= len(segments) or segments[0] in MSC3079_PATHS


# ------------------------------------------------------------------------------------------
# query
# ------------------------------------------------------------------------------------------


def test_expand_query():
    pairs = [("a", "tok"), ("s", "s_1"), ("t", "30000"), ("l", "10"), ("d", "b"), ("f", "t1"), ("fi", "0"), ("x", "a")]
    assert expand_query(pairs) == [
        ("access_token", "tok"), ("since", "s_1"), ("timeout", "30000"), ("limit", "10"),
        ("dir", "b"), ("from", "t1"), ("filter", "0"), ("x", "a"),
    ]
    # full keys and values that look like abbreviations are untouched
    assert expand_query([("access_token", "a"), ("since", "s")]) == [("access_token", "a"), ("since", "s")]
    assert expand_query([]) == []


@given(st.lists(st.tuples(st.sampled_from(sorted(QUERY_ABBREVIATIONS.values())), st.text(max_size=5))))
def test_query_roundtrip(pairs):
    assert expand_query(shorten_query(pairs)) == pairs
