"""Server key documents (/_matrix/key/v2/server) and the rules for trusting them. Pure.

Time is always passed in (milliseconds since the epoch): nothing here reads a clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..signing import SignatureError, SigningKey, decode_base64, sign_json, verify_json_signature

__all__ = [
    "DAY_MS",
    "MAX_KEY_VALIDITY_MS",
    "KeyDocumentError",
    "ServerKey",
    "check_key_document",
    "key_valid_at",
    "notary_sign",
    "own_key_document",
    "parse_key_query",
]

DAY_MS = 24 * 3600 * 1000
# The spec: use the lesser of valid_until_ts and 7 days into the future (from when we fetched it),
# so that a key published as valid for years can still be revoked.
MAX_KEY_VALIDITY_MS = 7 * DAY_MS
ED25519_PREFIX = "ed25519:"


class KeyDocumentError(ValueError):
    """A key document is malformed, is for the wrong server, or is not properly signed."""


@dataclass(frozen=True, slots=True)
class ServerKey:
    """One verify key of a server, with the window in which it may be trusted."""

    server_name: str
    key_id: str
    key: bytes
    # For a current key: the effective valid_until_ts (already capped). For an old key: None.
    valid_until_ts: int | None
    # For an old key: when it stopped being used. For a current key: None.
    expired_ts: int | None = None


def key_valid_at(key: ServerKey, ts: int) -> bool:
    """May `key` be used to check a signature made (or a request received) at time `ts`?

    A current key is good up to and including its valid_until_ts; an old key only for what was
    signed before it expired.
    """
    if key.expired_ts is not None:
        return ts < key.expired_ts
    return key.valid_until_ts is not None and ts <= key.valid_until_ts


def own_key_document(
    server_name: str, signing_key: SigningKey, now_ms: int, validity_ms: int = DAY_MS,
    old_verify_keys: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Our /_matrix/key/v2/server response, signed with our key."""
    doc = {
        "server_name": server_name,
        "valid_until_ts": now_ms + validity_ms,
        "verify_keys": {signing_key.key_id: {"key": signing_key.verify_key_base64}},
        "old_verify_keys": dict(old_verify_keys or {}),
    }
    return sign_json(doc, server_name, signing_key)


def _decode_key(server_name: str, key_id: str, entry: Any) -> bytes:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise KeyDocumentError(f"{server_name}: key {key_id} has no 'key' string")
    try:
        raw = decode_base64(entry["key"])
    except ValueError:
        raise KeyDocumentError(f"{server_name}: key {key_id} is not base64") from None
    if len(raw) != 32:
        raise KeyDocumentError(f"{server_name}: key {key_id} is not a 32-byte ed25519 key")
    return raw


def check_key_document(doc: Any, server_name: str, fetched_ms: int) -> dict[str, ServerKey]:
    """Validate a key document for `server_name` and return its keys by key id.

    Checks: it is an object for that server, `valid_until_ts` is an integer, keys are well formed,
    and it carries at least one signature by one of its own current keys, every such signature
    verifying (the self-signature). Non-ed25519 keys are skipped. Current keys get the effective
    validity min(valid_until_ts, fetched_ms + 7 days).
    """
    if not isinstance(doc, dict):
        raise KeyDocumentError("key document is not a JSON object")
    if doc.get("server_name") != server_name:
        raise KeyDocumentError(f"key document is for {doc.get('server_name')!r}, not {server_name!r}")
    valid_until = doc.get("valid_until_ts")
    if type(valid_until) is not int:
        raise KeyDocumentError(f"{server_name}: valid_until_ts is not an integer")
    verify_keys = doc.get("verify_keys")
    if not isinstance(verify_keys, dict):
        raise KeyDocumentError(f"{server_name}: verify_keys is not an object")
    old_keys = doc.get("old_verify_keys", {})
    if not isinstance(old_keys, dict):
        raise KeyDocumentError(f"{server_name}: old_verify_keys is not an object")

    effective_until = min(valid_until, fetched_ms + MAX_KEY_VALIDITY_MS)
    keys: dict[str, ServerKey] = {}
    for key_id, entry in verify_keys.items():
        if not key_id.startswith(ED25519_PREFIX):
            continue
        keys[key_id] = ServerKey(server_name, key_id, _decode_key(server_name, key_id, entry), effective_until)

    signatures = doc.get("signatures")
    own_sigs = signatures.get(server_name) if isinstance(signatures, dict) else None
    if not isinstance(own_sigs, dict):
        raise KeyDocumentError(f"{server_name}: key document is not signed by {server_name}")
    verified = False
    for key_id in own_sigs:
        key = keys.get(key_id)
        if key is None:
            continue  # a signature by a key it does not publish proves nothing
        try:
            verify_json_signature(doc, server_name, key_id, key.key)
        except SignatureError as exc:
            raise KeyDocumentError(f"{server_name}: self-signature does not verify: {exc}") from None
        verified = True
    if not verified:
        raise KeyDocumentError(f"{server_name}: key document is not signed by any of its own keys")

    for key_id, entry in old_keys.items():
        if not key_id.startswith(ED25519_PREFIX) or key_id in keys:
            continue
        expired = entry.get("expired_ts") if isinstance(entry, dict) else None
        if type(expired) is not int:
            raise KeyDocumentError(f"{server_name}: old key {key_id} has no integer expired_ts")
        keys[key_id] = ServerKey(server_name, key_id, _decode_key(server_name, key_id, entry), None, expired)
    return keys


def check_notary_signature(doc: dict[str, Any], notary: str, notary_keys: dict[str, bytes]) -> None:
    """A document relayed by a notary must carry a verifying signature by one of its keys."""
    sigs = doc.get("signatures", {}).get(notary) if isinstance(doc.get("signatures"), dict) else None
    if not isinstance(sigs, dict):
        raise KeyDocumentError(f"document is not signed by the notary {notary}")
    for key_id in sigs:
        key = notary_keys.get(key_id)
        if key is None:
            continue
        try:
            verify_json_signature(doc, notary, key_id, key)
        except SignatureError as exc:
            raise KeyDocumentError(f"notary signature does not verify: {exc}") from None
        return
    raise KeyDocumentError(f"document is not signed by a known key of the notary {notary}")


def notary_sign(doc: dict[str, Any], our_server_name: str, signing_key: SigningKey) -> dict[str, Any]:
    """A cached document as we serve it as a notary: the original plus our signature."""
    return sign_json(doc, our_server_name, signing_key)


def parse_key_query(body: Any) -> dict[str, dict[str, int]]:
    """POST /_matrix/key/v2/query body -> {server_name: {key_id: minimum_valid_until_ts}}.

    An empty key map asks for every key of that server (key id "" stands for that, with the
    criteria of the request as a whole not given: minimum 0). Raises KeyDocumentError.
    """
    if not isinstance(body, dict) or not isinstance(body.get("server_keys"), dict):
        raise KeyDocumentError("body must be an object with a server_keys object")
    out: dict[str, dict[str, int]] = {}
    for server, wanted in body["server_keys"].items():
        if not isinstance(wanted, dict):
            raise KeyDocumentError(f"server_keys[{server!r}] must be an object")
        criteria: dict[str, int] = {}
        for key_id, crit in wanted.items():
            minimum = crit.get("minimum_valid_until_ts", 0) if isinstance(crit, dict) else None
            if type(minimum) is not int:
                raise KeyDocumentError(f"minimum_valid_until_ts for {server} {key_id} must be an integer")
            criteria[key_id] = minimum
        out[server] = criteria
    return out
