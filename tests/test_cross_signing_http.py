"""Cross-signing over raw HTTP (urllib) with keys made by PyNaCl: /keys/device_signing/upload
(UIA after the first upload, MSC3967), /keys/signatures/upload (failures per key), bad input
(a clear errcode, nothing stored). tests/test_cross_signing_service.py covers what
hs.cross_signing gives /keys/query and device signatures (needing /keys/upload's device keys)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.e2ee_keys import Key, key_set
from tests.support.gateway import GatewayProcess

UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
SIGNATURES = "/_matrix/client/v3/keys/signatures/upload"


def password_auth(localpart: str, session: str) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD, "session": session}


@pytest.fixture(scope="module")
def users(gateway: GatewayProcess) -> dict[str, str]:
    for name in ("carol", "dave", "erin"):
        gateway.add_user(name, PASSWORD)
    return {name: gateway.login(name, PASSWORD) for name in ("carol", "dave", "erin")}


def uid(gw: GatewayProcess, name: str) -> str:
    return f"@{name}:{gw.server_name}"


def test_first_upload_needs_no_password_then_replacing_does(gateway: GatewayProcess, users: dict[str, str]) -> None:
    carol = uid(gateway, "carol")
    master, _, _, body = key_set(carol)
    status, answer = gateway.request("POST", UPLOAD, body, token=users["carol"])
    assert (status, answer) == (200, {})
    # the same keys again (a client's retry): still no UIA
    assert gateway.request("POST", UPLOAD, body, token=users["carol"]) == (200, {})
    # new keys: 401 with the password flow; nothing replaced until the password is given
    _, _, _, new = key_set(carol)
    status, challenge = gateway.request("POST", UPLOAD, new, token=users["carol"])
    assert status == 401 and challenge["flows"] == [{"stages": ["m.login.password"]}], challenge
    wrong = {**password_auth("carol", challenge["session"]), "password": "wrong"}
    status, refused = gateway.request("POST", UPLOAD, {**new, "auth": wrong}, token=users["carol"])
    assert status == 401 and refused["errcode"] == "M_FORBIDDEN"
    # (the master key is still the first one: a re-upload of it needs no password)
    assert gateway.request("POST", UPLOAD, body, token=users["carol"]) == (200, {})
    status, answer = gateway.request("POST", UPLOAD, {**new, "auth": password_auth("carol", refused["session"])},
                                     token=users["carol"])
    assert (status, answer) == (200, {})
    status, challenge = gateway.request("POST", UPLOAD, body, token=users["carol"])
    assert status == 401, "the old keys are new keys now: UIA again"


def _stranger_signed(b: dict[str, Any], u: str) -> dict[str, Any]:
    bare = {k: v for k, v in b["user_signing_key"].items() if k != "signatures"}
    return {**b, "user_signing_key": Key().sign(bare, u)}


@pytest.mark.parametrize("case, mangle, errcode", [
    ("notobject", lambda b, u: {**b, "master_key": "nope"}, "M_BAD_JSON"),
    ("otheruser", lambda b, u: {**b, "master_key": {**b["master_key"], "user_id": "@someone:else"}},
     "M_INVALID_PARAM"),
    ("usage", lambda b, u: {**b, "master_key": {**b["master_key"], "usage": ["self_signing"]}}, "M_INVALID_PARAM"),
    ("keyid", lambda b, u: {**b, "master_key": {**b["master_key"], "keys": {"ed25519:abc": "abd"}}},
     "M_INVALID_PARAM"),
    ("notakey", lambda b, u: {**b, "master_key": {**b["master_key"], "keys": {"ed25519:abc": "abc"}}},
     "M_INVALID_PARAM"),
    ("unsigned", lambda b, u: {**b, "self_signing_key": {**b["self_signing_key"], "signatures": {}}},
     "M_INVALID_SIGNATURE"),
    ("stranger", _stranger_signed, "M_INVALID_SIGNATURE"),
    ("nomaster", lambda b, u: {"self_signing_key": b["self_signing_key"]}, "M_INVALID_PARAM"),
])
def test_bad_uploads_store_nothing(gateway: GatewayProcess, case: str, mangle: Any, errcode: str) -> None:
    name = f"bad{case}"
    gateway.add_user(name, PASSWORD)
    token = gateway.login(name, PASSWORD)
    user = uid(gateway, name)
    _, _, _, body = key_set(user)
    status, answer = gateway.request("POST", UPLOAD, mangle(body, user), token=token)
    assert status == 400 and answer["errcode"] == errcode, answer
    # nothing stored: the user still has no master key, so new keys go up without UIA
    assert gateway.request("POST", UPLOAD, key_set(user)[3], token=token) == (200, {})


def test_user_signing_signature_on_another_users_master_key(gateway: GatewayProcess, users: dict[str, str]) -> None:
    erin, carol = uid(gateway, "erin"), uid(gateway, "carol")
    _, _, usk, body = key_set(erin)
    assert gateway.request("POST", UPLOAD, body, token=users["erin"]) == (200, {})
    # carol's current master key, as erin would see it (she signed it before: re-upload it)
    c_master, _, _, c_body = key_set(carol)
    status, challenge = gateway.request("POST", UPLOAD, c_body, token=users["carol"])
    assert status == 401
    assert gateway.request("POST", UPLOAD, {**c_body, "auth": password_auth("carol", challenge["session"])},
                           token=users["carol"]) == (200, {})
    signed = usk.sign(c_body["master_key"], erin)
    forged = Key().sign(c_body["master_key"], erin, kid=usk.kid)
    status, answer = gateway.request("POST", SIGNATURES, {carol: {c_master.pub: signed}}, token=users["erin"])
    assert (status, answer) == (200, {"failures": {}})
    status, answer = gateway.request("POST", SIGNATURES, {
        carol: {c_master.pub: forged, "not-a-key": signed},
        "@nobody:" + gateway.server_name: {"abc": signed},
    }, token=users["erin"])
    assert status == 200
    assert answer["failures"][carol][c_master.pub]["errcode"] == "M_INVALID_SIGNATURE"
    assert answer["failures"][carol]["not-a-key"]["errcode"] == "M_NOT_FOUND"
    assert answer["failures"]["@nobody:" + gateway.server_name]["abc"]["errcode"] == "M_NOT_FOUND"
    # the whole body malformed: 400, nothing stored
    status, answer = gateway.request("POST", SIGNATURES, {carol: "x"}, token=users["erin"])
    assert status == 400 and answer["errcode"] == "M_BAD_JSON"
    # signing one's own device needs its keys: unknown device -> M_NOT_FOUND failure
    unknown_device = Key().sign({"device_id": "NODEVICE"}, erin)
    status, answer = gateway.request("POST", SIGNATURES, {erin: {"NODEVICE": unknown_device}}, token=users["erin"])
    assert status == 200 and answer["failures"][erin]["NODEVICE"]["errcode"] == "M_NOT_FOUND"
