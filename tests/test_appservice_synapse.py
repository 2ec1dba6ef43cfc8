"""The same application service scenario against the hub and against Synapse (PyPI), with the same
registration file (issue 17: "existing bridge docs apply"): mautrix's AppService pings, registers a
virtual user that joins and sends (read over /messages by a normal user), gets a normal user's
message in a transaction, creates a room lazily on an alias query, and a normal user is refused an
alias in the exclusive namespace (M_EXCLUSIVE). The registration asks for encryption support
(`receive_ephemeral`, `org.matrix.msc3202`; Synapse with its experimental MSC2409/MSC3202 flags): a
normal user's to-device message for a virtual user's device reaches the AS in a transaction, and
the AS acts as that device (MSC3202 masquerading). One Synapse for the module (it is slow to start)."""
from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from mautrix.types import UserID

from tests.conftest import PASSWORD
from tests.support.gateway import free_port
from tests.support.synapse import SynapseProcess
from tests.test_appservice import Bridge, new_hub
from tests.test_appservice_e2ee import LOCK, LOCK_COMMAND, EncryptedBridge, encrypted_registration, masquerade

SYNAPSE_EXPERIMENTAL = {"msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True,
                        "msc3202_device_masquerading": True}


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.http_url: str | None = url
        self.token = token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, f"{self.http_url}{path}", json=body,
                                       headers={"Authorization": f"Bearer {self.token}"}) as resp:
                return resp.status, await resp.json(content_type=None)


@pytest.fixture(scope="module")
def as_port() -> int:
    return free_port()


@pytest.fixture(scope="module", params=["hub", "synapse"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, as_port: int) -> Iterator[Server]:
    base = Path(tmp_path_factory.mktemp(request.param))
    reg_text = encrypted_registration(as_port)
    if request.param == "hub":
        gw = new_hub(base, reg_text)
        gw.start()
        try:
            gw.add_user("carol", PASSWORD)
            yield Server(gw.http_url or "", gw.login("carol", PASSWORD))
        finally:
            assert gw.stop() == 0, gw.read_log()
        return
    (base / "bridge.yaml").write_text(reg_text)  # the very same file
    with SynapseProcess(base / "hs", server_name="localhost", federation=False,
                        extra_config={"app_service_config_files": [str(base / "bridge.yaml")],
                                      "experimental_features": SYNAPSE_EXPERIMENTAL}) as hs:
        hs.register_user("carol", PASSWORD)
        yield Server(hs.client_url or "", hs.login("carol", PASSWORD))


async def test_the_same_registration_works_the_same(server: Server, as_port: int, tmp_path: Path) -> None:
    bridge = Bridge(server, as_port, tmp_path / "state.json")
    await bridge.start()
    try:
        assert await bridge.appservice.ping_self("same-1") >= 0
        status, room = await server.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
        assert status == 200, room
        room_id = room["room_id"]
        kitchen = bridge.appservice.intent.user(UserID("@sensor_kitchen:localhost"))
        await kitchen.ensure_registered()
        await kitchen.join_room(room_id)
        event_id = await kitchen.send_text(room_id, "21.5 °C")
        status, page = await server.call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b")
        assert [ev["sender"] for ev in page["chunk"] if ev["event_id"] == event_id] == ["@sensor_kitchen:localhost"]

        status, _ = await server.call("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/"
                                      "m.room.message/same-t1", {"msgtype": "m.text", "body": "hello sensors"})
        assert status == 200
        pushed = await bridge.next_message("hello sensors", timeout=30)
        assert (pushed.sender, pushed.room_id) == ("@carol:localhost", room_id)

        alias = urllib.parse.quote("#sensor_garden:localhost")
        status, body = await server.call("GET", f"/_matrix/client/v3/directory/room/{alias}")
        assert status == 200 and bridge.queried_aliases == ["#sensor_garden:localhost"], body

        status, body = await server.call("PUT", f"/_matrix/client/v3/directory/room/{urllib.parse.quote('#sensor_x:localhost')}",
                                         {"room_id": room_id})
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    finally:
        await bridge.stop()


async def test_to_device_for_a_virtual_users_device_reaches_the_as(server: Server, as_port: int,
                                                                   tmp_path: Path) -> None:
    bridge = EncryptedBridge(server, as_port, tmp_path / "state.json")  # type: ignore[arg-type]
    await bridge.start()
    try:
        # a ping that gets through ends Synapse's backoff for an AS that was down (between the tests)
        assert await bridge.appservice.ping_self("td-1") >= 0
        await bridge.appservice.intent.user(UserID(LOCK)).ensure_registered()
        server_as = Server(server.http_url or "", bridge.appservice.as_token)
        status, login = await server_as.call("POST", "/_matrix/client/v3/login", {
            "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "sensor_lock"},
            "device_id": "LOCKDEV"})
        assert status == 200, login
        status, who = await server_as.call("GET", masquerade("/account/whoami", "LOCKDEV"))
        assert (status, who["user_id"], who.get("device_id")) == (200, LOCK, "LOCKDEV"), who
        status, body = await server.call("PUT", f"/_matrix/client/v3/sendToDevice/{LOCK_COMMAND}/same-td1",
                                         {"messages": {LOCK: {"LOCKDEV": {"body": "open"}}}})
        assert status == 200, body
        got = await bridge.next_to_device("open", timeout=30)
        assert (got.sender, got.to_user_id, got.to_device_id) == ("@carol:localhost", LOCK, "LOCKDEV")
    finally:
        await bridge.stop()
