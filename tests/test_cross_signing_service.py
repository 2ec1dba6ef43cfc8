"""hs.cross_signing in process, with device keys standing in for /keys/upload's (the device-keys
code sets `device_keys`): signatures of devices by the self-signing key, of the master key by a
device, of another user's master key by the user-signing key; what keys_for_query and
device_signatures give keys/query; on_keys_changed after each committed change."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from matrix_core import errors
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.signing import generate_signing_key
from tests.support.e2ee_keys import Key, key_set


def device(user_id: str, device_id: str, key: Key) -> dict[str, Any]:
    return {"user_id": user_id, "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{device_id}": "curve", f"ed25519:{device_id}": key.pub}}


async def test_signatures_and_query(tmp_path: Path) -> None:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))
    await hs.start()
    try:
        xs = hs.cross_signing
        changed: list[str] = []
        xs.on_keys_changed.append(changed.append)
        a, b, c = "@a:hub", "@b:hub", "@c:hub"
        dev_key = Key()
        devices = {(a, "DEV"): device(a, "DEV", dev_key)}

        async def device_keys(user_id: str, device_id: str) -> dict[str, Any] | None:
            return devices.get((user_id, device_id))

        xs.device_keys = device_keys
        a_master, a_ssk, _, a_body = key_set(a)
        b_master, _, b_usk, b_body = key_set(b)
        for user, body in ((a, a_body), (b, b_body)):
            keys, needs_auth = await xs.check_upload(user, body)
            assert not needs_auth and set(keys) == {"master", "self_signing", "user_signing"}
            await xs.store_keys(user, keys)
        assert changed == [a, b]
        # a's re-upload of the same keys: nothing new, no UIA; a new master key: UIA
        assert await xs.check_upload(a, a_body) == ({}, False)
        assert (await xs.check_upload(a, key_set(a)[3]))[1] is True

        # a's device signed by a's self-signing key; a's master key signed by that device
        signed_device = a_ssk.sign(devices[(a, "DEV")], a)
        signed_master = dev_key.sign(a_body["master_key"], a, kid="ed25519:DEV")
        assert await xs.upload_signatures(a, {a: {"DEV": signed_device, a_master.pub: signed_master}}) == {}
        assert await xs.device_signatures(a, "DEV") == {a: {a_ssk.kid: signed_device["signatures"][a][a_ssk.kid]}}
        assert changed[-1] == a
        # b's user-signing key signs a's master key
        b_signed = b_usk.sign(a_body["master_key"], b)
        assert await xs.upload_signatures(b, {a: {a_master.pub: b_signed}}) == {}

        seen_by_b = await xs.keys_for_query(b, [a, b])
        assert set(seen_by_b["master_keys"][a]["signatures"]) == {a, b}
        device_sig = signed_master["signatures"][a]["ed25519:DEV"]
        assert seen_by_b["master_keys"][a]["signatures"][a]["ed25519:DEV"] == device_sig
        assert seen_by_b["self_signing_keys"][a] == a_body["self_signing_key"]
        assert list(seen_by_b["user_signing_keys"]) == [b], "only the requester's own user-signing key"
        seen_by_c = await xs.keys_for_query(c, [a, c])
        assert set(seen_by_c["master_keys"][a]["signatures"]) == {a}, "b's trust in a is b's business"
        assert seen_by_c["user_signing_keys"] == {} and c not in seen_by_c["master_keys"]

        # failures, nothing stored for them
        forged = Key().sign(devices[(a, "DEV")], a, kid=a_ssk.kid)
        other = a_ssk.sign({**devices[(a, "DEV")], "keys": {"ed25519:DEV": "other"}}, a)
        gone = a_ssk.sign(device(a, "GONE", Key()), a)
        failures = await xs.upload_signatures(a, {a: {"DEV": forged, "GONE": gone}})
        assert failures[a]["DEV"]["errcode"] == "M_INVALID_SIGNATURE"
        assert failures[a]["GONE"]["errcode"] == "M_NOT_FOUND"
        assert (await xs.upload_signatures(a, {a: {"DEV": other}}))[a]["DEV"]["errcode"] == "M_INVALID_PARAM"
        failures = await xs.upload_signatures(c, {a: {a_master.pub: Key().sign(a_body["master_key"], c)}})
        assert failures[a][a_master.pub]["errcode"] == "M_MISSING_PARAM", "c has no user-signing key"
        assert await xs.device_signatures(a, "DEV") == {a: {a_ssk.kid: signed_device["signatures"][a][a_ssk.kid]}}
        with pytest.raises(errors.MatrixError) as err:
            await xs.upload_signatures(a, {a: []})
        assert err.value.errcode == "M_BAD_JSON"
    finally:
        await hs.stop()
