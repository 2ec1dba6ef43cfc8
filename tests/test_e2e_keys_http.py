"""End-to-end encryption, server side, over raw HTTP (urllib): /keys/upload, /keys/query,
/keys/claim, /keys/changes, /sendToDevice and what /sync carries of them; bad input gives a clear
errcode and stores nothing."""
from __future__ import annotations

import base64
import os
import threading
import urllib.parse
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V3 = "/_matrix/client/v3"


def b64() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


class Dev:
    """One logged-in device of a user, speaking raw HTTP."""

    def __init__(self, gw: GatewayProcess, localpart: str) -> None:
        self.gw = gw
        self.token = gw.login(localpart, PASSWORD)
        status, who = gw.request("GET", f"{V3}/account/whoami", token=self.token)
        assert status == 200, who
        self.user_id, self.device_id = who["user_id"], who["device_id"]
        self.since: str | None = None

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        return self.gw.request(method, V3 + path, body, token=self.token, raw=raw)

    def device_keys(self, ed: str | None = None) -> dict[str, Any]:
        return {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": b64(), f"ed25519:{self.device_id}": ed or b64()},
                "signatures": {self.user_id: {f"ed25519:{self.device_id}": b64()}}}

    def sync(self, timeout: int = 0) -> dict[str, Any]:
        query = f"?timeout={timeout}" + (f"&since={urllib.parse.quote(self.since)}" if self.since else "")
        status, body = self.call("GET", "/sync" + query)
        assert status == 200, body
        self.since = body["next_batch"]
        return body

    def lists_until(self, user_id: str, part: str = "changed") -> dict[str, Any]:
        """Sync until `user_id` shows in device_lists[part] (membership changes reach the
        device-list stream just after the membership event itself); bounded."""
        for _ in range(10):
            lists = self.sync(timeout=5000)["device_lists"]
            if user_id in lists[part]:
                return lists
        raise AssertionError(f"{user_id} never in device_lists.{part}")


def otks(n: int, prefix: str = "AAAA") -> dict[str, Any]:
    return {f"signed_curve25519:{prefix}{i}": {"key": b64(), "signatures": {}} for i in range(n)}


@pytest.fixture(scope="module")
def users(gateway: GatewayProcess) -> None:
    for name in ("carol", "dave", "erin"):
        gateway.add_user(name, PASSWORD)


def test_upload_query_claim_fallback(gateway: GatewayProcess, users: None) -> None:
    a, b = Dev(gateway, "carol"), Dev(gateway, "dave")
    keys = a.device_keys()
    status, body = a.call("POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(2),
                                                   "fallback_keys": {"signed_curve25519:FB": {"key": b64(), "fallback": True}}})
    assert status == 200, body
    assert body["one_time_key_counts"]["signed_curve25519"] == 2
    assert a.sync()["device_unused_fallback_key_types"] == ["signed_curve25519"]

    status, body = b.call("POST", "/keys/query", {"device_keys": {a.user_id: []}})
    assert status == 200, body
    got = body["device_keys"][a.user_id][a.device_id]
    assert got["keys"] == keys["keys"] and got["signatures"] == keys["signatures"]

    claimed = []
    for _ in range(3):
        status, body = b.call("POST", "/keys/claim", {"one_time_keys": {a.user_id: {a.device_id: "signed_curve25519"}}})
        assert status == 200, body
        claimed.append(next(iter(body["one_time_keys"][a.user_id][a.device_id])))
    assert claimed[0] != claimed[1] and claimed[2] == "signed_curve25519:FB"  # then the fallback key
    sync = a.sync()
    assert sync["device_one_time_keys_count"]["signed_curve25519"] == 0
    assert sync["device_unused_fallback_key_types"] == []


def test_claim_is_exactly_once_under_concurrency(gateway: GatewayProcess, users: None) -> None:
    a, b = Dev(gateway, "carol"), Dev(gateway, "dave")
    assert a.call("POST", "/keys/upload", {"device_keys": a.device_keys(), "one_time_keys": otks(5)})[0] == 200
    got: list[str] = []

    def claim() -> None:
        status, body = b.call("POST", "/keys/claim", {"one_time_keys": {a.user_id: {a.device_id: "signed_curve25519"}}})
        assert status == 200
        got.extend(body["one_time_keys"].get(a.user_id, {}).get(a.device_id, {}))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 5 and len(set(got)) == 5  # five keys, each handed out once; three got nothing


def test_claim_and_query_of_unknown_users_are_failures_not_errors(gateway: GatewayProcess, users: None) -> None:
    a = Dev(gateway, "carol")
    status, body = a.call("POST", "/keys/claim", {"one_time_keys": {
        "@nobody:localhost": {"X": "signed_curve25519"}, a.user_id: {"NODEVICE": "signed_curve25519"},
        "@someone:remote.example": {"D": "signed_curve25519"}}})
    assert status == 200, body
    assert body["one_time_keys"] == {} and "remote.example" in body["failures"]
    status, body = a.call("POST", "/keys/query", {"device_keys": {"@nobody:localhost": [],
                                                                  "@someone:remote.example": []}})
    assert status == 200, body
    assert body["device_keys"]["@nobody:localhost"] == {} and "remote.example" in body["failures"]


@pytest.mark.parametrize("change", [
    lambda k: k.update(user_id="@dave:localhost"),
    lambda k: k.update(device_id="OTHER"),
    lambda k: k.update(keys={"curve25519:OTHER": "AAAA"}),
    lambda k: k.update(keys={"curve25519": "AAAA"}),
    lambda k: k.update(keys="nope"),
    lambda k: k.update(algorithms=[]),
    lambda k: k.update(signatures={"@carol:localhost": {"ed25519:X": 5}}),
    lambda k: k.update(signatures={}),
    lambda k: k.update(signatures={"notauser": {}}),
])
def test_malformed_device_keys_are_refused_and_nothing_stored(gateway: GatewayProcess, users: None, change: Any) -> None:
    a = Dev(gateway, "carol")
    keys = a.device_keys()
    change(keys)
    status, body = a.call("POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(1)})
    assert status == 400 and body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), body
    status, body = a.call("POST", "/keys/query", {"device_keys": {a.user_id: [a.device_id]}})
    assert body["device_keys"][a.user_id] == {}
    assert a.sync()["device_one_time_keys_count"]["signed_curve25519"] == 0  # the good OTK was not kept


@pytest.mark.parametrize("body", [
    {"one_time_keys": {"nocolon": "AAAA"}},
    {"one_time_keys": {"signed_curve25519:A": {"key": 5}}},
    {"one_time_keys": {"signed_curve25519:A": "not base64!"}},
    {"one_time_keys": []},
    {"fallback_keys": {"signed_curve25519:A": {"key": "AAAA"}, "signed_curve25519:B": {"key": "BBBB"}}},
])
def test_malformed_one_time_keys_are_refused(gateway: GatewayProcess, users: None, body: Any) -> None:
    a = Dev(gateway, "carol")
    status, answer = a.call("POST", "/keys/upload", body)
    assert status == 400 and answer["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), answer
    assert a.sync()["device_one_time_keys_count"] == {"signed_curve25519": 0, "curve25519": 0}
    assert a.sync()["device_unused_fallback_key_types"] == []


def test_identity_keys_cannot_be_replaced_and_otk_ids_cannot_change(gateway: GatewayProcess, users: None) -> None:
    a = Dev(gateway, "carol")
    keys = a.device_keys()
    assert a.call("POST", "/keys/upload", {"device_keys": keys, "one_time_keys": {"signed_curve25519:K": "AAAA"}})[0] == 200
    assert a.call("POST", "/keys/upload", {"device_keys": keys})[0] == 200  # the same again: fine
    status, body = a.call("POST", "/keys/upload", {"device_keys": a.device_keys()})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = a.call("POST", "/keys/upload", {"one_time_keys": {"signed_curve25519:K": "BBBB"}})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = a.call("POST", "/keys/query", {"device_keys": {a.user_id: [a.device_id]}})
    assert body["device_keys"][a.user_id][a.device_id]["keys"] == keys["keys"]


def test_device_lists_after_upload_join_leave_and_deletion(gateway: GatewayProcess, users: None) -> None:
    a, b = Dev(gateway, "carol"), Dev(gateway, "erin")
    assert a.call("POST", "/keys/upload", {"device_keys": a.device_keys()})[0] == 200
    assert b.call("POST", "/keys/upload", {"device_keys": b.device_keys()})[0] == 200
    status, room = a.call("POST", "/createRoom", {"preset": "private_chat", "invite": [b.user_id]})
    assert status == 200
    room_id = room["room_id"]
    a.sync()
    b.sync()
    assert b.call("POST", f"/rooms/{urllib.parse.quote(room_id)}/join", {})[0] == 200
    a.lists_until(b.user_id)  # a join is a change, for the room's members
    b.lists_until(a.user_id)  # and for the joiner, about the members
    start = a.since
    # a new device of b that uploads keys, then is deleted: both are changes; its keys go
    b2 = Dev(gateway, "erin")
    assert b2.call("POST", "/keys/upload", {"device_keys": b2.device_keys(), "one_time_keys": otks(3)})[0] == 200
    a.lists_until(b.user_id)
    status, changes = a.call("GET", f"/keys/changes?from={start}&to={a.since}")
    assert status == 200 and b.user_id in changes["changed"]
    status, body = b.call("POST", "/delete_devices", {"devices": [b2.device_id], "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "erin"}, "password": PASSWORD}})
    assert status == 200, body
    status, body = a.call("POST", "/keys/query", {"device_keys": {b.user_id: []}})
    assert set(body["device_keys"][b.user_id]) == {b.device_id}
    status, body = a.call("POST", "/keys/claim", {"one_time_keys": {b.user_id: {b2.device_id: "signed_curve25519"}}})
    assert status == 200 and body["one_time_keys"] == {}
    a.lists_until(b.user_id)
    # b leaves the only shared room: each is `left` for the other
    b.sync()
    assert b.call("POST", f"/rooms/{urllib.parse.quote(room_id)}/leave", {})[0] == 200
    a.lists_until(b.user_id, "left")
    b.lists_until(a.user_id, "left")


def test_a_user_without_keys_is_no_device_list_news(gateway: GatewayProcess, users: None) -> None:
    """Joins of users who never encrypt write nothing to the device-list stream: no long-poll
    wakes for them, and the sync token's device_lists part does not move."""
    a = Dev(gateway, "dave")
    gateway.add_user("hal", PASSWORD)
    h = Dev(gateway, "hal")
    status, room = a.call("POST", "/createRoom", {"preset": "public_chat"})
    assert status == 200
    a.sync()
    before = a.since
    assert h.call("POST", f"/rooms/{urllib.parse.quote(room['room_id'])}/join", {})[0] == 200
    woke = a.sync(timeout=5000)
    assert room["room_id"] in woke["rooms"]["join"]  # woken by the join itself
    assert a.sync(timeout=300)["device_lists"] == {"changed": [], "left": []}
    assert before is not None and a.since is not None and a.since.split("_")[5] == before.split("_")[5]


def test_to_device_delivered_once_acknowledged_and_idempotent(gateway: GatewayProcess, users: None) -> None:
    a, b1, b2 = Dev(gateway, "carol"), Dev(gateway, "dave"), Dev(gateway, "dave")
    b1.sync()
    b2.sync()
    message = {"messages": {b1.user_id: {"*": {"body": "to all", "n": 1.5}}}}
    assert a.call("PUT", "/sendToDevice/m.test/t1", message)[0] == 200
    assert a.call("PUT", "/sendToDevice/m.test/t1", message)[0] == 200  # a retry: stored once
    for dev in (b1, b2):
        events = dev.sync(timeout=5000)["to_device"]["events"]
        assert events == [{"type": "m.test", "sender": a.user_id, "content": {"body": "to all", "n": 1.5}}]
    # only to b1 now; b1's next sync acknowledges it, the one after does not see it again
    assert a.call("PUT", "/sendToDevice/m.test/t2", {"messages": {b1.user_id: {b1.device_id: {"x": 1}}}})[0] == 200
    first = b1.sync(timeout=5000)["to_device"]["events"]
    assert [e["content"] for e in first] == [{"x": 1}]
    assert b2.sync()["to_device"]["events"] == []
    assert a.call("PUT", "/sendToDevice/m.test/t3", {"messages": {b1.user_id: {b1.device_id: {"x": 2}}}})[0] == 200
    assert [e["content"] for e in b1.sync(timeout=5000)["to_device"]["events"]] == [{"x": 2}]
    # a sync from an old token gives what was not acknowledged yet, and not what was
    old = b1.since
    assert a.call("PUT", "/sendToDevice/m.test/t4", {"messages": {b1.user_id: {b1.device_id: {"x": 3}}}})[0] == 200
    assert [e["content"] for e in b1.sync(timeout=5000)["to_device"]["events"]] == [{"x": 3}]
    b1.since = old
    assert [e["content"] for e in b1.sync()["to_device"]["events"]] == [{"x": 3}]


def test_to_device_bad_input_stores_nothing(gateway: GatewayProcess, users: None) -> None:
    a, b = Dev(gateway, "carol"), Dev(gateway, "dave")
    b.sync()
    big = {"messages": {b.user_id: {b.device_id: {"blob": "x" * 70000}}}}
    status, body = a.call("PUT", "/sendToDevice/m.test/big", big)
    assert status == 413 and body["errcode"] == "M_TOO_LARGE"
    for bad in ({"messages": {"nouser": {"D": {}}}}, {"messages": {b.user_id: {b.device_id: "str"}}},
                {"messages": []}, {}):
        status, body = a.call("PUT", "/sendToDevice/m.test/bad", bad)
        assert status == 400 and body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), (bad, body)
    assert a.call("PUT", "/sendToDevice/m.test/ok", {"messages": {b.user_id: {b.device_id: {"ok": True}}}})[0] == 200
    assert [e["content"] for e in b.sync(timeout=5000)["to_device"]["events"]] == [{"ok": True}]


def test_to_device_of_a_deleted_device_are_gone(gateway: GatewayProcess, users: None) -> None:
    a, b = Dev(gateway, "carol"), Dev(gateway, "dave")
    assert a.call("PUT", "/sendToDevice/m.test/del", {"messages": {b.user_id: {b.device_id: {"x": 1}}}})[0] == 200
    assert b.call("POST", "/logout")[0] == 200  # its only token: the device goes
    status, body = a.call("POST", "/keys/claim", {"one_time_keys": {b.user_id: {b.device_id: "signed_curve25519"}}})
    assert status == 200 and body["one_time_keys"] == {}


def test_keys_and_to_device_survive_a_restart_and_positions_keep_rising(tmp_path: Any) -> None:
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("fay", PASSWORD)
        gw.add_user("gus", PASSWORD)
        a, b = Dev(gw, "fay"), Dev(gw, "gus")
        keys = a.device_keys()
        assert a.call("POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(3)})[0] == 200
        b.sync()
        assert a.call("PUT", "/sendToDevice/m.test/r1", {"messages": {b.user_id: {b.device_id: {"x": 1}}}})[0] == 200
        assert [e["content"] for e in b.sync()["to_device"]["events"]] == [{"x": 1}]
        assert a.call("PUT", "/sendToDevice/m.test/r2", {"messages": {b.user_id: {b.device_id: {"x": 2}}}})[0] == 200
        before = b.since
    finally:
        assert gw.stop() == 0
    gw.start()
    try:
        # the unacknowledged message is still there; the acknowledged one is not given again
        assert [e["content"] for e in b.sync()["to_device"]["events"]] == [{"x": 2}]
        assert b.since is not None and before is not None
        assert int(b.since.split("_")[4]) >= int(before.split("_")[4])
        assert a.call("PUT", "/sendToDevice/m.test/r1", {"messages": {b.user_id: {b.device_id: {"x": 1}}}})[0] == 200
        assert b.sync()["to_device"]["events"] == []  # the txn id was remembered across the restart
        assert a.sync()["device_one_time_keys_count"]["signed_curve25519"] == 3
        status, body = b.call("POST", "/keys/query", {"device_keys": {a.user_id: []}})
        assert body["device_keys"][a.user_id][a.device_id]["keys"] == keys["keys"]
    finally:
        assert gw.stop() == 0
