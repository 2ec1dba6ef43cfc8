"""Stored event JSON (matrix_core/store/event_json.py): what is packed reads back byte for byte,
rows from before the format read as they are, JSON without skeleton pieces stays text, a
reading's JSON is stored in about 60% of its bytes, and a BLOB in a format this program does
not know is an error, not a wrong event."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_core.canonical_json import encode_canonical_json
from matrix_core.event_hashing import hash_and_encode_new_event
from matrix_core.room_versions import DEFAULT_ROOM_VERSION
from matrix_core.store import event_json

READING = {
    "type": "m.room.message", "room_id": "!uweVnEjvvOYCRQMitH:hub.local", "sender": "@sensor3:hub.local",
    "content": {"body": "home/livingroom/sensor3: {\"t\": 20.3}", "msgtype": "org.matrix_gateway.mqtt",
                "mqtt": {"payload": {"kind": "json", "text": "{\"t\": 20.3}", "value": {"t": {"$f": "20.3"}}},
                         "qos": 1, "topic": "home/livingroom/sensor3"}},
    "origin_server_ts": 1764900002991, "depth": 13,
    "prev_events": ["$22CLSzs0fkFARAiEQE-5Lj03x3Hsy8er7Z_DW_4YNLw"],
    "auth_events": ["$09Bq0JFhyMeosYIDsdWbGUKl0Yz_9nWBS2_kKRKJV2c", "$fcGudWOHGQBc7sthJz8brrsg9mt3I4-8DWZnf9xwgrE",
                    "$UBphlUB8yGsHzU2ALfVxVCGNuLxU0ZSnmhhkr3_BG5E"],
}


def test_a_reading_is_stored_in_about_60_percent_of_its_json_and_reads_back() -> None:
    _, _, canonical = hash_and_encode_new_event(READING, DEFAULT_ROOM_VERSION)
    stored = event_json.pack(canonical)
    assert isinstance(stored, bytes) and stored[0] == event_json.FORMAT_V1
    assert len(stored) <= len(canonical) * 0.62, (len(stored), len(canonical))
    assert event_json.unpack(stored) == canonical
    assert encode_canonical_json(event_json.load(stored)) == canonical


_PIECE_TEXTS = [piece.decode() for piece in event_json._PIECES_V1]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",))) | st.sampled_from(_PIECE_TEXTS) \
    | st.lists(st.sampled_from(_PIECE_TEXTS + ['"', "\\", "$", "x"]), max_size=6).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**53 + 1, 2**53 - 1) | _TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                    max_leaves=30))
def test_any_json_reads_back_exactly(value: object) -> None:
    """Including strings made of skeleton pieces, quotes and backslashes side by side."""
    pdu = {"auth_events": ["$a", "$b"], "content": {"body": value, "msgtype": "m.text"}, "value": value}
    raw = json.dumps(pdu, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    stored = event_json.pack(raw)
    assert isinstance(stored, bytes)  # the skeleton around the value always matches
    assert event_json.unpack(stored) == raw
    assert event_json.load(stored) == pdu


def test_a_row_from_before_the_format_is_read_as_it_is() -> None:
    assert event_json.load('{"type":"m.room.message"}') == {"type": "m.room.message"}
    assert event_json.pack(b"{}") == "{}"  # nothing to shrink: stays text
    # Not JSON (a raw control character), so the tokens are not free: stored as text, unchanged.
    assert event_json.pack(b'{"auth_events":["$\x01"]}') == '{"auth_events":["$\x01"]}'


def test_a_blob_in_an_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        event_json.load(b"\x07abc")
    with pytest.raises(ValueError, match="unknown format"):
        event_json.load(b"")
