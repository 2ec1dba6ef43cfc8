"""End-to-end encryption, server side: the shape checks of uploaded keys and of key requests. Pure.

The hub never sees plaintext and cannot verify a device's self-signature without the libolm
canonicalisation of every client (and a signature it cannot check proves nothing to it anyway:
the receiving device checks). So it checks SHAPE: key ids `<algorithm>:<id>`, unpadded base64
strings, signatures `{user_id: {"<algorithm>:<key id>": string}}`, the device keys naming the
uploading user and device. Anything else is M_BAD_JSON / M_INVALID_PARAM before anything is
stored. Limits follow Synapse where it has one.
"""
from __future__ import annotations

import re
from typing import Any

from . import errors
from .identifiers import is_valid_user_id

# A key id "<algorithm>:<key id>"; both parts are printable, short, without spaces.
_KEY_ID = re.compile(r"[A-Za-z0-9._\-]{1,100}:[A-Za-z0-9._\-+/=]{1,200}\Z")
_ALGORITHM = re.compile(r"[A-Za-z0-9._\-]{1,100}\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]{1,1000}={0,2}\Z")

MAX_KEYS_PER_UPLOAD = 1000   # one-time keys in one /keys/upload (clients upload ~50 at a time)
MAX_ONE_TIME_KEYS = 10000    # one-time keys kept per device; more is a runaway client
MAX_QUERY_USERS = 1000       # users (or devices) in one /keys/query or /keys/claim
MAX_TO_DEVICE_BYTES = 65536  # one to-device message's JSON (Synapse's MAX_EDU_SIZE): M_TOO_LARGE
MAX_TXN_ID = 255

FALLBACK_KEYS_FIELDS = ("fallback_keys", "org.matrix.msc2732.fallback_keys")


def _require_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.bad_json(f"'{name}' must be an object")
    return value


def check_signatures(value: Any, name: str = "signatures") -> dict[str, dict[str, str]]:
    """`{user_id: {"<alg>:<key id>": "<base64>"}}`."""
    signatures = _require_object(value, name)
    for user_id, by_key in signatures.items():
        if not is_valid_user_id(user_id):
            raise errors.bad_json(f"'{name}' names an invalid user id")
        for key_id, signature in _require_object(by_key, f"{name}.{user_id[:60]}").items():
            if not _KEY_ID.match(key_id):
                raise errors.bad_json(f"'{name}' has an invalid key id {key_id[:60]!r}")
            if not isinstance(signature, str) or not _BASE64.match(signature):
                raise errors.bad_json(f"'{name}' has a signature that is not base64")
    return signatures


def check_device_keys(value: Any, user_id: str, device_id: str) -> dict[str, Any]:
    """The `device_keys` of an upload: they must be the uploader's own (M_INVALID_PARAM if not)."""
    keys = _require_object(value, "device_keys")
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        raise errors.invalid_param("device_keys must name the uploading user and device")
    algorithms = keys.get("algorithms")
    if (not isinstance(algorithms, list) or not algorithms
            or not all(isinstance(a, str) and _ALGORITHM.match(a) for a in algorithms)):
        raise errors.bad_json("device_keys.algorithms must be a non-empty list of algorithm names")
    identity = _require_object(keys.get("keys"), "device_keys.keys")
    if not identity:
        raise errors.bad_json("device_keys.keys must not be empty")
    for key_id, key in identity.items():
        if not _KEY_ID.match(key_id) or key_id.split(":", 1)[1] != device_id:
            raise errors.bad_json(f"device_keys.keys has an invalid key id {key_id[:60]!r}")
        if not isinstance(key, str) or not _BASE64.match(key):
            raise errors.bad_json("device_keys.keys must map key ids to base64 strings")
    signatures = check_signatures(keys.get("signatures"), "device_keys.signatures")
    if user_id not in signatures or not signatures[user_id]:
        raise errors.bad_json("device_keys must be signed by the uploading device")
    if "unsigned" in keys:
        _require_object(keys["unsigned"], "device_keys.unsigned")
    return keys


def check_one_time_keys(value: Any, name: str = "one_time_keys") -> dict[str, Any]:
    """`{"<alg>:<key id>": "<base64>" | {"key": "<base64>", "signatures": {...}, ...}}`."""
    keys = _require_object(value, name)
    if len(keys) > MAX_KEYS_PER_UPLOAD:
        raise errors.too_large(f"At most {MAX_KEYS_PER_UPLOAD} {name} in one upload")
    for key_id, key in keys.items():
        if not _KEY_ID.match(key_id):
            raise errors.bad_json(f"{name} has an invalid key id {key_id[:60]!r}")
        if isinstance(key, str):
            if not _BASE64.match(key):
                raise errors.bad_json(f"{name} has a key that is not base64")
            continue
        obj = _require_object(key, f"{name}.{key_id[:60]}")
        if not isinstance(obj.get("key"), str) or not _BASE64.match(obj["key"]):
            raise errors.bad_json(f"{name}.{key_id[:60]}.key must be a base64 string")
        if "signatures" in obj:
            check_signatures(obj["signatures"], f"{name}.{key_id[:60]}.signatures")
        if "fallback" in obj and not isinstance(obj["fallback"], bool):
            raise errors.bad_json(f"{name}.{key_id[:60]}.fallback must be a boolean")
    return keys


def algorithm_of(key_id: str) -> str:
    return key_id.split(":", 1)[0]


def fallback_keys_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The upload's fallback keys (the stable name or MSC2732's), checked; at most one per
    algorithm (a new one replaces the old)."""
    for name in FALLBACK_KEYS_FIELDS:
        if body.get(name) is not None:
            keys = check_one_time_keys(body[name], name)
            algorithms = [algorithm_of(k) for k in keys]
            if len(set(algorithms)) != len(algorithms):
                raise errors.invalid_param(f"{name}: at most one fallback key per algorithm")
            return keys
    return None


def check_query(body: dict[str, Any]) -> dict[str, list[str]]:
    """/keys/query's `device_keys`: `{user_id: [device_id, ...]}` ([] for all devices)."""
    wanted = _require_object(body.get("device_keys"), "device_keys")
    if len(wanted) > MAX_QUERY_USERS:
        raise errors.too_large(f"At most {MAX_QUERY_USERS} users in one query")
    for user_id, devices in wanted.items():
        if not is_valid_user_id(user_id):
            raise errors.invalid_param(f"Invalid user id {user_id[:60]!r}")
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise errors.bad_json("device_keys must map user ids to lists of device ids")
    return wanted


def check_claim(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    """/keys/claim's `one_time_keys`: `{user_id: {device_id: algorithm}}`."""
    wanted = _require_object(body.get("one_time_keys"), "one_time_keys")
    total = 0
    for user_id, devices in wanted.items():
        if not is_valid_user_id(user_id):
            raise errors.invalid_param(f"Invalid user id {user_id[:60]!r}")
        for device_id, algorithm in _require_object(devices, "one_time_keys.<user>").items():
            if not isinstance(algorithm, str) or not _ALGORITHM.match(algorithm):
                raise errors.bad_json("one_time_keys must map devices to an algorithm name")
            total += 1
    if total > MAX_QUERY_USERS:
        raise errors.too_large(f"At most {MAX_QUERY_USERS} devices in one claim")
    return wanted


def check_to_device(body: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """/sendToDevice's `messages`: `{user_id: {device_id or "*": content object}}`."""
    messages = _require_object(body.get("messages"), "messages")
    for user_id, devices in messages.items():
        if not is_valid_user_id(user_id):
            raise errors.invalid_param(f"Invalid user id {user_id[:60]!r}")
        for device_id, content in _require_object(devices, "messages.<user>").items():
            if not device_id:
                raise errors.invalid_param("Empty device id")
            _require_object(content, "messages.<user>.<device>")
    return messages
