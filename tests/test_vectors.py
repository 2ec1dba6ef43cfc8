"""Every entry of the shared Matrix crypto test vectors becomes a test.

The file is parametrized over as it stands, so entries added later are picked up without editing
this module; sections or fields this module does not know fail loudly instead of being ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from matrix_core.canonical_json import encode_canonical_json, parse_json
from matrix_core.event_hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    hash_and_sign_event,
    hash_sign_and_compute_event_id,
    verify_event_signature,
)
from matrix_core.events import Event
from matrix_core.room_versions import KNOWN_ROOM_VERSIONS
from matrix_core.signing import (
    SigningKey,
    decode_base64,
    encode_base64,
    sign_json,
    signing_key_from_seed,
    verify_json_signature,
)

VECTORS_PATH = Path(
    os.environ.get("MATRIX_VECTORS")
    or Path(__file__).resolve().parents[2] / "shared" / "vectors" / "matrix-crypto.json"
)

KNOWN_SECTIONS = {"about", "signing_key", "sign_json", "sign_event", "canonical_json"}
KNOWN_FIELDS = {
    "sign_json": {"source", "input", "signature", "note"},
    "sign_event": {
        "source",
        "room_version",
        "input",
        "content_hash_sha256",
        "signature",
        "event_id_after_signing",
        "room_id",
        "note",
    },
    "canonical_json": {"input_json", "canonical", "note"},
}


def _load() -> dict[str, Any] | None:
    try:
        return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


VECTORS = _load()


def _entries(section: str) -> list[Any]:
    if VECTORS is None:
        return []
    return [pytest.param(entry, id=f"{section}[{i}]") for i, entry in enumerate(VECTORS.get(section, []))]


def test_vectors_file_is_present_and_understood() -> None:
    # Fail, never skip: a missing file would otherwise silently turn every vector test into a skip.
    assert VECTORS is not None, f"test vectors not found at {VECTORS_PATH} (set MATRIX_VECTORS)"
    unknown = set(VECTORS) - KNOWN_SECTIONS
    assert not unknown, f"vector sections this test module does not check: {sorted(unknown)}"
    for section in ("sign_json", "sign_event", "canonical_json"):
        assert VECTORS.get(section), f"vector section {section!r} is missing or empty"
        for i, entry in enumerate(VECTORS[section]):
            extra = set(entry) - KNOWN_FIELDS[section]
            assert not extra, f"{section}[{i}] has fields this module does not check: {sorted(extra)}"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    assert VECTORS is not None, f"test vectors not found at {VECTORS_PATH}"
    sk = VECTORS["signing_key"]
    return signing_key_from_seed(decode_base64(sk["seed_unpadded_base64"]), sk["key_id"])


@pytest.fixture(scope="module")
def server_name() -> str:
    assert VECTORS is not None
    return VECTORS["signing_key"]["server_name"]


def test_signing_key_matches_public_key(key: SigningKey) -> None:
    assert VECTORS is not None
    assert key.key_id == VECTORS["signing_key"]["key_id"]
    assert key.verify_key_base64 == VECTORS["signing_key"]["public_key_unpadded_base64"]


@pytest.mark.parametrize("entry", _entries("canonical_json"))
def test_canonical_json(entry: dict[str, Any]) -> None:
    encoded = encode_canonical_json(parse_json(entry["input_json"]))
    assert encoded == entry["canonical"].encode("utf-8")
    # The canonical form is a fixed point, whether given as bytes or str.
    assert encode_canonical_json(parse_json(encoded)) == encoded
    assert encode_canonical_json(parse_json(entry["canonical"])) == encoded


@pytest.mark.parametrize("entry", _entries("sign_json"))
def test_sign_json(entry: dict[str, Any], key: SigningKey, server_name: str) -> None:
    original = json.loads(json.dumps(entry["input"]))
    signed = sign_json(entry["input"], server_name, key)
    assert entry["input"] == original, "sign_json must not modify its input"
    assert signed["signatures"][server_name][key.key_id] == entry["signature"]
    verify_json_signature(signed, server_name, key.key_id, key.verify_key_bytes)


@pytest.mark.parametrize("entry", _entries("sign_event"))
def test_sign_event(entry: dict[str, Any], key: SigningKey, server_name: str) -> None:
    room_version = KNOWN_ROOM_VERSIONS[entry["room_version"]]
    original = json.loads(json.dumps(entry["input"]))

    assert encode_base64(compute_content_hash(entry["input"])) == entry["content_hash_sha256"]

    pdu = hash_and_sign_event(entry["input"], room_version, server_name, key)
    assert entry["input"] == original, "hash_and_sign_event must not modify its input"
    assert pdu["hashes"]["sha256"] == entry["content_hash_sha256"]
    assert check_content_hash(pdu)
    assert pdu["signatures"][server_name][key.key_id] == entry["signature"]
    verify_event_signature(pdu, room_version, server_name, key.key_id, key.verify_key_bytes)

    # The signed event survives the wire: canonical bytes, parsed back, still verify and hash.
    wire = parse_json(encode_canonical_json(pdu))
    verify_event_signature(wire, room_version, server_name, key.key_id, key.verify_key_bytes)
    assert check_content_hash(wire)

    event_id = compute_event_id(pdu, room_version)
    assert hash_sign_and_compute_event_id(entry["input"], room_version, server_name, key) == (pdu, event_id)
    if "event_id_after_signing" in entry:
        assert event_id == entry["event_id_after_signing"]
    if "room_id" in entry:
        assert Event.from_pdu(pdu, room_version).room_id == entry["room_id"]
