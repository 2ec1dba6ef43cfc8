"""Device management and the account behind user-interactive auth (issue 13), against the hub
started with the CLI: raw HTTP for each endpoint and error case (nothing stored on an error),
matrix-nio for the device flows, and a lost phone's token ending its MQTT connection."""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from nio import AsyncClient, DeleteDevicesAuthResponse, DeleteDevicesResponse, DevicesResponse, LoginResponse

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho

WAIT = 10.0
V3 = "/_matrix/client/v3"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def login(gw: GatewayProcess, user: str, device_id: str, name: str | None = None, password: str = PASSWORD) -> str:
    body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": password, "device_id": device_id}
    if name is not None:
        body["initial_device_display_name"] = name
    status, answer = gw.request("POST", f"{V3}/login", body)
    assert status == 200, answer
    return str(answer["access_token"])


def devices(gw: GatewayProcess, token: str) -> dict[str, dict[str, Any]]:
    status, body = gw.request("GET", f"{V3}/devices", token=token)
    assert status == 200, body
    return {d["device_id"]: d for d in body["devices"]}


def alive(gw: GatewayProcess, token: str) -> bool:
    status, body = gw.request("GET", f"{V3}/account/whoami", token=token)
    assert status == 200 or (status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"), body
    return status == 200


def password_auth(user: str, password: str = PASSWORD, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": password}
    if session is not None:
        auth["session"] = session
    return auth


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> GatewayProcess:
    for name in ("carol", "dave", "erin", "frank"):
        gateway.add_user(name, PASSWORD)
    return gateway


def test_list_get_rename_with_last_seen_and_errors(hub: GatewayProcess) -> None:
    phone = login(hub, "alice", "PHONE", "Alice's phone")
    bob = login(hub, "bob", "BOBPHONE", "Bob's phone")
    before = int(time.time() * 1000)
    listed = devices(hub, phone)
    assert listed["PHONE"]["display_name"] == "Alice's phone"
    assert listed["PHONE"]["last_seen_ip"] == "127.0.0.1"
    assert before - 1000 <= listed["PHONE"]["last_seen_ts"] <= int(time.time() * 1000)
    assert "BOBPHONE" not in listed
    status, one = hub.request("GET", f"{V3}/devices/PHONE", token=phone)
    assert status == 200 and one["device_id"] == "PHONE" and one["display_name"] == "Alice's phone"

    # Unknown devices and other users' devices: 404 M_NOT_FOUND, told apart by nothing.
    for path in ("devices/NOPE", "devices/BOBPHONE"):
        status, body = hub.request("GET", f"{V3}/{path}", token=phone)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
        status, body = hub.request("PUT", f"{V3}/{path}", {"display_name": "stolen"}, token=phone)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
    assert devices(hub, bob)["BOBPHONE"]["display_name"] == "Bob's phone"

    assert hub.request("PUT", f"{V3}/devices/PHONE", {"display_name": "Kitchen tablet", "x": 1}, token=phone)[0] == 200
    assert devices(hub, phone)["PHONE"]["display_name"] == "Kitchen tablet"
    assert hub.request("PUT", f"{V3}/devices/PHONE", {}, token=phone)[0] == 200  # absent: unchanged
    bad = [({"display_name": 5}, 400, "M_BAD_JSON"), ({"display_name": "x" * 101}, 400, "M_TOO_LARGE"),
           (b"{not json", 400, "M_NOT_JSON"), ([1], 400, "M_BAD_JSON")]
    for body, code, errcode in bad:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, answer = hub.request("PUT", f"{V3}/devices/PHONE", token=phone, raw=raw)
        assert (status, answer["errcode"]) == (code, errcode), (body, answer)
    assert devices(hub, phone)["PHONE"]["display_name"] == "Kitchen tablet"  # nothing stored
    status, body = hub.request("GET", f"{V3}/devices")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


def test_a_lost_phone_is_logged_out_with_the_password(hub: GatewayProcess) -> None:
    """The 401 flows/session dance of DELETE /devices/{id}; each wrong attempt leaves the device
    and its token alone; the right one ends the token and the lost phone's MQTT connection."""
    lost = login(hub, "carol", "LOSTPHONE")
    laptop = login(hub, "carol", "LAPTOP")
    mqtt_conn = Paho(hub.mqtt_port, "carol", lost, "lost-phone", protocol=mqtt.MQTTv5)
    try:
        assert mqtt_conn.connect()[1] == 0
        path = f"{V3}/devices/LOSTPHONE"
        status, challenge = hub.request("DELETE", path, token=laptop)  # no body at all
        assert status == 401, challenge
        assert challenge["flows"] == [{"stages": ["m.login.password"]}] and challenge["params"] == {}
        assert "errcode" not in challenge and challenge["completed"] == []
        session = challenge["session"]

        attempts = [
            (password_auth("carol", "wrong", session), 401, "M_FORBIDDEN"),
            ({"type": "m.login.dummy", "session": session}, 401, "M_UNRECOGNIZED"),
            (password_auth("bob", PASSWORD, session), 403, "M_FORBIDDEN"),  # another user's password
            (password_auth("carol", PASSWORD, "no-such-session"), 400, "M_UNKNOWN"),
            ("not an object", 400, "M_BAD_JSON"),
            ({"type": "m.login.password", "session": session}, 400, "M_BAD_JSON"),  # no password
        ]
        for auth, code, errcode in attempts:
            status, body = hub.request("DELETE", path, {"auth": auth}, token=laptop)
            assert (status, body.get("errcode")) == (code, errcode), (auth, body)
            if status == 401:  # the UIA body: the same session, flows, and the error
                assert body["session"] == session and body["flows"] == challenge["flows"], body
        # The session belongs to this request: it cannot delete another device.
        status, body = hub.request("DELETE", f"{V3}/devices/LAPTOP", {"auth": password_auth("carol", PASSWORD, session)},
                                   token=laptop)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        assert alive(hub, lost) and "LOSTPHONE" in devices(hub, laptop) and mqtt_conn.disconnects.empty()

        status, body = hub.request("DELETE", path, {"auth": password_auth("carol", PASSWORD, session)}, token=laptop)
        assert (status, body) == (200, {})
        assert mqtt_conn.disconnects.get(timeout=WAIT) == 0x98  # Administrative action: at once
        assert not alive(hub, lost)
        assert set(devices(hub, laptop)) == {"LAPTOP"}
        # the session is spent; a device already gone is 200 (the spec) after the password
        status, body = hub.request("DELETE", path, {"auth": password_auth("carol", PASSWORD, session)}, token=laptop)
        assert (status, body["errcode"]) == (400, "M_UNKNOWN"), body
        status, body = hub.request("DELETE", path, {"auth": password_auth("carol")}, token=laptop)
        assert status == 200, body
    finally:
        mqtt_conn.disconnect()


def test_delete_devices_in_bulk(hub: GatewayProcess) -> None:
    current = login(hub, "dave", "D-CURRENT")
    others = {d: login(hub, "dave", d) for d in ("D-1", "D-2", "D-3")}
    path = f"{V3}/delete_devices"
    for body in ({}, {"devices": "D-1"}, {"devices": [1]}):
        status, answer = hub.request("POST", path, body, token=current)
        assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), answer
    status, challenge = hub.request("POST", path, {"devices": ["D-1", "D-2", "NOPE"]}, token=current)
    assert status == 401 and challenge["flows"] == [{"stages": ["m.login.password"]}]
    # auth with @dave:localhost as identifier and the session
    status, body = hub.request("POST", path, {"devices": ["D-1", "D-2", "NOPE"], "auth": password_auth(
        "@dave:localhost", PASSWORD, challenge["session"])}, token=current)
    assert (status, body) == (200, {})
    assert set(devices(hub, current)) == {"D-CURRENT", "D-3"}
    assert [alive(hub, t) for t in others.values()] == [False, False, True]


def test_logout_drops_the_device_and_logout_all_every_device(hub: GatewayProcess) -> None:
    keep = login(hub, "erin", "E-KEEP")
    temp = login(hub, "erin", "E-TEMP")
    assert hub.request("POST", f"{V3}/logout", {}, token=temp)[0] == 200
    assert set(devices(hub, keep)) == {"E-KEEP"}
    login(hub, "erin", "E-OTHER")
    assert hub.request("POST", f"{V3}/logout/all", {}, token=keep)[0] == 200
    assert devices(hub, login(hub, "erin", "E-NEW")).keys() == {"E-NEW"}


def test_change_password_logs_out_other_devices(hub: GatewayProcess) -> None:
    current = login(hub, "frank", "F-CURRENT")
    other = login(hub, "frank", "F-OTHER")
    path = f"{V3}/account/password"
    status, body = hub.request("POST", path, {"new_password": 5}, token=current)
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, challenge = hub.request("POST", path, {"new_password": "new one"}, token=current)
    assert status == 401, challenge
    status, body = hub.request("POST", path, {"new_password": "new one", "auth": password_auth(
        "frank", "not the old one", challenge["session"])}, token=current)
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN")
    assert hub.login("frank", PASSWORD)  # nothing changed
    status, body = hub.request("POST", path, {"new_password": "new one", "auth": password_auth(
        "frank", PASSWORD, challenge["session"])}, token=current)
    assert (status, body) == (200, {})
    assert alive(hub, current) and not alive(hub, other)
    assert set(devices(hub, current)) == {"F-CURRENT"}
    status, body = hub.request("POST", f"{V3}/login", {"type": "m.login.password", "user": "frank",
                                                       "password": PASSWORD})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    kept = login(hub, "frank", "F-KEPT", password="new one")
    # logout_devices false: the other devices stay
    status, body = hub.request("POST", path, {"new_password": PASSWORD, "logout_devices": False,
                                              "auth": password_auth("frank", "new one")}, token=current)
    assert status == 200, body
    assert alive(hub, kept) and set(devices(hub, current)) == {"F-CURRENT", "F-KEPT"}

    caps = hub.request("GET", f"{V3}/capabilities", token=current)[1]["capabilities"]
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": False}
    assert caps["m.set_displayname"] == caps["m.set_avatar_url"] == {"enabled": True}
    assert hub.request("GET", f"{V3}/account/3pid", token=current) == (200, {"threepids": []})


def test_deactivate_account(hub: GatewayProcess) -> None:
    hub.add_user("grace", PASSWORD)
    token = login(hub, "grace", "G-1")
    other = login(hub, "grace", "G-2")
    path = f"{V3}/account/deactivate"
    status, challenge = hub.request("POST", path, {}, token=token)
    assert status == 401
    status, body = hub.request("POST", path, {"erase": True, "auth": password_auth("grace")}, token=token)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM") and alive(hub, token)
    status, body = hub.request("POST", path, {"auth": password_auth("grace", PASSWORD, challenge["session"])},
                               token=token)
    assert (status, body) == (200, {"id_server_unbind_result": "no-support"})
    assert not alive(hub, token) and not alive(hub, other)
    status, body = hub.request("POST", f"{V3}/login", {"type": "m.login.password", "user": "grace",
                                                       "password": PASSWORD})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_nio_lists_and_deletes_devices_with_auth(hub: GatewayProcess) -> None:
    hub.add_user("heidi", PASSWORD)
    lost = login(hub, "heidi", "NIO-LOST")
    client = AsyncClient(hub.http_url, "@heidi:localhost")
    try:
        logged = await client.login(PASSWORD, device_name="heidi-nio")
        assert isinstance(logged, LoginResponse), logged
        listed = await client.devices()
        assert isinstance(listed, DevicesResponse), listed
        by_id = {d.id: d for d in listed.devices}
        assert set(by_id) == {"NIO-LOST", client.device_id}
        assert by_id[client.device_id].display_name == "heidi-nio"
        assert by_id[client.device_id].last_seen_ip == "127.0.0.1"

        first = await client.delete_devices(["NIO-LOST"])
        assert isinstance(first, DeleteDevicesAuthResponse), first
        auth = {"type": "m.login.password", "user": "heidi", "password": PASSWORD, "session": first.session}
        done = await client.delete_devices(["NIO-LOST"], auth)
        assert isinstance(done, DeleteDevicesResponse), done
        assert [d.id for d in (await client.devices()).devices] == [client.device_id]  # type: ignore[union-attr]
        assert not alive(hub, lost)
    finally:
        await client.close()


# -- discovery and VoIP ---------------------------------------------------------------------

def raw_get(gw: GatewayProcess, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=WAIT)
    try:
        conn.putrequest("GET", path, skip_host=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def test_well_known_answers_the_url_the_request_came_in_on(hub: GatewayProcess) -> None:
    status, headers, body = raw_get(hub, "/.well-known/matrix/client", {"Host": f"127.0.0.1:{hub.http_port}"})
    assert status == 200 and body == {"m.homeserver": {"base_url": f"http://127.0.0.1:{hub.http_port}"}}
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Content-Type"] == "application/json"
    status, _, body = raw_get(hub, "/.well-known/matrix/client", {"Host": "hub.local:8008"})
    assert body == {"m.homeserver": {"base_url": "http://hub.local:8008"}}
    # HTTP/1.0 without a Host header: the address of the listener it came in on
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=WAIT) as sock:
        sock.sendall(b"GET /.well-known/matrix/client HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload) == {"m.homeserver": {"base_url": f"http://127.0.0.1:{hub.http_port}"}}
    status, _, body = raw_get(hub, "/.well-known/matrix/server", {"Host": "x"})
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")


def test_turn_server_is_empty_without_turn(hub: GatewayProcess) -> None:
    token = hub.login("alice", PASSWORD)
    assert hub.request("GET", f"{V3}/voip/turnServer", token=token) == (200, {})
    status, body = hub.request("GET", f"{V3}/voip/turnServer")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A hub behind a reverse proxy, with a TURN server (config file written before first run)."""
    data_dir = Path(tmp_path_factory.mktemp("proxied")) / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "gateway.toml").write_text(
        'public_base_url = "https://hub.example.org/"\n'
        'turn_uris = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]\n'
        'turn_shared_secret = "s3cret"\nturn_user_lifetime_s = 3600\n')
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("alice", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def test_configured_base_url_and_turn_credentials(configured: GatewayProcess) -> None:
    status, _, body = raw_get(configured, "/.well-known/matrix/client", {"Host": "127.0.0.1"})
    assert body == {"m.homeserver": {"base_url": "https://hub.example.org"}}
    token = configured.login("alice", PASSWORD)
    before = int(time.time())
    status, turn = configured.request("GET", f"{V3}/voip/turnServer", token=token)
    assert status == 200, turn
    expiry, _, user = turn["username"].partition(":")
    assert user == "@alice:localhost" and before + 3600 <= int(expiry) <= int(time.time()) + 3600
    expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["password"] == expected  # what coturn's use-auth-secret computes
    assert turn["uris"] == ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]
    assert turn["ttl"] == 3600


async def test_last_seen_costs_one_write_per_device_every_five_minutes(tmp_path: Path) -> None:
    """A device making a request every second: the times and addresses answered are the newest,
    while the store is written at most once per LAST_SEEN_WRITE_MS; a stop writes the rest."""
    from matrix_core.homeserver import Homeserver, HomeserverSettings
    from matrix_core.service.devices import LAST_SEEN_WRITE_MS
    from matrix_core.signing import generate_signing_key
    from matrix_core.store import accounts as account_rows
    from matrix_core.store import devices as device_rows

    settings = HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key())
    hs = Homeserver(settings)
    now = [1_000_000]
    hs.devices.clock = lambda: now[0]
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        token = await hs.db.write(lambda c: account_rows.insert_device_token(c, "@a:hub", "SENSOR"))
        await hs.accounts.authenticate(token)
        for second in range(600):  # ten minutes of one request a second
            now[0] = 1_000_000 + second * 1000
            hs.devices.seen(token, f"10.0.0.{second % 3}")
        assert hs.devices.last_seen_writes == 2  # at 0 s and at 300 s
        hs.devices.seen("not a token", "10.9.9.9")  # unknown tokens cost nothing either
        assert hs.devices.last_seen_writes == 2
        listed = await hs.devices.of_user("@a:hub")
        assert listed == [{"device_id": "SENSOR", "display_name": None, "last_seen_ip": "10.0.0.2",
                           "last_seen_ts": 1_000_000 + 599_000}]
        await hs.db.write(lambda c: None)  # the delayed last-seen write has committed
        stored = await device_rows.device(hs.db, "@a:hub", "SENSOR")
        assert stored is not None and stored.last_seen_ts == 1_000_000 + LAST_SEEN_WRITE_MS
    finally:
        await hs.stop()
    hs = Homeserver(settings)
    await hs.start()
    try:  # the stop wrote the newest
        stored = await device_rows.device(hs.db, "@a:hub", "SENSOR")
        assert stored is not None and (stored.last_seen_ip, stored.last_seen_ts) == ("10.0.0.2", 1_000_000 + 599_000)
    finally:
        await hs.stop()


async def test_devices_over_coap_through_the_same_route_table(hub: GatewayProcess) -> None:
    """A sensor lists the account's devices over CoAP (short path `dv`) and is seen from its
    address; deleting one asks for the password there too (4.01 with the UIA body in CBOR)."""
    import aiocoap
    import cbor2

    hub.add_user("ivan", PASSWORD)
    sensor = hub.device_token("ivan", "COAP-SENSOR")
    lost = login(hub, "ivan", "COAP-LOST")
    base = f"coap://127.0.0.1:{hub.coap_port}/_m/c/v3"
    ctx = await aiocoap.Context.create_client_context()
    try:
        listed = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"{base}/dv?a={sensor}")).response
        assert listed.code == aiocoap.CONTENT, listed
        by_id = {d["device_id"]: d for d in cbor2.loads(listed.payload)["devices"]}
        assert set(by_id) == {"COAP-SENSOR", "COAP-LOST"} and by_id["COAP-SENSOR"]["last_seen_ip"] == "127.0.0.1"

        ask = aiocoap.Message(code=aiocoap.POST, uri=f"{base}/dd?a={sensor}", payload=cbor2.dumps({"devices": ["COAP-LOST"]}))
        challenge = await ctx.request(ask).response
        assert challenge.code == aiocoap.UNAUTHORIZED, challenge
        session = cbor2.loads(challenge.payload)["session"]
        assert cbor2.loads(challenge.payload)["flows"] == [{"stages": ["m.login.password"]}]
        done = await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=f"{base}/dd?a={sensor}", payload=cbor2.dumps(
            {"devices": ["COAP-LOST"], "auth": password_auth("ivan", PASSWORD, session)}))).response
        assert done.code.is_successful(), done
        assert not alive(hub, lost) and alive(hub, sensor)
    finally:
        await ctx.shutdown()


def test_no_third_party_protocols(hub: GatewayProcess) -> None:
    """Element's call handler asks at start and retries a 404; {} says 'none bridged'."""
    token = hub.login("alice", PASSWORD)
    assert hub.request("GET", f"{V3}/thirdparty/protocols", token=token) == (200, {})
    status, body = hub.request("GET", f"{V3}/thirdparty/protocols")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
