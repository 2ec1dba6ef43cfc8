"""Ed25519 signing of JSON objects as the Matrix spec defines it ("Signing JSON" appendix).

A server signs the canonical JSON of an object without `signatures` and `unsigned`, and files the
signature under signatures[server_name][key_id]; anyone holding the server's verify key can check
it. Keys are stored in Synapse's one-line file format so operators can move keys between servers.
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .canonical_json import CanonicalJSONError, encode_canonical_json

__all__ = [
    "SignatureError",
    "SigningKey",
    "decode_base64",
    "encode_base64",
    "generate_signing_key",
    "parse_signing_key",
    "serialize_signing_key",
    "sign_json",
    "signing_key_from_seed",
    "verify_json_signature",
]

ED25519 = "ed25519"
# The spec: a key id is "<algorithm>:<version>", the version limited to [a-zA-Z0-9_].
_KEY_VERSION_RE = re.compile(r"[A-Za-z0-9_]+")
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


class SignatureError(ValueError):
    """A signature is missing, malformed, made with an unknown algorithm, or does not verify."""


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    """Unpadded base64, the spec's encoding for every binary value (keys, signatures, hashes).

    `urlsafe` uses '-' and '_' (as event ids in room versions 4+ do).
    """
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(s: str | bytes) -> bytes:
    """Decode base64 with or without padding, standard or URL-safe alphabet (the spec says be lenient).

    Raises ValueError on characters outside both alphabets or an impossible length.
    """
    raw = s.encode("ascii", "strict") if isinstance(s, str) else bytes(s)
    raw = raw.rstrip(b"=").translate(_URLSAFE_TO_STD)
    if len(raw) % 4 == 1:
        raise ValueError("invalid base64 length")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"invalid base64: {e}") from None


def _check_key_id(key_id: str) -> str:
    algorithm, sep, version = key_id.partition(":")
    if algorithm != ED25519 or not sep:
        raise ValueError(f"unsupported signing key id {key_id!r}: only ed25519 keys are supported")
    if not _KEY_VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid key version in {key_id!r}: must match [a-zA-Z0-9_]+")
    return version


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of this server's ed25519 signing keys, named by its key id (e.g. "ed25519:a_AbCd")."""

    key_id: str
    # repr=False: never print the private key into logs.
    signing_key: nacl.signing.SigningKey = field(repr=False)
    # libsodium's 64-byte secret key (seed + public key), for signing without PyNaCl's wrapper
    # objects: every event is signed, so their cost shows.
    _secret: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)
        _, secret = nacl.bindings.crypto_sign_seed_keypair(bytes(self.signing_key))
        object.__setattr__(self, "_secret", secret)

    @property
    def version(self) -> str:
        """The part of the key id after "ed25519:"."""
        return self.key_id.partition(":")[2]

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (what the key file stores)."""
        return bytes(self.signing_key)

    @property
    def verify_key_bytes(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def verify_key_base64(self) -> str:
        """The public key as published in /_matrix/key/v2/server."""
        return encode_base64(self.verify_key_bytes)

    def sign(self, message: bytes) -> bytes:
        """The detached 64-byte ed25519 signature of `message`."""
        return nacl.bindings.crypto_sign(message, self._secret)[:64]


def signing_key_from_seed(seed_bytes: bytes, key_id: str) -> SigningKey:
    """Rebuild a key from its 32-byte seed (deterministic: the same seed gives the same key)."""
    if len(seed_bytes) != 32:
        raise ValueError(f"an ed25519 seed is 32 bytes, got {len(seed_bytes)}")
    return SigningKey(key_id, nacl.signing.SigningKey(bytes(seed_bytes)))


def generate_signing_key(version: str | None = None) -> SigningKey:
    """A fresh random key; the default version "a_XXXX" follows Synapse's convention."""
    if version is None:
        version = "a_" + "".join(secrets.choice(string.ascii_letters) for _ in range(4))
    return SigningKey(f"{ED25519}:{version}", nacl.signing.SigningKey.generate())


def serialize_signing_key(key: SigningKey) -> str:
    """Synapse's signing key file line: "ed25519 <version> <unpadded base64 seed>" (no newline)."""
    return f"{ED25519} {key.version} {encode_base64(key.seed)}"


def parse_signing_key(text: str) -> SigningKey:
    """Read a key written by `serialize_signing_key` (or by Synapse) from a one-key file's text."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected exactly one signing key line, got {len(lines)}")
    parts = lines[0].split()
    if len(parts) != 3:
        raise ValueError("a signing key line is '<algorithm> <version> <base64 seed>'")
    algorithm, version, seed_b64 = parts
    if algorithm != ED25519:
        raise ValueError(f"unsupported signing key algorithm {algorithm!r}")
    return signing_key_from_seed(decode_base64(seed_b64), f"{algorithm}:{version}")


def sign_json(obj: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """Return a copy of `obj` with `server_name`'s signature added under signatures[server][key_id].

    `signatures` and `unsigned` are excluded from what is signed (so others can add theirs later);
    signatures already present are kept. The input is not modified.
    """
    to_sign = dict(obj)
    old_signatures = to_sign.pop("signatures", None)
    unsigned = to_sign.pop("unsigned", None)

    signature = encode_base64(key.sign(encode_canonical_json(to_sign)))

    signatures: dict[str, Any] = {}
    if isinstance(old_signatures, dict):
        signatures = {name: dict(sigs) if isinstance(sigs, dict) else sigs for name, sigs in old_signatures.items()}
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict):
        server_sigs = signatures[server_name] = {}
    server_sigs[key.key_id] = signature

    to_sign["signatures"] = signatures
    if unsigned is not None:
        to_sign["unsigned"] = unsigned
    return to_sign


def verify_json_signature(
    obj: dict[str, Any], server_name: str, key_id: str, verify_key_bytes: bytes
) -> None:
    """Check `server_name`'s signature with `key_id` on `obj`; raise SignatureError if it does not hold.

    Follows the spec's "Checking for a Signature" steps. Returning None means the signature is valid.
    """
    if not key_id.startswith(ED25519 + ":"):
        raise SignatureError(f"unsupported signature algorithm in key id {key_id!r}")
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("object has no signatures")
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict):
        raise SignatureError(f"object is not signed by {server_name}")
    signature_b64 = server_sigs.get(key_id)
    if not isinstance(signature_b64, str):
        raise SignatureError(f"object has no signature from {server_name} with {key_id}")
    try:
        signature = decode_base64(signature_b64)
    except ValueError:
        raise SignatureError(f"signature from {server_name} with {key_id} is not valid base64") from None
    try:
        verify_key = nacl.signing.VerifyKey(bytes(verify_key_bytes))
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError, TypeError) as e:
        raise SignatureError(f"invalid verify key for {key_id}: {e}") from None

    unsigned_obj = {k: v for k, v in obj.items() if k != "signatures" and k != "unsigned"}
    try:
        message = encode_canonical_json(unsigned_obj)
    except CanonicalJSONError as e:
        raise SignatureError(f"object cannot have a valid signature: {e}") from None
    try:
        verify_key.verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as e:
        raise SignatureError(f"signature from {server_name} with {key_id} does not verify: {e}") from None
