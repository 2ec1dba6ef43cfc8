"""matrix_core/ephemeral.py without sockets: request checks, /sync event shapes, EDU shapes and
strict EDU parsing."""
from __future__ import annotations

import pytest

from matrix_core import errors
from matrix_core.ephemeral import (MAX_TYPING_TIMEOUT_MS, BadEDU, Receipt, parse_receipt_edu, parse_typing_edu,
                                   receipt_edu, receipt_events, receipt_thread, receipt_type, typing_edu,
                                   typing_event, typing_request)


def errcode(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.MatrixError) as err:
        fn(*args)
    return err.value.errcode


def test_typing_request_bounds_the_timeout() -> None:
    assert typing_request({"typing": True, "timeout": 10**12}).timeout_ms == MAX_TYPING_TIMEOUT_MS
    assert typing_request({"typing": True, "timeout": 5000}).timeout_ms == 5000
    assert typing_request({"typing": True}).timeout_ms == 30_000
    assert typing_request({"typing": False, "timeout": "ignored"}).typing is False
    assert errcode(typing_request, {}) == "M_MISSING_PARAM"
    for bad in ({"typing": 1}, {"typing": True, "timeout": True}, {"typing": True, "timeout": -1},
                {"typing": True, "timeout": "5"}):
        assert errcode(typing_request, bad) == "M_BAD_JSON", bad


def test_receipt_type_and_thread() -> None:
    assert receipt_type("m.read.private") == "m.read.private"
    assert errcode(receipt_type, "m.read.public") == "M_INVALID_PARAM"
    assert receipt_thread({}, "m.read") is None
    assert receipt_thread({"thread_id": "main"}, "m.read") == "main"
    assert receipt_thread({"thread_id": "$root"}, "m.read.private") == "$root"
    for body, kind in (({"thread_id": None}, "m.read"), ({"thread_id": "$a b"}, "m.read"),
                       ({"thread_id": "main"}, "m.fully_read"), ({"thread_id": "$" + "x" * 300}, "m.read")):
        assert errcode(receipt_thread, body, kind) == "M_INVALID_PARAM", body


def test_receipt_events_hide_others_private_receipts() -> None:
    rs = [Receipt("!r", "m.read", "@a:x", "$e", 5, None), Receipt("!r", "m.read.private", "@b:x", "$e", 6, None),
          Receipt("!r", "m.read", "@b:x", "$f", 7, "main")]
    seen_by_a = receipt_events(rs, "@a:x")
    assert seen_by_a == {"!r": {"type": "m.receipt", "content": {
        "$e": {"m.read": {"@a:x": {"ts": 5}}}, "$f": {"m.read": {"@b:x": {"ts": 7, "thread_id": "main"}}}}}}
    assert receipt_events(rs, "@b:x")["!r"]["content"]["$e"]["m.read.private"] == {"@b:x": {"ts": 6}}
    assert typing_event(["@b:x", "@a:x"]) == {"type": "m.typing", "content": {"user_ids": ["@a:x", "@b:x"]}}


def test_edus_round_trip() -> None:
    r = Receipt("!r:x", "m.read", "@a:x", "$e", 5, "$root")
    assert parse_receipt_edu(receipt_edu(r)["content"]) == [r]
    t = typing_edu("!r:x", "@a:x", True)
    assert t["edu_type"] == "m.typing"
    parsed = parse_typing_edu(t["content"])
    assert (parsed.room_id, parsed.user_id, parsed.typing) == ("!r:x", "@a:x", True)


def test_receipt_edu_parsing_is_strict() -> None:
    good = {"!r:x": {"m.read": {"@a:x": {"event_ids": ["$e"], "data": {"ts": 1}}},
                     "org.example.other": {"@a:x": {"event_ids": ["$e"]}}}}
    assert [r.user_id for r in parse_receipt_edu(good)] == ["@a:x"]  # other types are skipped
    bad = [
        [],
        {"not-a-room": {}},
        {"!r:x": []},
        {"!r:x": {"m.read": {"nobody": {"event_ids": ["$e"]}}}},
        {"!r:x": {"m.read": {"@a:x": {"event_ids": "$e"}}}},
        {"!r:x": {"m.read": {"@a:x": {"event_ids": ["e"]}}}},
        {"!r:x": {"m.read": {"@a:x": {"event_ids": ["$e"], "data": {"ts": 1.5}}}}},
        {"!r:x": {"m.read": {"@a:x": {"event_ids": ["$e"], "data": {"thread_id": 3}}}}},
        {"!r:x": {"m.read": {f"@u{i}:x": {"event_ids": ["$e"]} for i in range(101)}}},
    ]
    for content in bad:
        with pytest.raises(BadEDU):
            parse_receipt_edu(content)
    for content in ({}, {"room_id": "!r:x", "user_id": "@a:x"}, {"room_id": "r", "user_id": "@a:x", "typing": True},
                    {"room_id": "!r:x", "user_id": "a", "typing": False}, "x"):
        with pytest.raises(BadEDU):
            parse_typing_edu(content)
