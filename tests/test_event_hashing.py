"""Signing keys, JSON signatures, event hashes, redaction per room version and event ids."""
from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_core.canonical_json import CANONICALJSON_MAX_INT, CanonicalJSONError, encode_canonical_json, parse_json
from matrix_core.event_hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    hash_and_sign_event,
    hash_sign_and_compute_event_id,
    hash_and_encode_new_event,
    sign_if_ours,
    signature_block_bytes,
    redact_pdu,
    verify_event_signature,
)
from matrix_core.room_versions import KNOWN_ROOM_VERSIONS, ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from matrix_core.signing import (
    SignatureError,
    SigningKey,
    decode_base64,
    encode_base64,
    generate_signing_key,
    parse_signing_key,
    serialize_signing_key,
    sign_json,
    signing_key_from_seed,
    verify_json_signature,
)

KEY = signing_key_from_seed(bytes(range(32)), "ed25519:test")
OTHER_KEY = signing_key_from_seed(bytes(range(1, 33)), "ed25519:other")
SERVER = "hub.example"
ALL_VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]


def message_event(**extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:hub.example",
        "sender": "@sensor:hub.example",
        "content": {"msgtype": "m.text", "body": "21.5 C"},
        "depth": 7,
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$pl", "$member"],
        "origin_server_ts": 1_700_000_000_000,
        "unsigned": {"age_ts": 1_700_000_000_000},
    }
    pdu.update(extra)
    return pdu


# --- base64 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"), (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy")],
)
def test_unpadded_base64_spec_examples(raw: bytes, encoded: str) -> None:
    assert encode_base64(raw) == encoded
    assert decode_base64(encoded) == raw
    assert decode_base64(encoded + "=" * (-len(encoded) % 4)) == raw


def test_base64_alphabets() -> None:
    data = bytes([0xFB, 0xFF, 0xBF])
    assert encode_base64(data) == "+/+/"
    assert encode_base64(data, urlsafe=True) == "-_-_"
    assert decode_base64("+/+/") == decode_base64("-_-_") == decode_base64(b"-_-_") == data


@pytest.mark.parametrize("bad", ["Z", "Zm9vY", "Zm9v!", "Zm 9v", "é"])
def test_base64_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_base64(bad)


@given(st.binary(max_size=100), st.booleans())
def test_base64_round_trip(data: bytes, urlsafe: bool) -> None:
    encoded = encode_base64(data, urlsafe=urlsafe)
    assert "=" not in encoded
    assert decode_base64(encoded) == data


# --- signing keys ----------------------------------------------------------------------------------


def test_generated_key_round_trips_through_key_file_format() -> None:
    key = generate_signing_key()
    assert re.fullmatch(r"ed25519:a_[A-Za-z]{4}", key.key_id)
    text = serialize_signing_key(key)
    assert "\n" not in text
    algorithm, version, seed = text.split(" ")
    assert (algorithm, version) == ("ed25519", key.version)
    assert decode_base64(seed) == key.seed and "=" not in seed
    again = parse_signing_key(text + "\n")
    assert again.key_id == key.key_id and again.verify_key_bytes == key.verify_key_bytes


def test_generate_with_version_and_seed_is_deterministic() -> None:
    assert generate_signing_key("v1").key_id == "ed25519:v1"
    assert signing_key_from_seed(bytes(32), "ed25519:x").verify_key_base64 == signing_key_from_seed(bytes(32), "ed25519:y").verify_key_base64
    assert len(decode_base64(KEY.verify_key_base64)) == 32


def test_key_repr_hides_the_private_key() -> None:
    assert encode_base64(KEY.seed) not in repr(KEY)
    assert "signing_key" not in repr(KEY)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519 a_x",
        "ed25519 a_x AAAA",  # seed too short
        "curve25519 a_x " + encode_base64(bytes(32)),
        "ed25519 bad-version " + encode_base64(bytes(32)),
        "ed25519 a ! ",
        "ed25519 a " + encode_base64(bytes(32)) + "\ned25519 b " + encode_base64(bytes(32)),
    ],
)
def test_parse_signing_key_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signing_key(text)


@pytest.mark.parametrize("key_id", ["ed25519", "ed25519:", "rsa:1", "ed25519:a b", "ed25519:a:b"])
def test_key_id_is_validated(key_id: str) -> None:
    with pytest.raises(ValueError):
        signing_key_from_seed(bytes(32), key_id)


# --- sign_json ---------------------------------------------------------------------------------------


def test_sign_json_copies_keeps_unsigned_and_merges_signatures() -> None:
    obj = {"a": 1, "unsigned": {"u": 1}, "signatures": {"other.example": {"ed25519:o": "sig"}}}
    before = copy.deepcopy(obj)
    signed = sign_json(obj, SERVER, KEY)
    assert obj == before
    assert signed["unsigned"] == {"u": 1}
    assert signed["signatures"]["other.example"] == {"ed25519:o": "sig"}
    twice = sign_json(signed, SERVER, OTHER_KEY)
    assert set(twice["signatures"][SERVER]) == {"ed25519:test", "ed25519:other"}
    verify_json_signature(twice, SERVER, KEY.key_id, KEY.verify_key_bytes)
    verify_json_signature(twice, SERVER, OTHER_KEY.key_id, OTHER_KEY.verify_key_bytes)
    # unsigned and signatures are not covered by the signature.
    twice["unsigned"] = {"changed": True}
    twice["signatures"]["third.example"] = {"ed25519:z": "x"}
    verify_json_signature(twice, SERVER, KEY.key_id, KEY.verify_key_bytes)


def _signed() -> dict[str, Any]:
    return sign_json({"a": 1, "b": ["x"]}, SERVER, KEY)


@pytest.mark.parametrize(
    ("mutate", "server", "key_id", "verify_key"),
    [
        (lambda o: o.update(a=2), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o.update(c=None), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o["b"].append("y"), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: None, SERVER, KEY.key_id, OTHER_KEY.verify_key_bytes),
        (lambda o: None, "evil.example", KEY.key_id, KEY.verify_key_bytes),
        (lambda o: None, SERVER, "ed25519:missing", KEY.verify_key_bytes),
        (lambda o: None, SERVER, "rsa:test", KEY.verify_key_bytes),
        (lambda o: None, SERVER, KEY.key_id, b"short"),
        (lambda o: o.pop("signatures"), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o.update(signatures="nope"), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o["signatures"][SERVER].update({KEY.key_id: "!!!"}), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o["signatures"][SERVER].update({KEY.key_id: "AAAA"}), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o["signatures"][SERVER].update({KEY.key_id: 5}), SERVER, KEY.key_id, KEY.verify_key_bytes),
        (lambda o: o.update(f=1.5), SERVER, KEY.key_id, KEY.verify_key_bytes),
    ],
)
def test_verify_json_signature_failures(mutate: Any, server: str, key_id: str, verify_key: bytes) -> None:
    obj = _signed()
    mutate(obj)
    with pytest.raises(SignatureError):
        verify_json_signature(obj, server, key_id, verify_key)


def test_signature_error_is_a_value_error() -> None:
    assert issubclass(SignatureError, ValueError)


# --- redaction ---------------------------------------------------------------------------------------

TOP_LEVEL = {
    "event_id": "$e",
    "type": "X",
    "room_id": "!r:hs",
    "sender": "@u:hs",
    "state_key": "",
    "content": {"keep": "nothing"},
    "hashes": {"sha256": "h"},
    "signatures": {"hs": {"ed25519:1": "s"}},
    "depth": 1,
    "prev_events": ["$p"],
    "prev_state": [],
    "auth_events": ["$a"],
    "origin": "hs",
    "origin_server_ts": 1,
    "membership": "join",
    "redacts": "$x",
    "unsigned": {"age_ts": 1},
    "custom": 1,
}
COMMON_KEPT = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "auth_events", "origin_server_ts",
}  # fmt: skip


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_redaction_top_level_keys(room_version: RoomVersion) -> None:
    redacted = redact_pdu(TOP_LEVEL, room_version)
    expected = set(COMMON_KEPT)
    if not room_version.msc2176_redaction_rules:
        expected |= {"origin", "membership", "prev_state"}
    assert set(redacted) == expected
    assert redacted["content"] == {}


def _content(event_type: str, content: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    return redact_pdu({"type": event_type, "content": content}, room_version)["content"]


MEMBER = {
    "membership": "invite",
    "join_authorised_via_users_server": "@admin:hs",
    "displayname": "Sensor",
    "avatar_url": "mxc://x/y",
    "third_party_invite": {"display_name": "Bob", "signed": {"mxid": "@b:hs", "token": "t", "signatures": {}}},
}
POWER_LEVELS = {
    "ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0, "kick": 50,
    "redact": 50, "state_default": 50, "users": {"@u:hs": 100}, "users_default": 0,
    "notifications": {"room": 50},
}  # fmt: skip
CREATE = {"creator": "@u:hs", "room_version": "10", "m.federate": False, "additional_creators": ["@v:hs"]}


@pytest.mark.parametrize(
    ("event_type", "content", "v10", "v11"),
    [
        (
            "m.room.member",
            MEMBER,
            {"membership": "invite", "join_authorised_via_users_server": "@admin:hs"},
            {
                "membership": "invite",
                "join_authorised_via_users_server": "@admin:hs",
                "third_party_invite": {"signed": MEMBER["third_party_invite"]["signed"]},
            },
        ),
        (
            "m.room.member",
            {"membership": "join", "third_party_invite": {"display_name": "Bob"}},
            {"membership": "join"},
            {"membership": "join", "third_party_invite": {}},  # as Synapse does
        ),
        ("m.room.member", {"membership": "join", "third_party_invite": "junk"}, {"membership": "join"}, {"membership": "join"}),
        ("m.room.create", CREATE, {"creator": "@u:hs"}, CREATE),
        (
            "m.room.join_rules",
            {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!a:hs"}], "x": 1},
            {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!a:hs"}]},
            {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!a:hs"}]},
        ),
        (
            "m.room.power_levels",
            POWER_LEVELS,
            {k: v for k, v in POWER_LEVELS.items() if k not in ("invite", "notifications")},
            {k: v for k, v in POWER_LEVELS.items() if k != "notifications"},
        ),
        (
            "m.room.history_visibility",
            {"history_visibility": "shared", "x": 1},
            {"history_visibility": "shared"},
            {"history_visibility": "shared"},
        ),
        ("m.room.redaction", {"redacts": "$x", "reason": "spam"}, {}, {"redacts": "$x"}),
        ("m.room.aliases", {"aliases": ["#a:hs"]}, {}, {}),
        ("m.room.message", {"body": "hi", "msgtype": "m.text"}, {}, {}),
        ("m.room.name", {"name": "Hub"}, {}, {}),
    ],
)
def test_redaction_content_per_version(
    event_type: str, content: dict[str, Any], v10: dict[str, Any], v11: dict[str, Any]
) -> None:
    assert _content(event_type, content, ROOM_V10) == v10
    assert _content(event_type, content, ROOM_V11) == v11
    assert _content(event_type, content, ROOM_V12) == v11


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_redaction_of_odd_shapes(room_version: RoomVersion) -> None:
    assert redact_pdu({"type": "m.room.member", "content": "not an object"}, room_version)["content"] == {}
    assert redact_pdu({"type": "m.room.member"}, room_version) == {"type": "m.room.member", "content": {}}


def test_redact_pdu_shares_nothing_with_its_input() -> None:
    pdu = {"type": "m.room.power_levels", "content": copy.deepcopy(POWER_LEVELS), "prev_events": ["$p"], "unsigned": {}}
    before = copy.deepcopy(pdu)
    redacted = redact_pdu(pdu, ROOM_V11)
    assert pdu == before
    redacted["content"]["users"]["@evil:hs"] = 100
    redacted["prev_events"].append("$q")
    assert pdu == before


# --- hashes, signatures and ids ---------------------------------------------------------------------


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_signed_event_survives_redaction(room_version: RoomVersion) -> None:
    pdu = hash_and_sign_event(message_event(), room_version, SERVER, KEY)
    event_id = compute_event_id(pdu, room_version)
    assert re.fullmatch(r"\$[A-Za-z0-9_-]{43}", event_id)
    assert check_content_hash(pdu)

    redacted = redact_pdu(pdu, room_version)
    # Same id, still verifiable, but the content hash now shows it was redacted.
    assert compute_event_id(redacted, room_version) == event_id
    verify_event_signature(redacted, room_version, SERVER, KEY.key_id, KEY.verify_key_bytes)
    assert not check_content_hash(redacted)
    assert redact_pdu(redacted, room_version) == redacted


def test_hash_and_sign_does_not_modify_and_merges() -> None:
    original = message_event(hashes={"other": "x"}, signatures={"other.example": {"ed25519:o": "s"}})
    before = copy.deepcopy(original)
    pdu = hash_and_sign_event(original, ROOM_V11, SERVER, KEY)
    assert original == before
    assert pdu["hashes"]["other"] == "x"
    assert pdu["signatures"]["other.example"] == {"ed25519:o": "s"}
    assert pdu["unsigned"] == original["unsigned"]
    # A second server co-signs: both verify.
    both = hash_and_sign_event(pdu, ROOM_V11, "peer.example", OTHER_KEY)
    verify_event_signature(both, ROOM_V11, SERVER, KEY.key_id, KEY.verify_key_bytes)
    verify_event_signature(both, ROOM_V11, "peer.example", OTHER_KEY.key_id, OTHER_KEY.verify_key_bytes)


def test_fused_helper_matches_separate_calls() -> None:
    for room_version in ALL_VERSIONS:
        pdu, event_id = hash_sign_and_compute_event_id(message_event(), room_version, SERVER, KEY)
        assert pdu == hash_and_sign_event(message_event(), room_version, SERVER, KEY)
        assert event_id == compute_event_id(pdu, room_version)
        assert event_id[1:] == encode_base64(compute_reference_hash(pdu, room_version), urlsafe=True)


def test_what_the_hashes_cover() -> None:
    pdu = hash_and_sign_event(message_event(origin="hub.example"), ROOM_V10, SERVER, KEY)
    event_id = compute_event_id(pdu, ROOM_V10)

    # unsigned and signatures: covered by nothing.
    other = copy.deepcopy(pdu)
    other["unsigned"] = {"age": 5}
    other["signatures"]["x.example"] = {"ed25519:x": "y"}
    assert check_content_hash(other) and compute_event_id(other, ROOM_V10) == event_id
    verify_event_signature(other, ROOM_V10, SERVER, KEY.key_id, KEY.verify_key_bytes)

    # Redactable content: the content hash catches it, signature and id do not change.
    other = copy.deepcopy(pdu)
    other["content"]["body"] = "tampered"
    assert not check_content_hash(other)
    assert compute_event_id(other, ROOM_V10) == event_id
    verify_event_signature(other, ROOM_V10, SERVER, KEY.key_id, KEY.verify_key_bytes)

    # `origin` is protected in v10 but not in v11.
    other = copy.deepcopy(pdu)
    other["origin"] = "evil.example"
    assert compute_event_id(other, ROOM_V10) != event_id
    with pytest.raises(SignatureError):
        verify_event_signature(other, ROOM_V10, SERVER, KEY.key_id, KEY.verify_key_bytes)
    v11 = hash_and_sign_event(message_event(origin="hub.example"), ROOM_V11, SERVER, KEY)
    v11_tampered = dict(v11, origin="evil.example")
    assert compute_event_id(v11_tampered, ROOM_V11) == compute_event_id(v11, ROOM_V11)
    verify_event_signature(v11_tampered, ROOM_V11, SERVER, KEY.key_id, KEY.verify_key_bytes)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(sender="@evil:hub.example"),
        lambda p: p.update(depth=8),
        lambda p: p["prev_events"].append("$x"),
        lambda p: p["auth_events"].pop(),
        lambda p: p.update(origin_server_ts=1),
        lambda p: p.update(state_key=""),
        lambda p: p["hashes"].update(sha256="AAAA"),
        lambda p: p.update(type="m.room.messagf"),
    ],
)
def test_tampering_with_protected_fields_fails(mutate: Any) -> None:
    for room_version in ALL_VERSIONS:
        pdu = hash_and_sign_event(message_event(), room_version, SERVER, KEY)
        mutate(pdu)
        with pytest.raises(SignatureError):
            verify_event_signature(pdu, room_version, SERVER, KEY.key_id, KEY.verify_key_bytes)


@pytest.mark.parametrize(
    "hashes", [None, "x", {}, {"sha256": 1}, {"sha256": "!!"}, {"sha256": encode_base64(b"\0" * 32)}]
)
def test_check_content_hash_false_for_missing_or_malformed(hashes: Any) -> None:
    pdu = message_event()
    if hashes is not None:
        pdu["hashes"] = hashes
    assert check_content_hash(pdu) is False


def test_content_hash_excludes_hashes_signatures_unsigned() -> None:
    base = message_event()
    digest = compute_content_hash(base)
    assert len(digest) == 32
    assert compute_content_hash(dict(base, hashes={"sha256": "x"}, signatures={"a": {}}, unsigned={"b": 1})) == digest
    assert compute_content_hash(dict(base, depth=8)) != digest


def test_known_room_versions_are_covered() -> None:
    assert set(KNOWN_ROOM_VERSIONS.values()) == set(ALL_VERSIONS)


# --- properties ---------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-CANONICALJSON_MAX_INT, CANONICALJSON_MAX_INT) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
event_types = st.sampled_from(
    ["m.room.message", "m.room.member", "m.room.create", "m.room.power_levels", "m.room.join_rules",
     "m.room.redaction", "m.room.history_visibility", "org.iot.reading"]
)  # fmt: skip
room_versions = st.sampled_from(ALL_VERSIONS)


@settings(max_examples=60, deadline=None)
@given(event_types, st.dictionaries(st.text(max_size=30), json_value, max_size=6), room_versions)
def test_signature_and_id_survive_wire_round_trip_and_redaction(
    event_type: str, content: dict[str, Any], room_version: RoomVersion
) -> None:
    pdu, event_id = hash_sign_and_compute_event_id(message_event(type=event_type, content=content), room_version, SERVER, KEY)
    wire = parse_json(encode_canonical_json(pdu))
    assert wire == pdu
    verify_event_signature(wire, room_version, SERVER, KEY.key_id, KEY.verify_key_bytes)
    assert check_content_hash(wire)
    assert compute_event_id(wire, room_version) == event_id
    redacted = redact_pdu(wire, room_version)
    verify_event_signature(redacted, room_version, SERVER, KEY.key_id, KEY.verify_key_bytes)
    assert compute_event_id(redacted, room_version) == event_id


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(max_size=30), json_value, max_size=6),
    st.sampled_from(["sender", "room_id", "origin_server_ts", "depth", "new_key", "content"]),
    json_value,
    room_versions,
)
def test_tampering_changes_something_detectable(
    content: dict[str, Any], field: str, new_value: Any, room_version: RoomVersion
) -> None:
    pdu = hash_and_sign_event(message_event(content=content), room_version, SERVER, KEY)
    if pdu.get(field) == new_value:
        return
    tampered = dict(pdu)
    tampered[field] = new_value
    # Any change is caught: by the signature if redaction keeps the field, else by the content hash.
    try:
        verify_event_signature(tampered, room_version, SERVER, KEY.key_id, KEY.verify_key_bytes)
    except SignatureError:
        return
    assert not check_content_hash(tampered)


@settings(max_examples=30, deadline=None)
@given(json_value.filter(lambda v: isinstance(v, dict)), st.text(min_size=1, max_size=20))
def test_sign_json_round_trip(obj: dict[str, Any], server_name: str) -> None:
    signed = sign_json(obj, server_name, KEY)
    wire = parse_json(encode_canonical_json(signed))
    verify_json_signature(wire, server_name, KEY.key_id, KEY.verify_key_bytes)
    with pytest.raises(SignatureError):
        verify_json_signature(dict(wire, injected=wire.get("injected") is not True), server_name, KEY.key_id, KEY.verify_key_bytes)


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text())
_json_value = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(), inner, max_size=4)),
                           max_leaves=12)
_NEW_EVENT_KEY = generate_signing_key("fast")


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(ALL_VERSIONS),
    event_type=st.sampled_from(["m.room.message", "m.room.member", "m.room.power_levels", "m.room.create",
                                "m.room.redaction", "m.room.join_rules", "org.example.ü\u0001"]),
    content=st.dictionaries(st.text(), _json_value, max_size=5),
    state_key=st.one_of(st.none(), st.text(max_size=8)),
    extra=st.dictionaries(st.sampled_from(["redacts", "origin", "membership", "prev_state", "x-custom"]),
                          st.text(max_size=6), max_size=2),
)
def test_assembled_encoding_of_new_events_matches_the_general_path(
    version: RoomVersion, event_type: str, content: dict[str, Any], state_key: str | None, extra: dict[str, str]
) -> None:
    """The hot path assembles three canonical encodings from per-member texts and leaves the
    signature for the way out: once `sign_if_ours` adds it, the same bytes, id and signature as
    hashing and signing whole objects, for any content and every room version."""
    pdu: dict[str, Any] = {"type": event_type, "room_id": "!r:hub", "sender": "@a:hub", "content": content,
                           "origin_server_ts": 1_700_000_000_000, "depth": 7, "prev_events": ["$p"],
                           "auth_events": ["$a", "$b\u2028"], **extra}
    if state_key is not None:
        pdu["state_key"] = state_key
    try:
        expected_signed, expected_id = hash_sign_and_compute_event_id(pdu, version, "hub", _NEW_EVENT_KEY)
        expected_bytes = encode_canonical_json(expected_signed)
    except CanonicalJSONError:  # e.g. a lone surrogate: the fast path must refuse it too
        with pytest.raises(CanonicalJSONError):
            hash_and_encode_new_event(pdu, version)
        return
    hashed, event_id, canonical = hash_and_encode_new_event(pdu, version)
    assert "signatures" not in hashed and canonical == encode_canonical_json(hashed)
    assert event_id == expected_id
    signed = sign_if_ours(hashed, version, "hub", _NEW_EVENT_KEY)
    assert signed == expected_signed
    assert len(encode_canonical_json(signed)) == len(canonical) + signature_block_bytes("hub", _NEW_EVENT_KEY)
    assert sign_if_ours(signed, version, "hub", _NEW_EVENT_KEY) is signed  # signed once
    assert sign_if_ours(hashed, version, "elsewhere", _NEW_EVENT_KEY) is hashed  # not our user's event


def test_sign_if_ours_signs_a_redacted_copy_as_the_original() -> None:
    """A redacted event of ours leaves signed: the signature covers the redacted form only."""
    pdu = {"type": "m.room.message", "room_id": "!r:hub", "sender": "@a:hub", "content": {"body": "secret"},
           "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": []}
    hashed, _, _ = hash_and_encode_new_event(pdu, ROOM_V12)
    whole = sign_if_ours(hashed, ROOM_V12, "hub", _NEW_EVENT_KEY)
    redacted = sign_if_ours(redact_pdu(hashed, ROOM_V12), ROOM_V12, "hub", _NEW_EVENT_KEY)
    assert redacted["signatures"] == whole["signatures"]
    assert redacted["hashes"] == whole["hashes"]


@pytest.mark.parametrize("bad", [{"t": 1.5}, {"n": 2**53}, {1: "x"}, {"s": "\ud800"}, {"o": object()}])
def test_assembled_encoding_refuses_what_canonical_json_refuses(bad: dict[Any, Any]) -> None:
    pdu = {"type": "m.room.message", "room_id": "!r:hub", "sender": "@a:hub", "content": bad,
           "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": []}
    with pytest.raises(CanonicalJSONError):
        hash_and_encode_new_event(pdu, ROOM_V12)
