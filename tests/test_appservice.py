"""Application services (issue 17) with mautrix-python's `AppService`, the framework most bridges
use, against the hub started as a user would with a Synapse-style registration file listed in
`app_service_config_files`: the ping, a virtual user registered, joining and sending, a normal
user's message pushed in a transaction, an alias query creating a room lazily, exclusive
namespaces, an AS that is down while messages are sent, a hub restarted with a transaction pending,
and bad registration files stopping the start."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Protocol

import cbor2
import pytest
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.errors import MatrixRequestError
from mautrix.types import Event, RoomAlias, ReceiptType, RoomCreatePreset, UserID

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, free_port, gateway_cli

AS_TOKEN, HS_TOKEN = "as-secret-token-17", "hs-secret-token-17"


def registration(as_port: int, **extra: str) -> str:
    lines = "".join(f"{k}: {v}\n" for k, v in extra.items())
    return f"""id: sensorbridge
url: http://127.0.0.1:{as_port}
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: sensorbot
rate_limited: false
{lines}namespaces:
  users:
    - exclusive: true
      regex: '@sensor_.*:localhost'
  aliases:
    - exclusive: true
      regex: '#sensor_.*:localhost'
  rooms: []
"""


def new_hub(base: Path, registration_text: str, extra_toml: str = "") -> GatewayProcess:
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "bridge.yaml").write_text(registration_text)
    (data_dir / "gateway.toml").write_text('app_service_config_files = ["bridge.yaml"]\n' + extra_toml)
    return GatewayProcess(data_dir)


@pytest.fixture(scope="module")
def as_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, as_port: int) -> Iterator[GatewayProcess]:
    gw = new_hub(Path(tmp_path_factory.mktemp("ashub")), registration(as_port, receive_ephemeral="true"))
    gw.start()
    gw.add_user("carol", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


class HasUrl(Protocol):
    """The hub (GatewayProcess) or Synapse (test_appservice_synapse.py): its client API's URL."""

    http_url: str | None


class Bridge:
    """A mautrix AppService collecting the events pushed to it, and the room it makes on an alias query."""

    def __init__(self, hub: HasUrl, port: int, state: Path) -> None:
        self.port = port
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.queried_aliases: list[str] = []
        self.queried_users: list[str] = []
        self.appservice = AppService(server=hub.http_url or "", domain="localhost", as_token=AS_TOKEN,
                                     hs_token=HS_TOKEN, bot_localpart="sensorbot", id="sensorbridge",
                                     state_store=FileASStateStore(state, binary=False),
                                     query_alias=self.query_alias, query_user=self.query_user,
                                     ephemeral_events=True)
        self.appservice.matrix_event_handler(self.on_event)

    async def on_event(self, event: Event) -> None:
        await self.events.put(event)

    async def query_alias(self, alias: RoomAlias) -> dict[str, Any] | None:
        self.queried_aliases.append(alias)
        localpart = alias[1:].split(":", 1)[0]
        room_id = await self.appservice.intent.create_room(alias_localpart=localpart, name=f"lazy {localpart}",
                                                           preset=RoomCreatePreset.PUBLIC)
        return {"room_id": room_id}  # mautrix answers 404 for an empty answer

    async def query_user(self, user_id: UserID) -> dict[str, Any] | None:
        self.queried_users.append(user_id)
        await self.appservice.intent.user(user_id).ensure_registered()
        return {"user_id": user_id}

    async def next_message(self, body: str | None = None, timeout: float = 20.0) -> Event:
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event.type.t == "m.room.message" and (body is None or event.content.body == body):
                return event

    async def start(self) -> None:
        await self.appservice.start(host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        await self.appservice.stop()


@pytest.fixture()
async def bridge(hub: GatewayProcess, as_port: int, tmp_path: Path) -> AsyncIterator[Bridge]:
    b = Bridge(hub, as_port, tmp_path / "mx-state.json")
    await b.start()
    yield b
    await b.stop()


async def test_ping_answers_duration_and_a_wrong_token_is_unknown(hub: GatewayProcess, bridge: Bridge) -> None:
    assert await bridge.appservice.ping_self("ping-1") >= 0
    status, body = hub.request("POST", "/_matrix/client/v1/appservice/sensorbridge/ping", {}, token="wrong")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = hub.request("POST", "/_matrix/client/v1/appservice/other/ping", {}, token=AS_TOKEN)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = hub.request("GET", "/_matrix/client/v3/account/whoami", token=AS_TOKEN)
    assert (status, body["user_id"]) == (200, "@sensorbot:localhost")


async def test_a_virtual_user_registers_joins_sends_and_a_user_reads_it(hub: GatewayProcess, bridge: Bridge) -> None:
    carol = hub.login("carol", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=carol)
    assert status == 200
    room_id = room["room_id"]
    kitchen = bridge.appservice.intent.user(UserID("@sensor_kitchen:localhost"))
    await kitchen.ensure_registered()  # m.login.application_service, registration closed
    await kitchen.join_room(room_id)
    event_id = await kitchen.send_text(room_id, "21.5 °C")
    status, page = hub.request("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b",
                               token=carol)
    sent = [ev for ev in page["chunk"] if ev["event_id"] == event_id]
    assert sent and sent[0]["sender"] == "@sensor_kitchen:localhost" and sent[0]["content"]["body"] == "21.5 °C"

    # carol's message reaches the AS: one of its users is in the room
    status, _ = hub.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/t1",
                            {"msgtype": "m.text", "body": "hello sensors"}, token=carol)
    assert status == 200
    pushed = await bridge.next_message("hello sensors")
    assert (pushed.sender, pushed.room_id) == ("@carol:localhost", room_id)

    # masquerading outside the namespace is refused; a wrong as_token is M_UNKNOWN_TOKEN
    status, body = hub.request("GET", "/_matrix/client/v3/account/whoami?user_id=%40carol%3Alocalhost",
                               token=AS_TOKEN)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = hub.request("GET", "/_matrix/client/v3/account/whoami?user_id=%40sensor_kitchen%3Alocalhost",
                               token=AS_TOKEN)
    assert (status, body["user_id"]) == (200, "@sensor_kitchen:localhost")


async def test_typing_and_receipts_reach_an_as_with_receive_ephemeral(hub: GatewayProcess, bridge: Bridge) -> None:
    carol = hub.login("carol", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"invite": ["@sensorbot:localhost"]},
                               token=carol)
    room_id = room["room_id"]
    await bridge.appservice.intent.join_room(room_id)
    quoted = urllib.parse.quote(room_id)
    status, sent = await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{quoted}/send/m.room.message/e1",
                                           {"msgtype": "m.text", "body": "typing next"}, token=carol)
    await bridge.next_message("typing next")
    await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{quoted}/typing/%40carol%3Alocalhost",
                            {"typing": True, "timeout": 10000}, token=carol)
    await asyncio.to_thread(hub.request, "POST", f"/_matrix/client/v3/rooms/{quoted}/receipt/m.read/"
                            f"{urllib.parse.quote(sent['event_id'])}", {}, token=carol)
    seen: dict[str, Any] = {}
    while len(seen) < 2:
        event = await asyncio.wait_for(bridge.events.get(), 20)
        if event.type.t in ("m.typing", "m.receipt") and getattr(event, "room_id", None) == room_id:
            seen[event.type.t] = event
    assert "@carol:localhost" in seen["m.typing"].content.user_ids
    assert "@carol:localhost" in seen["m.receipt"].content[sent["event_id"]][ReceiptType.READ]


async def test_a_profile_lookup_asks_the_as_for_an_unknown_user(hub: GatewayProcess, bridge: Bridge) -> None:
    carol = hub.login("carol", PASSWORD)
    status, body = await asyncio.to_thread(hub.request, "GET", "/_matrix/client/v3/profile/%40sensor_attic%3Alocalhost",
                                           token=carol)
    assert status == 200, body  # the AS registered it when asked (a lazy user)
    status, body = await asyncio.to_thread(hub.request, "GET", "/_matrix/client/v3/profile/%40nobody%3Alocalhost",
                                           token=carol)
    assert status == 404
    assert bridge.queried_users == ["@sensor_attic:localhost"]  # not asked about users outside its namespace
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {}, token=carol)
    status, _ = await asyncio.to_thread(hub.request, "POST", f"/_matrix/client/v3/rooms/"
                                        f"{urllib.parse.quote(room['room_id'])}/invite",
                                        {"user_id": "@sensor_porch:localhost"}, token=carol)
    assert status == 200 and bridge.queried_users[-1] == "@sensor_porch:localhost"  # asked at the invite
    status, _ = await asyncio.to_thread(hub.request, "GET", "/_matrix/client/v3/profile/%40sensor_porch%3Alocalhost",
                                        token=carol)
    assert status == 200 and len(bridge.queried_users) == 2  # made then: no second query


def test_the_as_is_not_rate_limited_a_user_is_and_open_registration_keeps_out_of_its_namespace(
        tmp_path: Path) -> None:
    # a low message rate: the AS (rate_limited: false) is not held to it, a normal user is
    with new_hub(tmp_path, registration(free_port()),
                 "messages_per_second = 0.2\nmessages_burst = 5\nenable_registration = true\n") as gw:
        for username, expected in (("sensor_evil", (400, "M_EXCLUSIVE")), ("frank", (200, None))):
            status, body = gw.request("POST", "/_matrix/client/v3/register", {
                "username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
            assert (status, body.get("errcode")) == expected
        gw.add_user("erin", PASSWORD)
        erin = gw.login("erin", PASSWORD)
        status, room = gw.request("POST", "/_matrix/client/v3/createRoom", {"invite": ["@sensorbot:localhost"]},
                                  token=erin)
        room_id = urllib.parse.quote(room["room_id"])
        assert gw.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, token=AS_TOKEN)[0] == 200
        for i in range(20):  # four times the burst
            status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/as{i}",
                                      {"msgtype": "m.text", "body": str(i)}, token=AS_TOKEN)
            assert status == 200, body
        statuses = [gw.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/e{i}",
                               {"msgtype": "m.text", "body": str(i)}, token=erin)[0] for i in range(10)]
        assert 429 in statuses


def test_a_ping_of_an_as_that_is_down_is_connection_failed(hub: GatewayProcess) -> None:
    status, body = hub.request("POST", "/_matrix/client/v1/appservice/sensorbridge/ping",
                               {"transaction_id": "t"}, token=AS_TOKEN)
    assert (status, body["errcode"]) == (502, "M_CONNECTION_FAILED")


async def test_an_alias_query_creates_the_room_lazily(hub: GatewayProcess, bridge: Bridge) -> None:
    carol = hub.login("carol", PASSWORD)
    # (off the loop: the AS answers the hub's query in this same loop)
    alias = "#sensor_garden:localhost"
    status, body = await asyncio.to_thread(hub.request, "GET", f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias)}", token=carol)
    assert status == 200, body
    assert bridge.queried_aliases == [alias] and body["room_id"].startswith("!")
    status, joined = await asyncio.to_thread(hub.request, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote('#sensor_cellar:localhost')}",
                                 {}, token=carol)
    assert status == 200, joined
    status, body = await asyncio.to_thread(hub.request, "GET", f"/_matrix/client/v3/directory/room/{urllib.parse.quote('#other:localhost')}",
                               token=carol)
    assert status == 404 and len(bridge.queried_aliases) == 2  # not in the namespace: not asked


async def test_exclusive_namespaces_are_refused_to_normal_users(hub: GatewayProcess) -> None:
    carol = hub.login("carol", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {}, token=carol)
    status, body = hub.request("PUT", f"/_matrix/client/v3/directory/room/{urllib.parse.quote('#sensor_x:localhost')}",
                               {"room_id": room["room_id"]}, token=carol)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    status, body = hub.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "sensor_y"}, token=carol)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    # the AS itself may not register outside its namespace
    status, body = hub.request("POST", "/_matrix/client/v3/register",
                               {"type": "m.login.application_service", "username": "mallory"}, token=AS_TOKEN)
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    status, body = hub.request("POST", "/_matrix/client/v3/register",
                               {"type": "m.login.application_service", "username": "sensor_z"}, token="wrong")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_an_as_that_was_down_gets_every_message_in_order(hub: GatewayProcess, as_port: int,
                                                               tmp_path: Path) -> None:
    bridge = Bridge(hub, as_port, tmp_path / "state.json")
    await bridge.start()
    carol = hub.login("carol", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom",
                               {"invite": ["@sensorbot:localhost"]}, token=carol)
    room_id = room["room_id"]
    await bridge.appservice.intent.join_room(room_id)
    hub.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/warm",
                {"msgtype": "m.text", "body": "warm-up"}, token=carol)
    await bridge.next_message("warm-up")
    await bridge.stop()
    for i in range(5):
        status, _ = hub.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/d{i}",
                                {"msgtype": "m.text", "body": f"down {i}"}, token=carol)
        assert status == 200  # the AS being down costs a send nothing
    bridge = Bridge(hub, as_port, tmp_path / "state2.json")
    await bridge.start()
    try:
        got = [(await bridge.next_message()).content.body for _ in range(5)]
        assert got == [f"down {i}" for i in range(5)]
    finally:
        await bridge.stop()


async def test_a_pending_transaction_survives_a_hub_restart(tmp_path: Path) -> None:
    port = free_port()
    gw = new_hub(tmp_path, registration(port))
    gw.start()
    try:
        gw.add_user("dave", PASSWORD)
        dave = gw.login("dave", PASSWORD)
        status, room = gw.request("POST", "/_matrix/client/v3/createRoom", {"invite": ["@sensorbot:localhost"]},
                                  token=dave)
        room_id = room["room_id"]
        for i in range(3):  # the AS is not running: its transaction stays pending
            status, _ = gw.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/"
                                   f"m.room.message/r{i}", {"msgtype": "m.text", "body": f"while down {i}"},
                                   token=dave)
            assert status == 200
        assert gw.stop() == 0
        with sqlite3.connect(gw.data_dir / "homeserver.db") as db:  # stopped with the transaction pending
            assert db.execute("SELECT txn_upto FROM appservice_state").fetchone()[0] is not None
        gw.start()
        bridge = Bridge(gw, port, tmp_path / "state.json")
        await bridge.start()
        try:
            got = [(await bridge.next_message()).content.body for _ in range(3)]
            assert got == [f"while down {i}" for i in range(3)]
        finally:
            await bridge.stop()
    finally:
        assert gw.stop() == 0, gw.read_log()


@pytest.mark.parametrize("text, words", [
    (registration(1).replace("'@sensor_.*:localhost'", "'@sensor_(.*'"), "not a valid regular expression"),
    (registration(1).replace("as_token: as-secret-token-17\n", ""), "'as_token' is required"),
])
def test_a_bad_registration_file_stops_the_start(tmp_path: Path, text: str, words: str) -> None:
    gw = new_hub(tmp_path, text)
    proc = gateway_cli(*gw.run_args(), check=False, timeout=30)
    assert proc.returncode == 2 and words in proc.stderr and "bridge.yaml" in proc.stderr


def test_two_appservices_with_one_exclusive_namespace_stop_the_start(tmp_path: Path) -> None:
    gw = new_hub(tmp_path, registration(1))
    other = registration(2).replace("id: sensorbridge", "id: other").replace(AS_TOKEN, "t2").replace(
        HS_TOKEN, "h2").replace("sender_localpart: sensorbot", "sender_localpart: otherbot")
    (gw.data_dir / "other.yaml").write_text(other)
    (gw.data_dir / "gateway.toml").write_text('app_service_config_files = ["bridge.yaml", "other.yaml"]\n')
    proc = gateway_cli(*gw.run_args(), check=False, timeout=30)
    assert proc.returncode == 2 and "overlaps the exclusive namespace" in proc.stderr and "other" in proc.stderr


async def test_appservice_add_list_remove_apply_to_a_running_hub(tmp_path: Path) -> None:
    """`matrix-gateway appservice add FILE` checks the file against the others and a running hub
    takes it within seconds (the ping works); `remove` takes it away again (the token stops working)."""
    port = free_port()
    gw = GatewayProcess(tmp_path / "data")
    with gw:
        data = ["--data-dir", str(gw.data_dir)]
        reg_file = tmp_path / "bridge.yaml"
        reg_file.write_text(registration(port))
        bad = tmp_path / "bad.yaml"
        bad.write_text(registration(port).replace("'@sensor_.*:localhost'", "'@sensor_(.*'"))
        refused = gateway_cli("appservice", "add", str(bad), *data, check=False)
        assert refused.returncode == 2 and "not a valid regular expression" in refused.stderr
        assert "added appservice sensorbridge" in gateway_cli("appservice", "add", str(reg_file), *data).stdout
        twice = gateway_cli("appservice", "add", str(reg_file), *data, check=False)
        assert twice.returncode == 2 and "already registered" in twice.stderr
        assert gateway_cli("appservice", "list", *data).stdout.startswith(f"sensorbridge\thttp://127.0.0.1:{port}\t")

        bridge = Bridge(gw, port, tmp_path / "state.json")
        await bridge.start()
        try:
            async def pinged() -> int:
                while True:  # the hub's watcher applies the file within a few seconds
                    try:
                        return await bridge.appservice.ping_self()
                    except MatrixRequestError:
                        await asyncio.sleep(0.2)
            assert await asyncio.wait_for(pinged(), 15) >= 0
        finally:
            await bridge.stop()
        assert "removed appservice" in gateway_cli("appservice", "remove", "sensorbridge", *data).stdout
        assert gateway_cli("appservice", "list", *data).stdout == ""

        async def refused_now() -> int:
            while True:
                status, _ = await asyncio.to_thread(gw.request, "GET", "/_matrix/client/v3/account/whoami",
                                                    token=AS_TOKEN)
                if status == 401:
                    return status
                await asyncio.sleep(0.2)
        assert await asyncio.wait_for(refused_now(), 15) == 401


def test_a_coap_device_acts_as_a_virtual_user_through_the_as_token(hub: GatewayProcess) -> None:
    """CoAP dispatches through the same route table: libcoap's coap-client posts a reading as one
    of the AS's users (`?a=AS_TOKEN&user_id=...`), read back over HTTP."""
    status, _ = hub.request("POST", "/_matrix/client/v3/register",
                            {"type": "m.login.application_service", "username": "sensor_coap",
                             "inhibit_login": True}, token=AS_TOKEN)
    assert status == 200
    carol = hub.login("carol", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=carol)
    room_id = urllib.parse.quote(room["room_id"])
    as_user = "user_id=%40sensor_coap%3Alocalhost"
    assert hub.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join?{as_user}", {}, token=AS_TOKEN)[0] == 200
    proc = subprocess.run(["coap-client-notls", "-m", "post", "-f", "-", "-o", "-",
                           f"coap://127.0.0.1:{hub.coap_port}/_m/c/v3/r/{room_id}/s/m.room.message?a={AS_TOKEN}&"
                           f"{as_user}"], input=cbor2.dumps({"msgtype": "m.text", "body": "22 C over CoAP"}),
                          capture_output=True, timeout=20)
    event_id = cbor2.loads(proc.stdout)["event_id"]
    # the AS may also give the user a device of its own (m.login.application_service login)
    status, login = hub.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "sensor_coap"}},
        token=AS_TOKEN)
    assert status == 200 and login["user_id"] == "@sensor_coap:localhost"
    assert hub.request("GET", "/_matrix/client/v3/account/whoami", token=login["access_token"])[1]["user_id"] == \
        "@sensor_coap:localhost"
    status, body = hub.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "carol"}}, token=AS_TOKEN)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, event = hub.request("GET", f"/_matrix/client/v3/rooms/{room_id}/event/{urllib.parse.quote(event_id)}",
                                token=carol)
    assert (event["sender"], event["content"]["body"]) == ("@sensor_coap:localhost", "22 C over CoAP")


async def test_an_as_answering_500_gets_the_same_transaction_again(hub: GatewayProcess, as_port: int) -> None:
    """A plain aiohttp AS that answers its first two transactions 500: the hub retries the same
    transaction id with the same events (backoff from 0.25 s) and sends never wait; its ping is
    M_BAD_STATUS with the AS's status and body."""
    from aiohttp import web

    seen: list[tuple[str, list[str]]] = []
    got_all = asyncio.Event()

    async def transaction(request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Authorization"] == f"Bearer {HS_TOKEN}"
        seen.append((request.match_info["txn"], [ev["content"].get("body") for ev in body["events"]]))
        if len(seen) <= 2:
            return web.json_response({"error": "busy"}, status=500)
        if any("flaky 2" in (b or "") for _, bodies in seen[2:] for b in bodies):
            got_all.set()
        return web.json_response({})

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=500, text="not today")

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", transaction)
    app.router.add_post("/_matrix/app/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", as_port).start()
    try:
        carol = hub.login("carol", PASSWORD)
        status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"invite": ["@sensorbot:localhost"]},
                                   token=carol)
        room_id = urllib.parse.quote(room["room_id"])
        assert hub.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, token=AS_TOKEN)[0] == 200
        for i in range(3):
            status, _ = await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/"
                                                f"m.room.message/f{i}", {"msgtype": "m.text", "body": f"flaky {i}"},
                                                token=carol)
            assert status == 200
        await asyncio.wait_for(got_all.wait(), 20)
        assert seen[0] == seen[1] and seen[1][0] == seen[2][0]  # retried: same id, same events
        delivered = [b for _, bodies in seen[2:] for b in bodies if b and b.startswith("flaky")]
        assert delivered == ["flaky 0", "flaky 1", "flaky 2"]
        status, body = await asyncio.to_thread(hub.request, "POST", "/_matrix/client/v1/appservice/sensorbridge/ping",
                                               {}, token=AS_TOKEN)
        assert (status, body["errcode"], body["status"], body["body"]) == (502, "M_BAD_STATUS", 500, "not today")
    finally:
        await runner.cleanup()


def test_backup_and_restore_keep_an_added_appservice(tmp_path: Path) -> None:
    """`matrix-gateway backup` carries DATA_DIR/appservices/ (what `appservice add` installed):
    the restored hub has the AS registered (listed, and its as_token is its bot)."""
    gw = GatewayProcess(tmp_path / "data")
    reg_file = tmp_path / "bridge.yaml"
    reg_file.write_text(registration(free_port()))
    with gw:
        gateway_cli("appservice", "add", str(reg_file), "--data-dir", str(gw.data_dir))
        deadline = time.monotonic() + 15
        while gw.request("GET", "/_matrix/client/v3/account/whoami", token=AS_TOKEN)[0] != 200:
            assert time.monotonic() < deadline, "the running hub never applied the added appservice"
            time.sleep(0.2)  # the hub's watcher polls the folder (no event to wait on from outside)
        gateway_cli("backup", str(tmp_path / "hub.backup"), "--data-dir", str(gw.data_dir))
    target = tmp_path / "restored"
    gateway_cli("restore", str(tmp_path / "hub.backup"), "--data-dir", str(target))
    assert (target / "appservices" / "sensorbridge.yaml").read_text() == reg_file.read_text()
    assert (target / "appservices").stat().st_mode & 0o077 == 0  # it holds the tokens
    assert gateway_cli("appservice", "list", "--data-dir", str(target)).stdout.startswith("sensorbridge\t")
    with GatewayProcess(target) as copy:
        status, who = copy.request("GET", "/_matrix/client/v3/account/whoami", token=AS_TOKEN)
        assert (status, who["user_id"]) == (200, "@sensorbot:localhost")


async def test_a_failed_ephemeral_transaction_does_not_lend_its_id_to_the_next_one(hub: GatewayProcess,
                                                                                     as_port: int) -> None:
    """Transaction ids are for idempotency: an AS that handled a transaction but whose answer was
    lost (here: a 500 after it saw it) drops that id when it comes again. A typing-only
    transaction that failed must not give its id to the next transaction, which carries events."""
    from aiohttp import web

    seen: dict[str, list[dict[str, Any]]] = {}  # txn id -> every body sent with it
    failed_typing = asyncio.Event()
    got_message = asyncio.Event()
    joined = asyncio.Event()

    async def transaction(request: web.Request) -> web.Response:
        body = await request.json()
        seen.setdefault(request.match_info["txn"], []).append(body)
        if any(ev["type"] == "m.room.member" and ev["state_key"] == "@sensorbot:localhost" for ev in body["events"]):
            joined.set()
        if not body["events"] and any(ev.get("type") == "m.typing" for ev in body.get("ephemeral", [])) \
                and not failed_typing.is_set():
            failed_typing.set()
            return web.json_response({"error": "lost answer"}, status=500)
        if any(ev["content"].get("body") == "after typing" for ev in body["events"]):
            got_message.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", transaction)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", as_port).start()
    try:
        carol = hub.login("carol", PASSWORD)
        status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"invite": ["@sensorbot:localhost"]},
                                   token=carol)
        room_id = urllib.parse.quote(room["room_id"])
        assert hub.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, token=AS_TOKEN)[0] == 200
        await asyncio.wait_for(joined.wait(), 20)  # the typing goes alone, in a transaction of its own
        await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/%40carol%3Alocalhost",
                                {"typing": True, "timeout": 10000}, token=carol)
        await asyncio.wait_for(failed_typing.wait(), 20)
        status, _ = await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/"
                                            "m.room.message/t1", {"msgtype": "m.text", "body": "after typing"},
                                            token=carol)
        assert status == 200
        await asyncio.wait_for(got_message.wait(), 20)
        reused = {txn: bodies for txn, bodies in seen.items() if any(b != bodies[0] for b in bodies)}
        assert not reused, f"one transaction id, different content: {reused}"
    finally:
        await runner.cleanup()
