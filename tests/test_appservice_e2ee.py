"""Encrypted application services (MSC2409 to-device, MSC3202 device lists, key counts and device
masquerading) and presence in `ephemeral`, with mautrix-python's `AppService` (encryption_events on,
as a bridge in appservice-mode encryption runs it) against the hub started by the CLI with a
registration that has `receive_ephemeral` and `org.matrix.msc3202: true`. A normal user speaks raw
HTTP (tests/test_e2e_keys_http.py's `Dev`)."""
from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from mautrix.types import DeviceLists, UserID

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, free_port
from tests.test_appservice import AS_TOKEN, Bridge, new_hub, registration
from tests.test_e2e_keys_http import Dev, b64, otks

V3 = "/_matrix/client/v3"
LOCK = "@sensor_lock:localhost"
LOCK_COMMAND = "org.example.lock.command"  # a to-device type mautrix has no schema for: kept as sent


def encrypted_registration(port: int) -> str:
    return registration(port, receive_ephemeral="true", **{"org.matrix.msc3202": "true"})


class EncryptedBridge(Bridge):
    """A Bridge that also collects to-device messages, device-list changes and key counts."""

    def __init__(self, hub: GatewayProcess, port: int, state: Path) -> None:
        super().__init__(hub, port, state)
        self.to_device: asyncio.Queue[Any] = asyncio.Queue()
        self.device_lists: asyncio.Queue[DeviceLists] = asyncio.Queue()
        self.otk_counts: asyncio.Queue[dict[Any, Any]] = asyncio.Queue()
        az = self.appservice
        az.encryption_events = True
        az.to_device_handler = self.to_device.put
        az.device_list_handler = self.device_lists.put
        az.otk_handler = self.otk_counts.put

    async def next_to_device(self, body: str, timeout: float = 20.0) -> Any:
        while True:
            event = await asyncio.wait_for(self.to_device.get(), timeout)
            if event.content["body"] == body:
                return event


def masquerade(path: str, device_id: str, user_id: str = LOCK) -> str:
    """The path acting as the user's device, with both parameters as mautrix sends them (Synapse
    reads `device_id`)."""
    sep = "&" if "?" in path else "?"
    return (f"{V3}{path}{sep}user_id={urllib.parse.quote(user_id)}&org.matrix.msc3202.device_id={device_id}"
            f"&device_id={device_id}")


async def call(gw: GatewayProcess, method: str, path: str, body: Any = None, token: str | None = AS_TOKEN) -> tuple[int, Any]:
    """Off the loop: the AS answering the hub runs in this loop."""
    return await asyncio.to_thread(gw.request, method, path, body, token=token)


async def lock_device(gw: GatewayProcess, bridge: EncryptedBridge, device_id: str) -> str:
    """The virtual user @sensor_lock with a device of its own (m.login.application_service, as a
    bridge in appservice mode makes one); returns the device's access token."""
    await bridge.appservice.intent.user(UserID(LOCK)).ensure_registered()
    status, login = await call(gw, "POST", f"{V3}/login", {
        "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "sensor_lock"},
        "device_id": device_id})
    assert status == 200 and login["device_id"] == device_id, login
    return str(login["access_token"])


def send_to_device(carol: Dev, txn: str, device_id: str, body: str) -> None:
    status, answer = carol.call("PUT", f"/sendToDevice/{LOCK_COMMAND}/{txn}",
                                {"messages": {LOCK: {device_id: {"body": body}}}})
    assert status == 200, answer


@pytest.fixture(scope="module")
def as_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, as_port: int) -> Iterator[GatewayProcess]:
    gw = new_hub(Path(tmp_path_factory.mktemp("ase2ee")), encrypted_registration(as_port))
    gw.start()
    for name in ("carol", "dave"):
        gw.add_user(name, PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture()
async def bridge(hub: GatewayProcess, as_port: int, tmp_path: Path) -> AsyncIterator[EncryptedBridge]:
    b = EncryptedBridge(hub, as_port, tmp_path / "mx-state.json")
    await b.start()
    yield b
    await b.stop()


async def test_to_device_keys_and_device_lists_reach_an_encrypted_as(hub: GatewayProcess,
                                                                      bridge: EncryptedBridge) -> None:
    token = await lock_device(hub, bridge, "LOCKDEV")
    # MSC3202 device masquerading: the AS uploads the virtual user's device's keys itself
    status, who = await call(hub, "GET", masquerade("/account/whoami", "LOCKDEV"))
    assert (status, who["user_id"], who["device_id"]) == (200, LOCK, "LOCKDEV")
    status, body = await call(hub, "GET", masquerade("/account/whoami", "NOSUCH"))
    assert (status, body["errcode"]) == (400, "M_UNKNOWN_DEVICE")
    keys = {"user_id": LOCK, "device_id": "LOCKDEV", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"curve25519:LOCKDEV": b64(), "ed25519:LOCKDEV": b64()},
            "signatures": {LOCK: {"ed25519:LOCKDEV": b64()}}}
    status, body = await call(hub, "POST", masquerade("/keys/upload", "LOCKDEV"),
                              {"device_keys": keys, "one_time_keys": otks(3)})
    assert status == 200 and body["one_time_key_counts"]["signed_curve25519"] == 3, body

    carol = Dev(hub, "carol")
    status, claimed = await asyncio.to_thread(carol.call, "POST", "/keys/claim",
                                              {"one_time_keys": {LOCK: {"LOCKDEV": "signed_curve25519"}}})
    assert status == 200 and claimed["one_time_keys"][LOCK]["LOCKDEV"], claimed
    while True:  # the claim leaves two: the AS hears it (MSC3202 OTK counts)
        counts = await asyncio.wait_for(bridge.otk_counts.get(), 20)
        if LOCK in counts and counts[LOCK]["LOCKDEV"].signed_curve25519 == 2:
            break

    # carol's to-device message for the virtual user's device arrives in a transaction
    await asyncio.to_thread(send_to_device, carol, "td1", "LOCKDEV", "olm for the lock")
    got = await bridge.next_to_device("olm for the lock")
    assert (got.sender, got.to_user_id, got.to_device_id, got.type.t) == \
        ("@carol:localhost", LOCK, "LOCKDEV", LOCK_COMMAND)
    # ... and is not handed again to the device over /sync (it never syncs; the AS has it)
    status, synced = await call(hub, "GET", f"{V3}/sync?timeout=0", token=token)
    assert status == 200 and synced.get("to_device", {}).get("events", []) == []

    # device lists: carol shares a room with the AS's user, then uploads device keys
    status, room = await asyncio.to_thread(carol.call, "POST", "/createRoom", {"invite": [LOCK]})
    await bridge.appservice.intent.user(UserID(LOCK)).join_room(room["room_id"])
    status, _ = await asyncio.to_thread(carol.call, "POST", "/keys/upload", {"device_keys": carol.device_keys()})
    assert status == 200
    while True:
        lists = await asyncio.wait_for(bridge.device_lists.get(), 20)
        if "@carol:localhost" in lists.changed:
            break

    # presence of a user in a room with one of its users (receive_ephemeral)
    status, _ = await asyncio.to_thread(carol.call, "PUT", "/presence/%40carol%3Alocalhost/status",
                                        {"presence": "online", "status_msg": "cooking"})
    assert status == 200
    while True:
        event = await asyncio.wait_for(bridge.events.get(), 20)
        if event.type.t == "m.presence" and event.sender == "@carol:localhost":
            assert event.content.presence.value == "online" and event.content.status_msg == "cooking"
            break


async def test_a_normal_users_to_device_stays_on_sync(hub: GatewayProcess, bridge: EncryptedBridge) -> None:
    """A to-device message for a normal user reaches their /sync as before, never the AS (a
    message for the AS's user sent after it is the first the AS gets)."""
    await lock_device(hub, bridge, "MARKDEV")
    carol, dave = Dev(hub, "carol"), Dev(hub, "dave")
    dave.sync()
    status, _ = await asyncio.to_thread(carol.call, "PUT", "/sendToDevice/m.test/n1",
                                        {"messages": {dave.user_id: {dave.device_id: {"body": "for dave"}}}})
    assert status == 200
    await asyncio.to_thread(send_to_device, carol, "marker", "MARKDEV", "marker")
    first = await asyncio.wait_for(bridge.to_device.get(), 20)
    assert (first.content["body"], first.to_device_id) == ("marker", "MARKDEV")
    events = (await asyncio.to_thread(dave.sync))["to_device"]["events"]
    assert [e["content"]["body"] for e in events] == ["for dave"]


async def test_to_device_for_an_as_that_is_down_survives_a_hub_restart(tmp_path: Path) -> None:
    """The AS is down and the hub restarts while to-device messages wait: they arrive in order
    when the AS is back, and leave the inbox then."""
    port = free_port()
    gw = new_hub(tmp_path, encrypted_registration(port))
    gw.start()
    try:
        gw.add_user("carol", PASSWORD)
        bridge = EncryptedBridge(gw, port, tmp_path / "s1.json")
        await bridge.start()
        try:
            await lock_device(gw, bridge, "DOORDEV")
        finally:
            await bridge.stop()
        carol = Dev(gw, "carol")
        for i in range(3):
            await asyncio.to_thread(send_to_device, carol, f"down{i}", "DOORDEV", f"while down {i}")
        assert gw.stop() == 0
        with sqlite3.connect(gw.data_dir / "homeserver.db") as db:
            assert db.execute("SELECT COUNT(*) FROM to_device_inbox").fetchone()[0] == 3
        gw.start()
        bridge = EncryptedBridge(gw, port, tmp_path / "s2.json")
        await bridge.start()
        try:
            got = [(await asyncio.wait_for(bridge.to_device.get(), 20)).content["body"] for _ in range(3)]
            assert got == [f"while down {i}" for i in range(3)]
        finally:
            await bridge.stop()
        assert gw.stop() == 0
        with sqlite3.connect(gw.data_dir / "homeserver.db") as db:
            assert db.execute("SELECT COUNT(*) FROM to_device_inbox").fetchone()[0] == 0
            assert db.execute("SELECT txn_to_device_upto FROM appservice_state").fetchone()[0] is None
    finally:
        gw.stop()
