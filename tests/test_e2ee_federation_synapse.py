"""End-to-end encryption across federation with a real Synapse (PyPI matrix-synapse), issue 14.

- matrix-js-sdk 43 with Rust crypto on both sides (tests/js/e2ee.mjs with --base-url2): a hub user and a
  Synapse user in an encrypted room decrypt each other's messages; the hub user's new device reaches the
  Synapse user (m.device_list_update) and reads new messages; a deleted device gets no more keys.
  This needs all of it: /user/keys/query|claim and /user/devices served to Synapse, the hub's remote
  /keys/query|claim, m.direct_to_device both ways and device_lists in both servers' /sync.
- Raw signed federation requests (signed with Synapse's own key, as Synapse) to the served endpoints,
  bad input on them, and malformed EDUs in a transaction (dropped, the transaction still answered).
- A remote server that never answers a key query costs at most the request's timeout and is a failure.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import nacl.signing
import pytest

from matrix_core.canonical_json import encode_canonical_json
from matrix_core.federation.xmatrix import build_authorization
from matrix_core.signing import SigningKey
from tests.support.gateway import GatewayProcess
from tests.support.synapse import SynapseProcess
from tests.test_federation_rooms_synapse import (HUB_PW, SYN_PW, hub_api, hub_sync, q, start_hub, synapse_sync,
                                                 wait_with_sync)
from tests.test_matrix_js_sdk import JS_DIR, NODE, node_and_sdk_problem

SCRIPT = JS_DIR / "e2ee.mjs"
STEP_TIMEOUT_MS = 40_000  # Synapse and federation hops: slower than one hub
RUN_TIMEOUT_S = 400
STEPS = ["start_with_rust_crypto", "encrypted_room", "each_decrypts_the_other", "third_device_reads_new_messages",
         "deleted_device_gets_no_keys"]


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    with SynapseProcess(tmp_path_factory.mktemp("synapse") / "hs") as hs:
        hs.register_user("sam", SYN_PW)
        hs.register_user("sue", SYN_PW)
        yield hs


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_hub(Path(tmp_path_factory.mktemp("hub")) / "data")
    gw.add_user("hubby", HUB_PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def e2ee_run(hub: GatewayProcess, synapse: SynapseProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    stderr_path = Path(tmp_path_factory.mktemp("e2ee-fed")) / "e2ee.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run(
            [str(NODE), str(SCRIPT), "--base-url", str(hub.http_url), "--user1", "hubby", "--password1", HUB_PW,
             "--base-url2", str(synapse.client_url), "--user2", "sam", "--password2", SYN_PW,
             "--step-timeout", str(STEP_TIMEOUT_MS)],
            cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=RUN_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin"})
    steps: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "step" in record:
            steps[record["step"]] = record
    return {"steps": steps, "returncode": proc.returncode, "stderr": stderr_path}


@pytest.mark.parametrize("step", STEPS)
def test_e2ee_with_synapse_step(e2ee_run: dict[str, Any], hub: GatewayProcess, step: str) -> None:
    result = e2ee_run["steps"].get(step)
    if result is None:
        tail = Path(e2ee_run["stderr"]).read_text(errors="replace")[-3000:]
        pytest.fail(f"no line for {step!r} (exit {e2ee_run['returncode']}); SDK log tail:\n{tail}", pytrace=False)
    if not result["ok"]:
        pytest.fail(f"{step}: {result['detail']}\nhub log tail:\n{hub.read_log()[-3000:]}", pytrace=False)


# -- raw federation requests, signed as Synapse ------------------------------------------------------

def synapse_key(synapse: SynapseProcess) -> SigningKey:
    """Synapse's own signing key (its file: `ed25519 <version> <unpadded base64 seed>`)."""
    import base64

    import yaml

    path = yaml.safe_load(synapse.config_path.read_text())["signing_key_path"]
    algorithm, version, seed = Path(path).read_text().split()[:3]
    raw = base64.b64decode(seed + "=" * (-len(seed) % 4))
    return SigningKey(f"{algorithm}:{version}", nacl.signing.SigningKey(raw))


def federation(hub: GatewayProcess, synapse: SynapseProcess, method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    assert synapse.server_name is not None
    auth = build_authorization(method, path, synapse.server_name, hub.server_name, synapse_key(synapse), body)
    data = encode_canonical_json(body) if body is not None else None
    req = urllib.request.Request(f"https://127.0.0.1:{hub.federation_port}{path}", data=data, method=method,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def hubby_device(hub: GatewayProcess) -> dict[str, str]:
    """A hub device with device keys and two one-time keys (fake key material: the hub checks shape)."""
    status, login = hub.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hubby"}, "password": HUB_PW})
    assert status == 200, login
    user_id, device_id, token = login["user_id"], login["device_id"], login["access_token"]
    keys = {"user_id": user_id, "device_id": device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{device_id}": "Y3VydmU", f"ed25519:{device_id}": "ZWQyNTUxOQ"},
            "signatures": {user_id: {f"ed25519:{device_id}": "c2lnbmF0dXJl"}}}
    otks = {f"signed_curve25519:K{i}": {"key": f"a2V5{i}", "signatures": {user_id: {f"ed25519:{device_id}": "c2ln"}}}
            for i in range(2)}
    hub_api(hub, "POST", "/_matrix/client/v3/keys/upload", {"device_keys": keys, "one_time_keys": otks}, token=token)
    return {"user_id": user_id, "device_id": device_id, "token": token}


def test_served_user_keys_query_and_devices(hub: GatewayProcess, synapse: SynapseProcess,
                                            hubby_device: dict[str, str]) -> None:
    user_id, device_id = hubby_device["user_id"], hubby_device["device_id"]
    status, body = federation(hub, synapse, "POST", "/_matrix/federation/v1/user/keys/query",
                              {"device_keys": {user_id: [], "@else:elsewhere.example": []}})
    assert status == 200, body
    assert body["device_keys"][user_id][device_id]["keys"][f"curve25519:{device_id}"] == "Y3VydmU"
    assert "@else:elsewhere.example" not in body["device_keys"]  # only our users are answered
    assert "user_signing_keys" not in body
    status, devices = federation(hub, synapse, "GET", f"/_matrix/federation/v1/user/devices/{q(user_id)}")
    assert status == 200, devices
    assert devices["user_id"] == user_id and isinstance(devices["stream_id"], int)
    assert device_id in {d["device_id"] for d in devices["devices"]}


def test_served_user_keys_claim_consumes_one_key(hub: GatewayProcess, synapse: SynapseProcess,
                                                 hubby_device: dict[str, str]) -> None:
    user_id, device_id = hubby_device["user_id"], hubby_device["device_id"]
    claimed = set()
    for _ in range(2):
        status, body = federation(hub, synapse, "POST", "/_matrix/federation/v1/user/keys/claim",
                                  {"one_time_keys": {user_id: {device_id: "signed_curve25519"}}})
        assert status == 200, body
        claimed |= set(body["one_time_keys"][user_id][device_id])
    assert claimed == {"signed_curve25519:K0", "signed_curve25519:K1"}  # each handed out once
    status, body = federation(hub, synapse, "POST", "/_matrix/federation/v1/user/keys/claim",
                              {"one_time_keys": {user_id: {device_id: "signed_curve25519"}}})
    assert status == 200 and body["one_time_keys"] == {}, body


@pytest.mark.parametrize("method,path,body,errcode", [
    ("POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": "nope"}, "M_BAD_JSON"),
    ("POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": {"not a user": []}}, "M_INVALID_PARAM"),
    ("POST", "/_matrix/federation/v1/user/keys/claim", {"one_time_keys": {"@a:b": {"D": 5}}}, "M_BAD_JSON"),
    ("POST", "/_matrix/federation/v1/user/keys/claim", [], "M_BAD_JSON"),
    ("GET", f"/_matrix/federation/v1/user/devices/{q('@someone:elsewhere.example')}", None, "M_INVALID_PARAM"),
])
def test_served_endpoints_refuse_bad_input(hub: GatewayProcess, synapse: SynapseProcess, method: str, path: str,
                                           body: Any, errcode: str) -> None:
    status, answer = federation(hub, synapse, method, path, body)
    assert status == 400 and answer["errcode"] == errcode, (status, answer)


def test_inbound_to_device_and_malformed_edus(hub: GatewayProcess, synapse: SynapseProcess,
                                              hubby_device: dict[str, str]) -> None:
    """A transaction with malformed E2EE EDUs and one good m.direct_to_device: answered 200, the good one
    reaches the hub device's /sync `to_device`, the bad ones are dropped with a log line."""
    user_id, device_id, token = hubby_device["user_id"], hubby_device["device_id"], hubby_device["token"]
    since, _ = hub_sync(hub, token)(None, 0)
    sam = synapse.user_id("sam")
    good = {"edu_type": "m.direct_to_device", "content": {
        "sender": sam, "type": "m.test.ping", "message_id": "m1",
        "messages": {user_id: {device_id: {"hello": "from synapse"}}}}}
    bad = [
        {"edu_type": "m.direct_to_device", "content": "nope"},
        {"edu_type": "m.direct_to_device", "content": {"sender": "@impostor:other.example", "type": "x",
                                                       "message_id": "m2", "messages": {user_id: {device_id: {}}}}},
        {"edu_type": "m.direct_to_device", "content": {"sender": sam, "type": "x", "message_id": "m3",
                                                       "messages": {user_id: {device_id: "not an object"}}}},
        {"edu_type": "m.device_list_update", "content": {"user_id": sam, "device_id": "D", "stream_id": "one"}},
        {"edu_type": "m.device_list_update", "content": {"user_id": "@x:other.example", "device_id": "D",
                                                         "stream_id": 1}},
        {"edu_type": "m.signing_key_update", "content": {"user_id": sam, "master_key": "not keys"}},
        {"edu_type": "m.signing_key_update", "content": None},
    ]
    txn = {"origin": synapse.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": [], "edus": bad + [good]}
    for attempt in ("t-e2ee-1", "t-e2ee-1"):  # a retried transaction delivers once
        status, answer = federation(hub, synapse, "PUT", f"/_matrix/federation/v1/send/{attempt}", txn)
        assert status == 200, answer

    def got(sync: Any) -> bool:
        return any(ev.get("type") == "m.test.ping" for ev in sync.get("to_device", {}).get("events", []))

    poll = hub_sync(hub, token)
    _, sync = poll(since, 10_000)
    if not got(sync):
        sync = wait_with_sync(poll, got, deadline_s=20)
    events = [ev for ev in sync["to_device"]["events"] if ev.get("type") == "m.test.ping"]
    assert events == [{"type": "m.test.ping", "sender": sam, "content": {"hello": "from synapse"}}]
    log = hub.read_log()
    assert "dropping an m.direct_to_device EDU" in log and "Traceback" not in log


def test_remote_server_that_never_answers_costs_the_timeout(hub: GatewayProcess,
                                                            hubby_device: dict[str, str]) -> None:
    """A 'server' that accepts connections and never answers: /keys/query and /keys/claim come back
    within their timeout with it in `failures`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    server = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        for path, body in [
            ("/_matrix/client/v3/keys/query", {"device_keys": {f"@silent:{server}": []}, "timeout": 1500}),
            ("/_matrix/client/v3/keys/claim", {"one_time_keys": {f"@silent:{server}": {"D": "signed_curve25519"}},
                                               "timeout": 1500}),
        ]:
            started = time.monotonic()
            answer = hub_api(hub, "POST", path, body, token=hubby_device["token"])
            elapsed = time.monotonic() - started
            assert server in answer["failures"], answer
            assert elapsed < 5.0, f"{path} took {elapsed:.1f}s with a 1.5s timeout"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


# -- device lists and to-device across federation (a room hubby and sue share) -------------------------

def changed(sync: Any, user_id: str, field: str = "changed") -> bool:
    return user_id in sync.get("device_lists", {}).get(field, [])


@pytest.fixture(scope="module")
def porch(hub: GatewayProcess, synapse: SynapseProcess, hubby_device: dict[str, str]) -> dict[str, str]:
    """A hub room sue (on Synapse) joined; the join is a device-list change for hubby (a remote
    user now shares a room), which is checked here, and a token past it."""
    token = hubby_device["token"]
    since, _ = hub_sync(hub, token)(None, 0)
    room_id = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "e2eporch", "preset": "public_chat"}, token=token)["room_id"]
    sue_token = synapse.login("sue", SYN_PW)
    synapse.api("POST", f"/_matrix/client/v3/join/{q('#e2eporch:' + hub.server_name)}", {}, token=sue_token)
    sue = synapse.user_id("sue")
    poll = hub_sync(hub, token)
    seen = {"since": since}

    def track(since_arg: str | None, timeout: int) -> tuple[str, Any]:
        nxt, body = poll(since_arg or seen["since"], timeout)
        seen["since"] = nxt
        return nxt, body

    wait_with_sync(track, lambda s: changed(s, sue), deadline_s=30)
    return {"room": room_id, "sue": sue, "sue_token": sue_token, "since": seen["since"]}


def test_remote_join_and_device_list_update_are_changes_in_hub_sync(
        hub: GatewayProcess, synapse: SynapseProcess, hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    sue = porch["sue"]
    edu = {"edu_type": "m.device_list_update", "content": {
        "user_id": sue, "device_id": "SUENEW", "stream_id": 77, "prev_id": [],
        "keys": {"user_id": sue, "device_id": "SUENEW", "algorithms": [], "keys": {"ed25519:SUENEW": "a2V5"},
                 "signatures": {}}}}
    poll = hub_sync(hub, hubby_device["token"])
    _, quiet = poll(porch["since"], 0)
    assert not changed(quiet, sue)  # nothing new yet: the EDU below is what makes the change
    status, answer = federation(hub, synapse, "PUT", "/_matrix/federation/v1/send/t-dlu-1",
                                {"origin": synapse.server_name, "origin_server_ts": int(time.time() * 1000),
                                 "pdus": [], "edus": [edu]})
    assert status == 200, answer
    _, sync = poll(porch["since"], 10_000)
    assert changed(sync, sue), sync.get("device_lists")


def test_local_key_change_reaches_synapse_user(hub: GatewayProcess, synapse: SynapseProcess,
                                               porch: dict[str, str]) -> None:
    """hubby's new device keys go out as m.device_list_update: sue's Synapse /sync says hubby changed."""
    sue_poll = synapse_sync(synapse, porch["sue_token"])
    since, _ = sue_poll(None, 0)
    status, login = hub.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hubby"}, "password": HUB_PW})
    assert status == 200, login
    user_id, device_id = login["user_id"], login["device_id"]
    keys = {"user_id": user_id, "device_id": device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{device_id}": "bmV3Y3VydmU", f"ed25519:{device_id}": "bmV3ZWQ"},
            "signatures": {user_id: {f"ed25519:{device_id}": "c2ln"}}}
    hub_api(hub, "POST", "/_matrix/client/v3/keys/upload", {"device_keys": keys}, token=login["access_token"])
    seen = {"since": since}

    def track(since_arg: str | None, timeout: int) -> tuple[str, Any]:
        nxt, body = sue_poll(since_arg or seen["since"], timeout)
        seen["since"] = nxt
        return nxt, body

    wait_with_sync(track, lambda s: changed(s, user_id), deadline_s=30)
    # the chain Synapse follows: /user/devices answers the last update's stream id
    status, devices = federation(hub, synapse, "GET", f"/_matrix/federation/v1/user/devices/{q(user_id)}")
    assert status == 200 and devices["stream_id"] > 0 and device_id in {d["device_id"] for d in devices["devices"]}
    # and Synapse now shows the new device to sue
    answer = synapse.api("POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}},
                         token=porch["sue_token"])
    assert device_id in answer["device_keys"].get(user_id, {}), answer


def test_to_device_reaches_synapse_user(hub: GatewayProcess, synapse: SynapseProcess,
                                        hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    sue = porch["sue"]
    sue_poll = synapse_sync(synapse, porch["sue_token"])
    since, _ = sue_poll(None, 0)
    hub_api(hub, "PUT", "/_matrix/client/v3/sendToDevice/m.test.hello/tx-fed-1",
            {"messages": {sue: {"*": {"hi": "from the hub"}}}}, token=hubby_device["token"])
    seen = {"since": since}

    def track(since_arg: str | None, timeout: int) -> tuple[str, Any]:
        nxt, body = sue_poll(since_arg or seen["since"], timeout)
        seen["since"] = nxt
        return nxt, body

    sync = wait_with_sync(track, lambda s: any(ev.get("type") == "m.test.hello"
                                               for ev in s.get("to_device", {}).get("events", [])), deadline_s=30)
    event = next(ev for ev in sync["to_device"]["events"] if ev.get("type") == "m.test.hello")
    assert event["sender"] == hubby_device["user_id"] and event["content"] == {"hi": "from the hub"}
    # acknowledged by Synapse: the outbox row goes (deleted just after the transaction's 200)
    deadline = time.monotonic() + 10
    while outbox(hub):
        assert time.monotonic() < deadline, outbox(hub)
        time.sleep(0.05)


def cached_stream_id(hub: GatewayProcess, user_id: str) -> tuple[bool, int | None]:
    """(cached?, stream id) of the hub's cached device list of a remote user (read-only look at its db)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{hub.data_dir / 'homeserver.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT stream_id FROM e2e_remote_device_lists WHERE user_id = ?", (user_id,)).fetchone()
    finally:
        conn.close()
    return (row is not None, None if row is None else row[0])


def outbox(hub: GatewayProcess) -> list[tuple[str, str]]:
    """(destination, EDU JSON) rows the hub still owes (read-only look at its db)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{hub.data_dir / 'homeserver.db'}?mode=ro", uri=True, timeout=5)
    try:
        return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT destination, edu_json FROM e2e_edu_outbox")]
    finally:
        conn.close()


def send_edus(hub: GatewayProcess, synapse: SynapseProcess, txn_id: str, edus: list[dict[str, Any]]) -> None:
    status, answer = federation(hub, synapse, "PUT", f"/_matrix/federation/v1/send/{txn_id}",
                                {"origin": synapse.server_name, "origin_server_ts": int(time.time() * 1000),
                                 "pdus": [], "edus": edus})
    assert status == 200, answer


def device_update(user_id: str, device_id: str, stream_id: int, prev_id: list[int]) -> dict[str, Any]:
    return {"edu_type": "m.device_list_update", "content": {
        "user_id": user_id, "device_id": device_id, "stream_id": stream_id, "prev_id": prev_id,
        "keys": {"user_id": user_id, "device_id": device_id, "algorithms": [], "keys": {f"ed25519:{device_id}": "a2V5"},
                 "signatures": {}}}}


def test_remote_device_list_is_cached_kept_by_updates_and_resynced_on_a_gap(
        hub: GatewayProcess, synapse: SynapseProcess, hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    sue, token = porch["sue"], hubby_device["token"]
    first = hub_api(hub, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {sue: []}}, token=token)
    assert sue in first["device_keys"] and not first["failures"], first
    assert cached_stream_id(hub, sue)[0]  # a whole list of a user sharing a room: cached
    # an update that does not follow what we hold: the list is fetched again through /user/devices
    send_edus(hub, synapse, "t-gap-1", [device_update(sue, "GAPDEV", 10**9, [10**9 - 1])])
    deadline = time.monotonic() + 20
    while cached_stream_id(hub, sue)[1] is None:  # the resync runs in the background: no event to await
        assert time.monotonic() < deadline, "no resync through /user/devices"
        time.sleep(0.1)
    known = cached_stream_id(hub, sue)[1]
    assert isinstance(known, int)
    # an update that follows it is applied to the cache, and the next query is answered from it
    # (Synapse knows no device CHAINED: only the cache can show it)
    send_edus(hub, synapse, "t-chain-1", [device_update(sue, "CHAINED", known + 5, [known])])
    answer = hub_api(hub, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {sue: []}}, token=token)
    assert "CHAINED" in answer["device_keys"][sue] and "GAPDEV" not in answer["device_keys"][sue], answer
    assert cached_stream_id(hub, sue) == (True, known + 5)


def test_cross_signing_keys_reach_synapse_as_signing_key_update(
        hub: GatewayProcess, synapse: SynapseProcess, hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    """hubby's first cross-signing keys go out as m.signing_key_update: Synapse (which holds hubby's
    device list from earlier) tells sue hubby changed and shows his master key."""
    from tests.support.e2ee_keys import key_set

    hubby = hubby_device["user_id"]
    sue_poll = synapse_sync(synapse, porch["sue_token"])
    since, _ = sue_poll(None, 0)
    _, _, _, body = key_set(hubby)
    hub_api(hub, "POST", "/_matrix/client/v3/keys/device_signing/upload", body, token=hubby_device["token"])
    seen = {"since": since}

    def track(since_arg: str | None, timeout: int) -> tuple[str, Any]:
        nxt, answer = sue_poll(since_arg or seen["since"], timeout)
        seen["since"] = nxt
        return nxt, answer

    def master() -> Any:
        answer = synapse.api("POST", "/_matrix/client/v3/keys/query", {"device_keys": {hubby: []}},
                             token=porch["sue_token"])
        return answer if answer.get("master_keys", {}).get(hubby) else None

    # Synapse stores the keys as the EDU arrives and tells sue (device_lists.changed): each long-poll
    # ends when something for sue happens (or after 10 s), then the keys are asked.
    wait_with_sync(track, lambda s: master() is not None, deadline_s=30)
    answer = master()
    assert answer["master_keys"][hubby]["keys"] == body["master_key"]["keys"], answer
    assert answer.get("self_signing_keys", {}).get(hubby, {}).get("keys") == body["self_signing_key"]["keys"]


def test_remote_signing_key_update_is_a_change_and_updates_the_cache(
        hub: GatewayProcess, synapse: SynapseProcess, hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    sue, token = porch["sue"], hubby_device["token"]
    hub_api(hub, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {sue: []}}, token=token)  # cached now
    since, _ = hub_sync(hub, token)(None, 0)
    master = {"user_id": sue, "usage": ["master"], "keys": {"ed25519:bWFzdGVy": "bWFzdGVy"}}
    send_edus(hub, synapse, "t-sku-1", [{"edu_type": "m.signing_key_update",
                                         "content": {"user_id": sue, "master_key": master}}])
    _, sync = hub_sync(hub, token)(since, 10_000)
    assert changed(sync, sue), sync.get("device_lists")
    # Synapse never heard of this key: only the hub's cache, updated by the EDU, can show it
    answer = hub_api(hub, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {sue: []}}, token=token)
    assert answer["master_keys"][sue] == master, answer


def test_remote_user_leaving_is_left_in_hub_sync(hub: GatewayProcess, synapse: SynapseProcess,
                                                 hubby_device: dict[str, str], porch: dict[str, str]) -> None:
    """Last of the porch tests: sue leaves, and hubby (sharing no other room with her) is told `left`."""
    sue = porch["sue"]
    since, _ = hub_sync(hub, hubby_device["token"])(None, 0)
    synapse.api("POST", f"/_matrix/client/v3/rooms/{q(porch['room'])}/leave", {}, token=porch["sue_token"])
    poll = hub_sync(hub, hubby_device["token"])
    seen = {"since": since}

    def track(since_arg: str | None, timeout: int) -> tuple[str, Any]:
        nxt, body = poll(since_arg or seen["since"], timeout)
        seen["since"] = nxt
        return nxt, body

    wait_with_sync(track, lambda s: changed(s, sue, "left"), deadline_s=30)


def test_to_device_for_a_down_server_is_kept_across_a_restart(tmp_path: Path) -> None:
    """The outbound to-device queue is durable: written before sendToDevice's 200, still owed after a
    restart while the destination is down (port 1 on loopback: nothing listens)."""
    gw = start_hub(tmp_path / "data")
    try:
        gw.add_user("solo", HUB_PW)
        token = gw.login("solo", HUB_PW)
        hub_api(gw, "PUT", "/_matrix/client/v3/sendToDevice/m.test.hello/tx-down-1",
                {"messages": {"@x:127.0.0.1:1": {"DEV": {"n": 1}}}}, token=token)
        rows = outbox(gw)
        assert [d for d, _ in rows] == ["127.0.0.1:1"], rows
        edu = json.loads(rows[0][1])
        assert edu["edu_type"] == "m.direct_to_device"
        assert edu["content"]["messages"] == {"@x:127.0.0.1:1": {"DEV": {"n": 1}}}
        # the same transaction again: nothing queued twice
        hub_api(gw, "PUT", "/_matrix/client/v3/sendToDevice/m.test.hello/tx-down-1",
                {"messages": {"@x:127.0.0.1:1": {"DEV": {"n": 1}}}}, token=token)
        assert len(outbox(gw)) == 1
        assert gw.stop() == 0, gw.read_log()
        gw.start()
        assert outbox(gw) == rows
    finally:
        gw.stop()
