"""Cross-signing keys and the signatures on them: shape and signature checks, without I/O.

Why the server checks signatures at all: keys/query hands these keys to every other user, who
trust a device because a chain of signatures leads to it (master key -> self-signing key ->
device; my user-signing key -> your master key). A server that stored a self-signing key its
master key never signed, or a "signature" that does not verify, would publish garbage that
clients then refuse, or worse, partly trust. The spec has the server verify: the self-signing and
user-signing keys against the master key at upload (M_INVALID_SIGNATURE), and each signature
uploaded through /keys/signatures/upload against its signing key (a per-key `failures` entry).

A cross-signing key (the spec's CrossSigningKey) is
`{"user_id", "usage": [...], "keys": {"ed25519:<unpadded base64 public key>": "<same>"}, "signatures"?}`
with exactly one key; its key id's version is the public key itself.
"""
from __future__ import annotations

from typing import Any

from . import errors
from .signing import SignatureError, decode_base64, verify_json_signature

MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"
#: The upload body's field for each usage.
FIELDS: dict[str, str] = {MASTER: "master_key", SELF_SIGNING: "self_signing_key", USER_SIGNING: "user_signing_key"}
MAX_SIGNATURES = 100  # per key object: more is no client's doing


def invalid_signature(error: str) -> errors.MatrixError:
    return errors.MatrixError(400, "M_INVALID_SIGNATURE", error)


def public_key(key: dict[str, Any]) -> str:
    """The key's one ed25519 public key (unpadded base64); the key must have passed check_key."""
    return next(iter(key["keys"].values()))


def key_id(key: dict[str, Any]) -> str:
    """'ed25519:<public key>': how signatures made with this key name it."""
    return next(iter(key["keys"]))


def _check_signatures_shape(signatures: Any, what: str) -> None:
    if signatures is None:
        return
    if not isinstance(signatures, dict):
        raise errors.bad_json(f"'{what}.signatures' must be an object")
    count = 0
    for user, sigs in signatures.items():
        if not isinstance(sigs, dict):
            raise errors.bad_json(f"'{what}.signatures.{user}' must be an object")
        for kid, sig in sigs.items():
            count += 1
            if not isinstance(kid, str) or not isinstance(sig, str):
                raise errors.bad_json(f"'{what}.signatures.{user}' must map key ids to strings")
    if count > MAX_SIGNATURES:
        raise errors.bad_json(f"'{what}' has too many signatures")


def check_key(key: Any, user_id: str, usage: str, what: str) -> dict[str, Any]:
    """A cross-signing key of `usage` for `user_id`, checked for shape; M_BAD_JSON when it is not
    an object of the spec's shape, M_INVALID_PARAM when it names another user or usage, or its
    key id and public key disagree."""
    if not isinstance(key, dict):
        raise errors.bad_json(f"'{what}' must be an object")
    if key.get("user_id") != user_id:
        raise errors.invalid_param(f"'{what}.user_id' must be {user_id}")
    usage_list = key.get("usage")
    if not isinstance(usage_list, list) or not all(isinstance(u, str) for u in usage_list):
        raise errors.bad_json(f"'{what}.usage' must be a list of strings")
    if usage not in usage_list:
        raise errors.invalid_param(f"'{what}.usage' must contain {usage!r}")
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise errors.invalid_param(f"'{what}.keys' must hold exactly one key")
    (kid, value), = keys.items()
    if not isinstance(value, str) or not isinstance(kid, str):
        raise errors.bad_json(f"'{what}.keys' must map a key id to a string")
    algorithm, _, version = kid.partition(":")
    if algorithm != "ed25519" or version != value:
        raise errors.invalid_param(f"'{what}.keys' must be {{\"ed25519:<public key>\": \"<public key>\"}}")
    try:
        raw = decode_base64(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise errors.invalid_param(f"'{what}' is not an ed25519 public key")
    _check_signatures_shape(key.get("signatures"), what)
    return key


def verify(obj: dict[str, Any], signer_user: str, signer_key_id: str, signer_public_key: str) -> bool:
    """Whether `obj` carries a valid signature by `signer_user`'s key `signer_key_id`."""
    try:
        verify_json_signature(obj, signer_user, signer_key_id, decode_base64(signer_public_key))
    except (SignatureError, ValueError):
        return False
    return True


def check_signed_by_master(key: dict[str, Any], master: dict[str, Any], what: str) -> None:
    """The self-signing and user-signing keys must carry the master key's signature
    (M_INVALID_SIGNATURE otherwise): the chain of trust starts there."""
    if not verify(key, master["user_id"], key_id(master), public_key(master)):
        raise invalid_signature(f"'{what}' is not signed by the master key")


def without_signatures(obj: dict[str, Any]) -> dict[str, Any]:
    """What a signature covers: the object without `signatures` and `unsigned`."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def same_key(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two uploads are the same key (signatures aside): MSC3967's re-upload without UIA."""
    return a is not None and b is not None and without_signatures(a) == without_signatures(b)


def new_signatures(uploaded: dict[str, Any], signer_user: str) -> dict[str, str]:
    """`signer_user`'s signatures on an uploaded object: key id -> signature (checked shape)."""
    sigs = uploaded.get("signatures")
    if not isinstance(sigs, dict):
        return {}
    mine = sigs.get(signer_user)
    if not isinstance(mine, dict):
        return {}
    return {kid: sig for kid, sig in mine.items() if isinstance(kid, str) and isinstance(sig, str)}


def failure(errcode: str, error: str) -> dict[str, str]:
    """One entry of /keys/signatures/upload's `failures`."""
    return {"errcode": errcode, "error": error}


def merge_signatures(obj: dict[str, Any], extra: dict[str, dict[str, str]]) -> dict[str, Any]:
    """A copy of `obj` with `extra` (signer user -> key id -> signature) added to its signatures."""
    if not extra:
        return obj
    out = dict(obj)
    sigs: dict[str, dict[str, str]] = {u: dict(s) for u, s in (obj.get("signatures") or {}).items()}
    for user, by_key in extra.items():
        sigs.setdefault(user, {}).update(by_key)
    out["signatures"] = sigs
    return out
