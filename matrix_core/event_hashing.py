"""Event hashes, redaction, event ids and event signatures (server-server API, room versions 10-12).

Why each piece exists:
- the content hash covers the whole event, so a redacted copy can still be told apart from a
  tampered one (a bad content hash means "redact it", not "reject it");
- signatures and the reference hash (the event id) cover only the *redacted* form, so an event
  keeps its id and stays verifiable after a redaction strips its content.

Room version differences are read from RoomVersion flags, never from the version string.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from .canonical_json import (
    canonical_utf8,
    check_canonical_value,
    encode_canonical_json,
    encode_canonical_json_parts,
    encode_canonical_json_text,
    encode_canonical_json_trusted,
)
from .room_versions import RoomVersion
from .signing import SignatureError, SigningKey, decode_base64, encode_base64, verify_json_signature

__all__ = [
    "SignatureError",  # re-exported: verify_event_signature raises it
    "check_content_hash",
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "hash_and_sign_event",
    "hash_sign_and_compute_event_id",
    "hash_and_encode_new_event",
    "redact_pdu",
    "sign_if_ours",
    "signature_block_bytes",
    "verify_event_signature",
]

# Top-level keys every supported room version keeps on redaction.
_KEPT_KEYS = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# Before MSC2176 (room versions <= 10) these were kept too.
_KEPT_KEYS_PRE_MSC2176 = _KEPT_KEYS | {"origin", "membership", "prev_state"}

# Content keys kept per event type. All supported versions (>= 10) have restricted joins (`allow`,
# v8+) and `join_authorised_via_users_server` (v9+); MSC2176 adds the rest.
_CONTENT_KEPT_V10: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": (
        "ban",
        "events",
        "events_default",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    ),
    "m.room.history_visibility": ("history_visibility",),
}
_CONTENT_KEPT_MSC2176: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    # m.room.create keeps its whole content: handled in code.
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": _CONTENT_KEPT_V10["m.room.power_levels"] + ("invite",),
    "m.room.history_visibility": ("history_visibility",),
    "m.room.redaction": ("redacts",),
}
_UNSIGNED_AND_SIGNATURES = ("unsigned", "signatures")


def _sha256_canonical_without(pdu: dict[str, Any], drop: tuple[str, ...]) -> bytes:
    return hashlib.sha256(encode_canonical_json({k: v for k, v in pdu.items() if k not in drop})).digest()


def compute_content_hash(pdu: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the pdu without `unsigned`, `signatures` and `hashes`."""
    return _sha256_canonical_without(pdu, ("unsigned", "signatures", "hashes"))


def check_content_hash(pdu: dict[str, Any]) -> bool:
    """Whether hashes.sha256 matches the pdu. False for a missing or malformed hash.

    A mismatch means the event was modified (e.g. redacted) in transit: the spec says to use its
    redacted form, not to reject it. Raises CanonicalJSONError if the pdu is not valid JSON at all.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict):
        return False
    expected_b64 = hashes.get("sha256")
    if not isinstance(expected_b64, str):
        return False
    try:
        expected = decode_base64(expected_b64)
    except ValueError:
        return False
    return hmac.compare_digest(expected, compute_content_hash(pdu))


def _redacted_content(event_type: Any, content: Any, room_version: RoomVersion) -> dict[str, Any]:
    """The kept content, sharing (not copying) nested values with `content`."""
    if not isinstance(content, dict):
        return {}
    if room_version.msc2176_redaction_rules:
        if event_type == "m.room.create":
            return dict(content)
        kept = _CONTENT_KEPT_MSC2176.get(event_type, ())
    else:
        kept = _CONTENT_KEPT_V10.get(event_type, ())
    new_content = {k: content[k] for k in kept if k in content}
    if event_type == "m.room.member" and room_version.msc2176_redaction_rules:
        # MSC3821 (room v11): keep only `signed` of third_party_invite. Like Synapse, an object
        # without `signed` is kept as {} (this matters: it changes the event id).
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict):
            new_content["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
    return new_content


def _redact_shallow(pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    kept_keys = _KEPT_KEYS if room_version.msc2176_redaction_rules else _KEPT_KEYS_PRE_MSC2176
    redacted = {k: v for k, v in pdu.items() if k in kept_keys}
    redacted["content"] = _redacted_content(pdu.get("type"), pdu.get("content"), room_version)
    return redacted


def _copy_json(value: Any) -> Any:
    """Deep copy of a JSON value (dicts and lists only); much faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def redact_pdu(pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The spec's redaction algorithm: strip every key not needed for auth and for verification.

    Returns a new dict that shares nothing mutable with `pdu`; `unsigned` is dropped (the spec's
    algorithm keeps only the listed keys; a server may re-add its own unsigned data afterwards).
    """
    return _copy_json(_redact_shallow(pdu, room_version))


def compute_reference_hash(pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    """SHA-256 of the canonical JSON of the redacted pdu without `signatures` and `unsigned`."""
    return _sha256_canonical_without(_redact_shallow(pdu, room_version), _UNSIGNED_AND_SIGNATURES)


def compute_event_id(pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """The event id for room versions 4+: "$" + URL-safe unpadded base64 of the reference hash."""
    return "$" + encode_base64(compute_reference_hash(pdu, room_version), urlsafe=True)


def hash_sign_and_compute_event_id(
    pdu: dict[str, Any], room_version: RoomVersion, server_name: str, key: SigningKey
) -> tuple[dict[str, Any], str]:
    """`hash_and_sign_event` plus the new event's id, computed without encoding the event again.

    The bytes signed (redacted pdu minus `signatures`/`unsigned`) are exactly the bytes the
    reference hash is taken over, so one canonical encoding serves both.
    """
    signed = dict(pdu)
    hashes = signed.get("hashes")
    hashes = dict(hashes) if isinstance(hashes, dict) else {}
    hashes["sha256"] = encode_base64(compute_content_hash(signed))
    signed["hashes"] = hashes

    # The content hash above validated every value; the redacted subset needs no second walk.
    message = _sign_into(signed, room_version, server_name, key, encode_canonical_json_trusted)
    event_id = "$" + encode_base64(hashlib.sha256(message).digest(), urlsafe=True)
    return signed, event_id


def _sign_into(signed: dict[str, Any], room_version: RoomVersion, server_name: str, key: SigningKey,
               encode: Callable[[Any], bytes]) -> bytes:
    """Add `server_name`'s signature over the redacted form to `signed` (a copy the caller
    owns; other servers' signatures are kept); returns the bytes signed."""
    to_sign = {k: v for k, v in _redact_shallow(signed, room_version).items() if k not in _UNSIGNED_AND_SIGNATURES}
    message = encode(to_sign)
    old_signatures = signed.get("signatures")
    signatures: dict[str, Any] = {}
    if isinstance(old_signatures, dict):
        signatures = {n: dict(s) if isinstance(s, dict) else s for n, s in old_signatures.items()}
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict):
        server_sigs = signatures[server_name] = {}
    server_sigs[key.key_id] = encode_base64(key.sign(message))
    signed["signatures"] = signatures
    return message


def hash_and_encode_new_event(pdu: dict[str, Any], room_version: RoomVersion) -> tuple[dict[str, Any], str, bytes]:
    """For an event this server builds: (hashed pdu, event id, its canonical JSON), unsigned.

    Why unsigned: the signature is only for other servers (clients never see it), the event id
    does not depend on it (it is the hash of what gets signed), and ed25519 signing was a quarter
    of the work per message a device sends. Events leave this server through `sign_if_ours`,
    which adds the very signature signing here would have made (ed25519 is deterministic); rooms
    that never federate never pay for it, and each stored row is ~130 bytes smaller.

    The content hash, the redacted form (hashed into the event id) and the stored form are three
    canonical encodings of nearly the same object. Each top-level value is encoded once here and
    the objects are assembled from those texts: the hot path of every message a device sends.
    `content` is validated like `encode_canonical_json` does (CanonicalJSONError); the other
    members must be built by the caller (strings, integers, lists of event ids). A pdu carrying
    hashes, signatures or unsigned data is not a new event: ValueError.
    """
    if "hashes" in pdu or "signatures" in pdu or "unsigned" in pdu:
        raise ValueError("a new event carries no hashes, signatures or unsigned data")
    parts = {k: (check_canonical_value(v) if k == "content" else encode_canonical_json_text(v))
             for k, v in pdu.items()}
    covered = canonical_utf8(encode_canonical_json_parts(parts))
    content_hash = encode_base64(hashlib.sha256(covered).digest())
    parts["hashes"] = '{"sha256":"' + content_hash + '"}'

    redacted = _redact_shallow(pdu, room_version)
    kept = {k: parts[k] for k in redacted if k in parts}
    kept["hashes"] = parts["hashes"]
    kept["content"] = encode_canonical_json_text(redacted["content"])
    message = canonical_utf8(encode_canonical_json_parts(kept))
    event_id = "$" + encode_base64(hashlib.sha256(message).digest(), urlsafe=True)

    canonical = canonical_utf8(encode_canonical_json_parts(parts))
    return {**pdu, "hashes": {"sha256": content_hash}}, event_id, canonical


def signature_block_bytes(server_name: str, key: SigningKey) -> int:
    """Bytes `sign_if_ours` adds to an unsigned event's canonical JSON (for size limits)."""
    block = encode_canonical_json({"signatures": {server_name: {key.key_id: "x" * 86}}})
    return len(block) - 2 + 1  # without the braces, with the comma before it


def sign_if_ours(pdu: dict[str, Any], room_version: RoomVersion, server_name: str,
                 key: SigningKey) -> dict[str, Any]:
    """The pdu as it leaves this server: an event sent by one of our users and stored unsigned
    (`hash_and_encode_new_event`) gets `server_name`'s signature over its redacted form; any
    other pdu is returned as is. Only signs: the content hash is kept, so a redacted copy of
    our event gets the same signature as the original."""
    sender = pdu.get("sender")
    if not isinstance(sender, str) or sender.partition(":")[2] != server_name:
        return pdu
    signatures = pdu.get("signatures")
    if isinstance(signatures, dict) and isinstance(signatures.get(server_name), dict) \
            and key.key_id in signatures[server_name]:
        return pdu
    signed = dict(pdu)
    _sign_into(signed, room_version, server_name, key, encode_canonical_json)
    return signed


def hash_and_sign_event(
    pdu: dict[str, Any], room_version: RoomVersion, server_name: str, key: SigningKey
) -> dict[str, Any]:
    """A new pdu with hashes.sha256 set and `server_name`'s signature over its redacted form.

    Existing hashes/signatures are kept (merged into); `pdu` itself is not modified.
    """
    return hash_sign_and_compute_event_id(pdu, room_version, server_name, key)[0]


def verify_event_signature(
    pdu: dict[str, Any], room_version: RoomVersion, server_name: str, key_id: str, verify_key_bytes: bytes
) -> None:
    """Check `server_name`'s signature on the event (made over its redacted form).

    Raises SignatureError. Does not check the content hash: see `check_content_hash`.
    """
    verify_json_signature(_redact_shallow(pdu, room_version), server_name, key_id, verify_key_bytes)
