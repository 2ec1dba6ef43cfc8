"""The series API over raw HTTP (`GET /_gateway/v1/rooms/{room}/series`): readings posted by
real clients (HTTP, mosquitto_pub) come back bucketed; bad input gets M_INVALID_PARAM; the read
gate applies."""
from __future__ import annotations

import time
import urllib.parse

import cbor2
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_coap_e2e import coap_client
from tests.test_mqtt_peers import mosquitto_pub


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def room(gateway: GatewayProcess, tokens: dict[str, str]) -> str:
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"},
                                   token=tokens["alice"])
    assert status == 200, body
    return body["room_id"]


def series(gw: GatewayProcess, token: str | None, room: str, query: str) -> tuple[int, dict]:
    return gw.request("GET", f"/_gateway/v1/rooms/{Q(room)}/series?{query}", token=token)


def test_readings_come_back_as_buckets(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    start = int(time.time() * 1000) - 1000
    for value in (20, 24, 22):
        status, body = gateway.request("POST", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message",
                                       {"msgtype": "m.text", "body": f"{value}", "payload": {"temp": value}},
                                       token=tokens["alice"])
        assert status == 200, body
    end = int(time.time() * 1000) + 1000
    status, body = series(gateway, tokens["alice"], room, f"field=payload.temp&from={start}&to={end}&buckets=1")
    assert status == 200, body
    assert body["points"] == 3
    assert body["series"] == [{"ts": start, "count": 3, "min": 20, "max": 24, "mean": 22, "last": 22}]
    status, body = gateway.request("GET", f"/_gateway/v1/rooms/{Q(room)}/series/fields", token=tokens["alice"])
    assert status == 200 and body["fields"] == ["payload.temp"], body
    # the default range is the last day
    status, body = series(gateway, tokens["alice"], room, "field=payload.temp")
    assert status == 200 and body["points"] == 3, body


def test_mqtt_floats_are_plotted(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    for value in ("21.5", "19.25"):
        mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "house/series/temp", f'{{"t": {value}}}', 1)
    room = "#mqtt/house/series:localhost"
    status, body = series(gateway, tokens["alice"], room, "field=t&buckets=1")
    assert status == 200, body
    assert body["series"][0]["last"] == 19.25 and body["series"][0]["max"] == 21.5, body


def test_cbor_floats_over_coap_are_plotted(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    """coap-client posts CBOR doubles (21.5) and a half-float (0.5, f9 3800): all are numbers."""
    device = gateway.device_token("alice", "coapseries")
    doubles = cbor2.dumps({"msgtype": "m.text", "body": "reading", "payload": {"hum": 21.5}})
    half = doubles.replace(bytes.fromhex("fb4035800000000000"), bytes.fromhex("f93800"))  # 0.5 as a half
    assert cbor2.loads(half)["payload"]["hum"] == 0.5
    for body in (doubles, half):
        out, err = coap_client("-m", "post", "-t", "60", "-f", "-", "-O", "11,_m", "-O", "11,c", "-O", "11,v3",
                               "-O", "11,r", "-O", f"11,{room}", "-O", "11,s", "-O", "11,m.room.message",
                               "-O", f"15,a={device}", f"coap://127.0.0.1:{gateway.coap_port}", payload=body)
        assert cbor2.loads(out)["event_id"].startswith("$"), err
    status, body = series(gateway, tokens["alice"], room, "field=payload.hum&last=600000&buckets=1")
    assert status == 200, body
    assert body["series"][0]["min"] == 0.5 and body["series"][0]["last"] == 0.5 and body["series"][0]["max"] == 21.5


@pytest.mark.parametrize("query", [
    "", "field=", "field=a..b", "field=t&buckets=0", "field=t&buckets=100000", "field=t&from=10&to=5",
    "field=t&from=0&to=99999999999999", "field=t&from=abc", "field=%3Cscript%3E",
])
def test_bad_params(gateway: GatewayProcess, tokens: dict[str, str], room: str, query: str) -> None:
    status, body = series(gateway, tokens["alice"], room, query)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body


def test_auth_and_read_gate(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    status, body = series(gateway, None, room, "field=payload.temp")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body
    status, body = series(gateway, tokens["bob"], room, "field=payload.temp")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = gateway.request("GET", f"/_gateway/v1/rooms/{Q(room)}/series/fields", token=tokens["bob"])
    assert status == 403, body
    status, body = gateway.request("GET", "/_gateway/v1/nothing/here", token=tokens["alice"])
    assert status == 404 and body["errcode"] == "M_UNRECOGNIZED", body


def test_status_is_for_admins(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    status, body = gateway.request("GET", "/_gateway/v1/status", token=tokens["alice"])  # alice is an admin
    assert status == 200, body
    assert body["version"] and body["uptime_s"] >= 0 and body["rss_bytes"] > 1 << 20
    assert body["database_bytes"] > 0 and body["stream_position"] > 0
    assert body["events_per_minute"] is None or body["events_per_minute"] >= 0
    status, body = gateway.request("GET", "/_gateway/v1/status", token=tokens["bob"])
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = gateway.request("GET", "/_gateway/v1/status")
    assert status == 401, body


def test_add_device_for_admins(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    status, body = gateway.request("POST", "/_gateway/v1/devices", {"device_id": "shed1", "display_name": "Shed"},
                                   token=tokens["alice"])
    assert status == 200, body
    assert body["user_id"] == "@alice:localhost" and body["device_id"] == "shed1"
    status, who = gateway.request("GET", "/_matrix/client/v3/account/whoami", token=body["access_token"])
    assert status == 200 and who["device_id"] == "shed1", who
    status, again = gateway.request("POST", "/_gateway/v1/devices", {"device_id": "shed1"}, token=tokens["alice"])
    assert status == 400 and again["errcode"] == "M_INVALID_PARAM", again
    status, for_bob = gateway.request("POST", "/_gateway/v1/devices", {"device_id": "bobs", "user": "bob"},
                                      token=tokens["alice"])
    assert status == 200 and for_bob["user_id"] == "@bob:localhost", for_bob
    for bad in ({}, {"device_id": ""}, {"device_id": "a b"}, {"device_id": "x" * 33}, {"device_id": 5},
                {"device_id": "ok", "display_name": 3}, {"device_id": "ok2", "user": ""}):
        status, err = gateway.request("POST", "/_gateway/v1/devices", bad, token=tokens["alice"])
        assert status == 400 and err["errcode"] == "M_INVALID_PARAM", (bad, err)
    status, err = gateway.request("POST", "/_gateway/v1/devices", {"device_id": "ok", "user": "nobody"},
                                  token=tokens["alice"])
    assert status == 404, err
    status, err = gateway.request("POST", "/_gateway/v1/devices", {"device_id": "mine"}, token=tokens["bob"])
    assert status == 403 and err["errcode"] == "M_FORBIDDEN", err
    status, devices = gateway.request("GET", "/_matrix/client/v3/devices", token=tokens["bob"])
    assert "mine" not in [d["device_id"] for d in devices["devices"]]
