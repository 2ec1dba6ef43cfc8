"""Cross-signing: the users' master, self-signing and user-signing keys and the signatures
uploaded on devices and master keys (matrix_core/cross_signing_rules.py checks them; the rows are
store/cross_signing.py's).

Interfaces for the device-keys code (keys/query, device lists):
- `keys_for_query(requester_user_id, user_ids)`: the `master_keys`, `self_signing_keys` and
  `user_signing_keys` (the requester's own only) parts of a /keys/query answer; master keys carry
  the owner's device signatures and the requester's own user-signing signature.
- `device_signatures(user_id, device_id)`: signatures uploaded for a device (by the owner's
  self-signing key), signer user -> {key id: signature}, to merge into that device's keys.
- `on_keys_changed`: callbacks `f(user_id)` run after a user's cross-signing keys or the
  signatures published with them changed (committed). The device-list code subscribes so the
  change reaches /sync's `device_lists.changed` of users sharing a room (and, later, the
  federation `m.signing_key_update` EDU).
- `device_keys`: set by the device-keys code: `await device_keys(user_id, device_id)` gives that
  device's uploaded DeviceKeys object (or None); /keys/signatures/upload needs it to check a
  signature of or by a device. Until it is set, device signatures answer M_NOT_FOUND failures.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from .. import cross_signing_rules as rules
from .. import errors
from ..canonical_json import encode_canonical_json
from ..store import Database
from ..store import cross_signing as rows

MAX_SIGNATURE_TARGETS = 1000  # keys in one /keys/signatures/upload


async def _no_device_keys(user_id: str, device_id: str) -> dict[str, Any] | None:
    return None


class CrossSigning:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.on_keys_changed: list[Callable[[str], None]] = []
        self.device_keys: Callable[[str, str], Awaitable[dict[str, Any] | None]] = _no_device_keys

    def _changed(self, user_id: str) -> None:
        for callback in list(self.on_keys_changed):
            callback(user_id)

    async def keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        """The user's stored keys: usage -> key object."""
        found = (await rows.keys_of(self.db, [user_id])).get(user_id, {})
        return {usage: json.loads(text) for usage, text in found.items()}

    # -- POST /keys/device_signing/upload ---------------------------------------------------------

    async def check_upload(self, user_id: str, body: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], bool]:
        """The keys of an upload, checked (M_BAD_JSON, M_INVALID_PARAM, M_INVALID_SIGNATURE), and
        whether UIA is needed: MSC3967, not when the user has no master key yet, nor when the
        request holds no new key (a client's retry)."""
        uploaded: dict[str, dict[str, Any]] = {}
        for usage, field in rules.FIELDS.items():
            if body.get(field) is not None:
                uploaded[usage] = rules.check_key(body[field], user_id, usage, field)
        stored = await self.keys(user_id)
        master = uploaded.get(rules.MASTER) or stored.get(rules.MASTER)
        for usage in (rules.SELF_SIGNING, rules.USER_SIGNING):
            if usage in uploaded:
                if master is None:
                    raise errors.invalid_param(f"'{rules.FIELDS[usage]}' needs a master key: upload one with it")
                rules.check_signed_by_master(uploaded[usage], master, rules.FIELDS[usage])
        if rules.MASTER not in stored:
            return uploaded, False
        new = {usage: key for usage, key in uploaded.items() if not rules.same_key(key, stored.get(usage))}
        return new, bool(new)

    async def store_keys(self, user_id: str, keys: dict[str, dict[str, Any]]) -> None:
        if not keys:
            return
        texts = {usage: encode_canonical_json(key).decode("utf-8") for usage, key in keys.items()}
        await self.db.write(lambda conn: rows.put_keys(conn, user_id, texts))
        self._changed(user_id)

    # -- POST /keys/signatures/upload --------------------------------------------------------------

    async def upload_signatures(self, user_id: str, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Check and store each signed object's new signatures; what fails goes into `failures`
        (user -> key id -> {errcode, error}), the rest is stored. A body not of the spec's shape
        is an M_BAD_JSON error with nothing stored."""
        if sum(len(v) if isinstance(v, dict) else 1 for v in body.values()) > MAX_SIGNATURE_TARGETS:
            raise errors.bad_json(f"At most {MAX_SIGNATURE_TARGETS} keys at once")
        for target_user, by_key in body.items():
            if not isinstance(by_key, dict):
                raise errors.bad_json(f"'{target_user}' must map key ids to signed objects")
        mine = await self.keys(user_id)
        failures: dict[str, dict[str, Any]] = {}
        to_store: list[rows.SignatureRow] = []
        changed: set[str] = set()
        for target_user, by_key in body.items():
            for target_key, signed in by_key.items():
                try:
                    found = await self._signature_rows(user_id, mine, target_user, target_key, signed)
                except errors.MatrixError as err:
                    failures.setdefault(target_user, {})[target_key] = rules.failure(err.errcode, err.error)
                    continue
                to_store.extend(found)
                changed.add(target_user if target_user == user_id else user_id)
        if to_store:
            await self.db.write(lambda conn: rows.put_signatures(conn, to_store))
            for changed_user in sorted(changed):
                self._changed(changed_user)
        return failures

    async def _signature_rows(self, user_id: str, mine: dict[str, dict[str, Any]], target_user: str,
                              target_key: str, signed: Any) -> list[rows.SignatureRow]:
        """The rows to store for one signed object, or a MatrixError for its failure entry."""
        if not isinstance(signed, dict):
            raise errors.bad_json("The signed object must be a JSON object")
        new = rules.new_signatures(signed, user_id)
        if not new:
            raise rules.invalid_signature(f"No signature by {user_id}")
        master = mine.get(rules.MASTER)
        if target_user == user_id and master is not None and target_key == rules.public_key(master):
            # my master key, signed by my devices
            if not rules.same_key(signed, master):
                raise errors.invalid_param("The signed object is not the stored master key")
            out = []
            for kid, sig in new.items():
                device_id = kid.partition(":")[2]
                device = await self.device_keys(user_id, device_id)
                device_key = None if device is None else (device.get("keys") or {}).get(f"ed25519:{device_id}")
                if isinstance(device_key, str) and rules.verify(signed, user_id, kid, device_key):
                    out.append((user_id, rules.key_id(master), user_id, kid, sig))
            if not out:
                raise rules.invalid_signature("No signature by one of the user's devices verifies")
            return out
        if target_user == user_id:
            # one of my devices, signed by my self-signing key
            self_signing = mine.get(rules.SELF_SIGNING)
            if self_signing is None:
                raise errors.MatrixError(400, "M_MISSING_PARAM", "No self-signing key has been uploaded")
            device = await self.device_keys(user_id, target_key)
            if device is None:
                raise errors.not_found(f"Unknown device {target_key!r}")
            if not rules.same_key(signed, device):
                raise errors.invalid_param("The signed object is not the device's stored keys")
            kid = rules.key_id(self_signing)
            if kid not in new or not rules.verify(signed, user_id, kid, rules.public_key(self_signing)):
                raise rules.invalid_signature("The self-signing key's signature does not verify")
            return [(user_id, target_key, user_id, kid, new[kid])]
        # another user's master key, signed by my user-signing key
        user_signing = mine.get(rules.USER_SIGNING)
        if user_signing is None:
            raise errors.MatrixError(400, "M_MISSING_PARAM", "No user-signing key has been uploaded")
        theirs = (await self.keys(target_user)).get(rules.MASTER)
        if theirs is None or rules.public_key(theirs) != target_key:
            raise errors.not_found(f"{target_key!r} is not {target_user}'s master key")
        if not rules.same_key(signed, theirs):
            raise errors.invalid_param("The signed object is not the stored master key")
        kid = rules.key_id(user_signing)
        if kid not in new or not rules.verify(signed, user_id, kid, rules.public_key(user_signing)):
            raise rules.invalid_signature("The user-signing key's signature does not verify")
        return [(target_user, rules.key_id(theirs), user_id, kid, new[kid])]

    # -- what /keys/query shows --------------------------------------------------------------------

    async def keys_for_query(self, requester_user_id: str, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = await rows.keys_of(self.db, list(dict.fromkeys(user_ids)))
        out: dict[str, dict[str, Any]] = {"master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
        for user, by_usage in found.items():
            if rules.MASTER in by_usage:
                master = json.loads(by_usage[rules.MASTER])
                extra: dict[str, dict[str, str]] = {}
                # the owner's device signatures, and the requester's user-signing signature only:
                # who trusts whom is the signer's own business.
                for signer, kid, sig in await rows.signatures_on(self.db, user, rules.key_id(master)):
                    if signer in (user, requester_user_id):
                        extra.setdefault(signer, {})[kid] = sig
                out["master_keys"][user] = rules.merge_signatures(master, extra)
            if rules.SELF_SIGNING in by_usage:
                out["self_signing_keys"][user] = json.loads(by_usage[rules.SELF_SIGNING])
            if user == requester_user_id and rules.USER_SIGNING in by_usage:
                out["user_signing_keys"][user] = json.loads(by_usage[rules.USER_SIGNING])
        return out

    async def device_signatures(self, user_id: str, device_id: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for signer, kid, sig in await rows.signatures_on(self.db, user_id, device_id):
            out.setdefault(signer, {})[kid] = sig
        return out
