"""`sign_new_event` (one encoding per value, the send hot path) must agree byte for byte with the
reference path: hash, sign, id, then canonical JSON of the signed event."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_core.canonical_json import CanonicalJSONError, encode_canonical_json
from matrix_core.event_hashing import hash_sign_and_compute_event_id, sign_new_event
from matrix_core.room_versions import KNOWN_ROOM_VERSIONS
from matrix_core.signing import signing_key_from_seed

KEY = signing_key_from_seed(b"\x07" * 32, "ed25519:test")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def pdu_with(content: dict[str, Any], event_type: str, state_key: str | None) -> dict[str, Any]:
    pdu = {"type": event_type, "room_id": "!r:hub", "sender": "@a:hub", "content": content,
           "origin_server_ts": 1_700_000_000_000, "depth": 7, "prev_events": ["$p"], "auth_events": ["$a1", "$a2"]}
    if state_key is not None:
        pdu["state_key"] = state_key
    return pdu


@pytest.mark.parametrize("version", sorted(KNOWN_ROOM_VERSIONS))
@given(content=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       event_type=st.sampled_from(["m.room.message", "m.room.member", "m.room.power_levels", "m.room.create",
                                   "org.example.reading"]),
       state_key=st.one_of(st.none(), st.text(max_size=5)))
def test_matches_the_reference_path(version: str, content: dict[str, Any], event_type: str,
                                    state_key: str | None) -> None:
    room_version = KNOWN_ROOM_VERSIONS[version]
    pdu = pdu_with(content, event_type, state_key)
    signed, event_id, canonical = sign_new_event(pdu, room_version, "hub", KEY)
    ref_signed, ref_id = hash_sign_and_compute_event_id(pdu, room_version, "hub", KEY)
    assert signed == ref_signed
    assert event_id == ref_id
    assert canonical == encode_canonical_json(ref_signed)
    assert json.loads(canonical) == ref_signed


def test_bad_values_are_refused() -> None:
    with pytest.raises(CanonicalJSONError):
        sign_new_event(pdu_with({"t": 21.5}, "m.room.message", None), KNOWN_ROOM_VERSIONS["12"], "hub", KEY)
    with pytest.raises(ValueError):
        sign_new_event({**pdu_with({}, "x", None), "hashes": {}}, KNOWN_ROOM_VERSIONS["12"], "hub", KEY)
