"""The send path's `hash_sign_and_encode_event` (content encoded twice instead of three times,
hashes and signatures spliced in) must equal the reference path byte for byte, whatever the
content holds, including keys named like the PDU's own top-level keys."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_core.canonical_json import CanonicalJSONError, encode_canonical_json
from matrix_core.event_hashing import hash_sign_and_compute_event_id, hash_sign_and_encode_event
from matrix_core.room_versions import KNOWN_ROOM_VERSIONS
from matrix_core.signing import signing_key_from_seed

KEY = signing_key_from_seed(b"\x09" * 32, "ed25519:test")
TRICKY_KEYS = st.sampled_from(["origin_server_ts", "type", "state_key", "signatures", "hashes", "sender",
                               "room_id", "prev_events", ",\"type\":", "x"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_KEYS | st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)


@pytest.mark.parametrize("version", sorted(KNOWN_ROOM_VERSIONS))
@given(content=st.dictionaries(TRICKY_KEYS | st.text(max_size=8), json_values, max_size=6),
       event_type=st.sampled_from(["m.room.message", "m.room.member", "m.room.create", 'a,"type":b', "z"]),
       state_key=st.one_of(st.none(), st.text(max_size=6)),
       redacts=st.booleans())
def test_matches_the_reference_path(version: str, content: dict[str, Any], event_type: str,
                                    state_key: str | None, redacts: bool) -> None:
    room_version = KNOWN_ROOM_VERSIONS[version]
    pdu: dict[str, Any] = {"type": event_type, "room_id": "!r:hub", "sender": "@a:hub", "content": content,
                           "origin_server_ts": 1_700_000_000_000, "depth": 7, "prev_events": ["$p"],
                           "auth_events": ["$a1"]}
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts:
        pdu["redacts"] = "$target"
    signed, event_id, canonical = hash_sign_and_encode_event(pdu, room_version, "hub", KEY)
    ref_signed, ref_id = hash_sign_and_compute_event_id(pdu, room_version, "hub", KEY)
    assert (signed, event_id) == (ref_signed, ref_id)
    assert canonical == encode_canonical_json(ref_signed)


def test_refuses_floats_and_signed_input() -> None:
    pdu = {"type": "m.room.message", "room_id": "!r:hub", "sender": "@a:hub", "content": {"t": 21.5},
           "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": []}
    with pytest.raises(CanonicalJSONError):
        hash_sign_and_encode_event(pdu, KNOWN_ROOM_VERSIONS["12"], "hub", KEY)
    with pytest.raises(ValueError):
        hash_sign_and_encode_event({**pdu, "content": {}, "signatures": {}}, KNOWN_ROOM_VERSIONS["12"], "hub", KEY)
