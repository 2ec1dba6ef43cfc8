"""Server-side key backup over raw HTTP (urllib): version CRUD, keys at the three levels, the
spec's replace rule, etag and count, M_WRONG_ROOM_KEYS_VERSION, and bad input (nothing stored)."""
from __future__ import annotations

import itertools
import urllib.parse
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V = "/_matrix/client/v3/room_keys/version"
K = "/_matrix/client/v3/room_keys/keys"
ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:example.org"
_FRESH = itertools.count()  # a new user per bad-input case: each starts with nothing stored


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def key(first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "a") -> dict[str, Any]:
    return {"first_message_index": first, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": {"ephemeral": tag, "ciphertext": "c" + tag, "mac": "m" + tag}}


class User:
    def __init__(self, gw: GatewayProcess, name: str) -> None:
        gw.add_user(name, PASSWORD)
        self.gw, self.token = gw, gw.login(name, PASSWORD)

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.gw.request(method, path, body, token=self.token)


def test_no_backup_is_404_not_found(gateway: GatewayProcess) -> None:
    """Element asks at start and reads 404 M_NOT_FOUND as 'no backup yet'."""
    u = User(gateway, "kb_none")
    status, body = u("GET", V)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    for method, path in (("GET", f"{V}/1"), ("PUT", f"{V}/1"), ("DELETE", f"{V}/1"), ("GET", f"{V}/x")):
        status, body = u(method, path, {"algorithm": ALGORITHM, "auth_data": {}} if method == "PUT" else None)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", (method, path, body)
    status, body = u("PUT", f"{K}?version=1", {"rooms": {}})
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


def test_version_crud(gateway: GatewayProcess) -> None:
    u = User(gateway, "kb_crud")
    status, body = u("POST", V, {"algorithm": ALGORITHM, "auth_data": {"public_key": "pk1", "signatures": {}}})
    assert status == 200 and body == {"version": "1"}
    status, info = u("GET", V)
    assert status == 200
    assert info == {"algorithm": ALGORITHM, "auth_data": {"public_key": "pk1", "signatures": {}}, "version": "1",
                    "etag": "0", "count": 0}
    assert u("GET", f"{V}/1") == (200, info)
    assert u("PUT", f"{V}/1", {"algorithm": ALGORITHM, "auth_data": {"public_key": "pk1", "x": 1},
                               "version": "1"}) == (200, {})
    assert u("GET", V)[1]["auth_data"] == {"public_key": "pk1", "x": 1}
    status, body = u("PUT", f"{V}/1", {"algorithm": "other", "auth_data": {}})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = u("PUT", f"{V}/1", {"algorithm": ALGORITHM, "auth_data": {}, "version": "2"})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert u("GET", V)[1]["auth_data"] == {"public_key": "pk1", "x": 1}, "nothing changed by the refused PUTs"
    assert u("POST", V, {"algorithm": ALGORITHM, "auth_data": {"public_key": "pk2"}}) == (200, {"version": "2"})
    assert u("GET", V)[1]["version"] == "2"
    assert u("DELETE", f"{V}/2") == (200, {})
    assert u("GET", V)[1]["version"] == "1", "the latest not deleted is current"
    assert u("GET", f"{V}/2")[0] == 404
    assert u("POST", V, {"algorithm": ALGORITHM, "auth_data": {}}) == (200, {"version": "3"}), "never reused"


@pytest.mark.parametrize("body", [
    {}, {"algorithm": ALGORITHM}, {"algorithm": 5, "auth_data": {}}, {"algorithm": ALGORITHM, "auth_data": "x"},
    [1],
])
def test_bad_version_bodies_store_nothing(gateway: GatewayProcess, body: Any) -> None:
    u = User(gateway, f"kb_badv{next(_FRESH)}")
    status, answer = u("POST", V, body)
    assert status == 400 and answer["errcode"] == "M_BAD_JSON", answer
    assert u("GET", V)[0] == 404


def test_keys_replace_rules_etag_count(gateway: GatewayProcess) -> None:
    u = User(gateway, "kb_keys")
    u("POST", V, {"algorithm": ALGORITHM, "auth_data": {}})
    status, body = u("PUT", f"{K}?version=1", {"rooms": {ROOM: {"sessions": {"s1": key(5, 1, tag="a"),
                                                                            "s2": key(0, 0, tag="b")}}}})
    assert status == 200 and body["count"] == 2
    etag1 = body["etag"]
    assert u("GET", V)[1]["etag"] == etag1 and u("GET", V)[1]["count"] == 2
    one = f"{K}/{Q(ROOM)}/s1?version=1"

    def put_s1(new: dict[str, Any]) -> str:
        status, body = u("PUT", one, new)
        assert status == 200 and body["count"] == 2
        return str(u("GET", one)[1]["session_data"]["ephemeral"])

    assert put_s1(key(6, 0, tag="worse index")) == "a"               # higher first_message_index: kept
    assert u("GET", V)[1]["etag"] == etag1, "no change, same etag"
    assert put_s1(key(5, 2, tag="more hops")) == "a"                  # same index, more forwards: kept
    assert put_s1(key(5, 1, tag="tie")) == "a"                        # full tie: the stored copy stays
    assert put_s1(key(5, 0, tag="fewer hops")) == "fewer hops"        # fewer forwards: replaced
    assert put_s1(key(9, 9, verified=True, tag="verified")) == "verified"  # verified beats all
    assert put_s1(key(0, 0, verified=False, tag="unverified")) == "verified"  # unverified never replaces it
    assert put_s1(key(1, 0, verified=True, tag="v2")) == "v2"
    assert u("GET", V)[1]["etag"] != etag1

    # the three GET levels
    status, everything = u("GET", f"{K}?version=1")
    assert status == 200 and set(everything["rooms"][ROOM]["sessions"]) == {"s1", "s2"}
    status, room = u("GET", f"{K}/{Q(ROOM)}?version=1")
    assert status == 200 and room == everything["rooms"][ROOM]
    assert u("GET", f"{K}/{Q('!other:x')}?version=1") == (200, {"sessions": {}})
    status, body = u("GET", f"{K}/{Q(ROOM)}/nope?version=1")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"

    # a newer version: uploads to the old one are refused, naming the current one
    u("POST", V, {"algorithm": ALGORITHM, "auth_data": {}})
    status, body = u("PUT", f"{K}?version=1", {"rooms": {ROOM: {"sessions": {"s3": key()}}}})
    assert status == 403 and body["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" and body["current_version"] == "2"
    assert "s3" not in u("GET", f"{K}/{Q(ROOM)}?version=1")[1]["sessions"]
    status, body = u("GET", f"{K}?version=2")
    assert (status, body) == (200, {"rooms": {}})

    # deletes at each level give count and etag
    status, body = u("DELETE", f"{K}/{Q(ROOM)}/s1?version=1")
    assert status == 200 and body["count"] == 1
    status, body = u("DELETE", f"{K}?version=1")
    assert status == 200 and body["count"] == 0
    status, body = u("DELETE", f"{K}?version=7")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


@pytest.mark.parametrize("path, body, errcode", [
    (f"{K}", {"rooms": {ROOM: {"sessions": {"ok": key(), "bad": {**key(), "first_message_index": -1}}}}},
     "M_BAD_JSON"),
    (f"{K}", {"rooms": {ROOM: {"sessions": {"ok": key(), "bad": {**key(), "is_verified": "yes"}}}}}, "M_BAD_JSON"),
    (f"{K}", {"rooms": {ROOM: {"sessions": {"ok": key(), "bad": {**key(), "session_data": "x"}}}}}, "M_BAD_JSON"),
    (f"{K}", {"rooms": {ROOM: {"ok": key()}}}, "M_BAD_JSON"),
    (f"{K}", {"rooms": [1]}, "M_BAD_JSON"),
    (f"{K}/{Q(ROOM)}", {"sessions": {"ok": key(), "bad": 1}}, "M_BAD_JSON"),
    (f"{K}/{Q(ROOM)}/s", {**key(), "forwarded_count": 1.5}, "M_BAD_JSON"),
    (f"{K}/{Q(ROOM)}/s", {**key(), "forwarded_count": True}, "M_BAD_JSON"),
])
def test_bad_key_uploads_store_nothing(gateway: GatewayProcess, path: str, body: Any, errcode: str) -> None:
    u = User(gateway, f"kb_badk{next(_FRESH)}")
    u("POST", V, {"algorithm": ALGORITHM, "auth_data": {}})
    status, answer = u("PUT", f"{path}?version=1", body)
    assert status == 400 and answer["errcode"] == errcode, answer
    assert u("GET", f"{K}?version=1") == (200, {"rooms": {}})
    assert u("GET", V)[1]["etag"] == "0"


def test_version_param_required(gateway: GatewayProcess) -> None:
    u = User(gateway, "kb_noparam")
    u("POST", V, {"algorithm": ALGORITHM, "auth_data": {}})
    for method in ("GET", "PUT", "DELETE"):
        status, body = u(method, K, {"rooms": {}} if method == "PUT" else None)
        assert status == 400 and body["errcode"] == "M_MISSING_PARAM", (method, body)


def test_backups_are_per_user(gateway: GatewayProcess) -> None:
    a, b = User(gateway, "kb_a"), User(gateway, "kb_b")
    a("POST", V, {"algorithm": ALGORITHM, "auth_data": {}})
    a("PUT", f"{K}?version=1", {"rooms": {ROOM: {"sessions": {"s": key()}}}})
    assert b("GET", V)[0] == 404
    assert b("GET", f"{K}?version=1")[0] == 404
    assert b("DELETE", f"{V}/1")[0] == 404
    assert a("GET", V)[1]["count"] == 1
