"""Cross-signing keys made the way a client makes them (PyNaCl, canonical JSON): for the
cross-signing and key tests."""
from __future__ import annotations

import base64
import json
from typing import Any

import nacl.signing


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


class Key:
    """An ed25519 cross-signing key pair, as a client makes it."""

    def __init__(self) -> None:
        self.sk = nacl.signing.SigningKey.generate()
        self.pub = b64(bytes(self.sk.verify_key))
        self.kid = f"ed25519:{self.pub}"

    def public(self, user_id: str, usage: str) -> dict[str, Any]:
        return {"user_id": user_id, "usage": [usage], "keys": {self.kid: self.pub}}

    def sign(self, obj: dict[str, Any], user_id: str, kid: str | None = None) -> dict[str, Any]:
        bare = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        sig = b64(self.sk.sign(canonical(bare)).signature)
        out = dict(obj)
        out["signatures"] = {**obj.get("signatures", {}), user_id: {
            **obj.get("signatures", {}).get(user_id, {}), kid or self.kid: sig}}
        return out


def key_set(user_id: str) -> tuple[Key, Key, Key, dict[str, Any]]:
    master, ssk, usk = Key(), Key(), Key()
    body = {
        "master_key": master.public(user_id, "master"),
        "self_signing_key": master.sign(ssk.public(user_id, "self_signing"), user_id),
        "user_signing_key": master.sign(usk.public(user_id, "user_signing"), user_id),
    }
    return master, ssk, usk, body
