"""The admin API over raw HTTP against the hub started by the CLI: Synapse's routes under
/_synapse/admin (same shapes and errors) and the hub's under /_gateway/admin/v1 (docs/admin-api.md).

alice is the hub admin (conftest), bob is not."""
from __future__ import annotations

from urllib.parse import quote

import base64
import http.client
import json
import socket
import urllib.parse
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.types import Type

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho, mosquitto_pub
from tests.test_token_revocation import _next_response, _raw_coap

q = urllib.parse.quote


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> dict[str, Any]:
    admin = gateway.login("alice", PASSWORD)
    bob = gateway.login("bob", PASSWORD)
    return {"gw": gateway, "admin": admin, "bob": bob}


def call(hub: dict[str, Any], method: str, path: str, body: Any = None, token: str | None = "admin") -> tuple[int, Any]:
    return hub["gw"].request(method, path, body, token=hub[token] if token else None)


ROUTES = [
    ("GET", "/_synapse/admin/v1/server_version", None),
    ("GET", "/_synapse/admin/v2/users", None),
    ("GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost", None),
    ("PUT", "/_synapse/admin/v2/users/%40mallory%3Alocalhost", {"password": "x" * 12}),
    ("POST", "/_synapse/admin/v1/deactivate/%40alice%3Alocalhost", {}),
    ("GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices", None),
    ("GET", "/_synapse/admin/v1/users/%40alice%3Alocalhost/joined_rooms", None),
    ("POST", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices", {"device_id": "EVIL"}),
    ("DELETE", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices/NOPE", None),
    ("GET", "/_synapse/admin/v1/rooms", None),
    ("GET", "/_synapse/admin/v1/rooms/%21nope%3Alocalhost", None),
    ("GET", "/_gateway/admin/v1/accounts", None),
    ("POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices", {"device_id": "EVIL"}),
    ("PUT", "/_gateway/admin/v1/users/%40alice%3Alocalhost/household", {"household": False}),
]


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_admins_only(hub: dict[str, Any], method: str, path: str, body: Any) -> None:
    """401 without a token, 403 M_FORBIDDEN for a non-admin; nothing done either way."""
    status, answer = call(hub, method, path, body, token=None)
    assert (status, answer["errcode"]) == (401, "M_MISSING_TOKEN")
    status, answer = call(hub, method, path, body, token="bob")
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert call(hub, "GET", "/_synapse/admin/v2/users/%40mallory%3Alocalhost")[0] == 404
    status, devices = call(hub, "GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices")
    assert "EVIL" not in [d["device_id"] for d in devices["devices"]]
    assert call(hub, "GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost")[1]["deactivated"] is False


def test_server_version(hub: dict[str, Any]) -> None:
    status, body = call(hub, "GET", "/_synapse/admin/v1/server_version")
    assert status == 200 and body["server_version"].startswith("matrix-gateway ")


def test_list_users_shape_filters_and_pages(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    gw.add_user("gus", PASSWORD, guest=True)
    status, body = call(hub, "GET", "/_synapse/admin/v2/users")
    assert status == 200
    names = [u["name"] for u in body["users"]]
    assert {"@alice:localhost", "@bob:localhost", "@gus:localhost"} <= set(names)
    assert names == sorted(names) and body["total"] == len(names) and "next_token" not in body
    alice = next(u for u in body["users"] if u["name"] == "@alice:localhost")
    for key in ("is_guest", "admin", "user_type", "deactivated", "erased", "shadow_banned", "displayname",
                "avatar_url", "creation_ts", "locked"):
        assert key in alice
    assert alice["admin"] is True and alice["is_guest"] is False and alice["displayname"] == "alice"
    gus = next(u for u in body["users"] if u["name"] == "@gus:localhost")
    assert gus["is_guest"] is True and gus["household"] is False

    no_guests = call(hub, "GET", "/_synapse/admin/v2/users?guests=false")[1]
    assert "@gus:localhost" not in [u["name"] for u in no_guests["users"]]
    assert [u["name"] for u in call(hub, "GET", "/_synapse/admin/v2/users?name=bo")[1]["users"]] == ["@bob:localhost"]
    assert [u["name"] for u in call(hub, "GET", "/_synapse/admin/v2/users?user_id=%40gus")[1]["users"]] == \
        ["@gus:localhost"]
    backwards = call(hub, "GET", "/_synapse/admin/v2/users?dir=b")[1]
    assert [u["name"] for u in backwards["users"]] == names[::-1]
    admins_first = call(hub, "GET", "/_synapse/admin/v2/users?order_by=admin&dir=b")[1]
    assert admins_first["users"][0]["name"] == "@alice:localhost"

    first = call(hub, "GET", "/_synapse/admin/v2/users?limit=1")[1]
    assert len(first["users"]) == 1 and first["next_token"] == "1" and first["total"] == len(names)
    second = call(hub, "GET", f"/_synapse/admin/v2/users?limit=1&from={first['next_token']}")[1]
    assert second["users"][0]["name"] == names[1]


@pytest.mark.parametrize("query", ["from=-1", "limit=ten", "from=1e3", "guests=maybe", "deactivated=1",
                                   "order_by=password_hash", "dir=up", "name=" + "x" * 300])
def test_list_users_bad_params(hub: dict[str, Any], query: str) -> None:
    status, body = call(hub, "GET", "/_synapse/admin/v2/users?" + query)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body


@pytest.mark.parametrize("user,status,errcode", [
    ("%40nobody%3Alocalhost", 404, "M_NOT_FOUND"),
    ("%40alice%3Aelsewhere.example", 400, "M_INVALID_PARAM"),
    ("alice", 400, "M_INVALID_PARAM"),
])
def test_user_errors(hub: dict[str, Any], user: str, status: int, errcode: str) -> None:
    """Unknown user 404; a remote user or a malformed id 400, as Synapse (local users only)."""
    for method, suffix, body in [("GET", "", None), ("GET", "/devices", None),
                                 ("POST", "/devices", {"device_id": "D1"}),
                                 ("DELETE", "/devices/D1", None)]:
        got, answer = call(hub, method, f"/_synapse/admin/v2/users/{user}{suffix}", body)
        assert (got, answer["errcode"]) == (status, errcode), (method, suffix, answer)
    got, answer = call(hub, "POST", f"/_synapse/admin/v1/deactivate/{user}", {})
    assert (got, answer["errcode"]) == (status, errcode)


def test_user_details(hub: dict[str, Any]) -> None:
    status, body = call(hub, "GET", "/_synapse/admin/v2/users/%40bob%3Alocalhost")
    assert status == 200
    assert body["name"] == "@bob:localhost" and body["admin"] is False and body["deactivated"] is False
    assert body["threepids"] == [] and body["external_ids"] == [] and isinstance(body["creation_ts"], int)


def test_put_creates_then_modifies(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    status, body = call(hub, "PUT", "/_synapse/admin/v2/users/%40carol%3Alocalhost",
                        {"password": "carol's long passphrase", "displayname": "Carol", "household": False})
    assert status == 201, body
    assert body["name"] == "@carol:localhost" and body["displayname"] == "Carol" and body["is_guest"] is True
    carol = gw.login("carol", "carol's long passphrase")
    assert call(dict(hub, carol=carol), "GET", "/_synapse/admin/v2/users", token="carol")[0] == 403

    status, body = call(hub, "PUT", "/_synapse/admin/v2/users/%40carol%3Alocalhost", {"admin": True, "displayname": ""})
    assert status == 200 and body["admin"] is True and body["displayname"] is None
    # the flag counts at once, for a token cached before the change too
    assert call(dict(hub, carol=carol), "GET", "/_synapse/admin/v2/users", token="carol")[0] == 200

    status, body = call(hub, "PUT", "/_synapse/admin/v2/users/%40carol%3Alocalhost", {"password": "a new passphrase"})
    assert status == 200
    assert call(dict(hub, carol=carol), "GET", "/_synapse/admin/v2/users", token="carol")[0] == 401  # logged out
    gw.login("carol", "a new passphrase")


@pytest.mark.parametrize("body", [{"password": 5}, {"password": ""}, {"admin": "yes"}, {"deactivated": 1},
                                  {"displayname": ["x"]}, {"avatar_url": "http://x"}, {"household": "no"},
                                  {"password": "x" * 600}])
def test_put_bad_body_stores_nothing(hub: dict[str, Any], body: dict[str, Any]) -> None:
    status, answer = call(hub, "PUT", "/_synapse/admin/v2/users/%40dave%3Alocalhost", body)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert call(hub, "GET", "/_synapse/admin/v2/users/%40dave%3Alocalhost")[0] == 404


def test_put_bad_ids(hub: dict[str, Any]) -> None:
    for user, errcode in [("%40Bad%20Name%3Alocalhost", "M_INVALID_PARAM"), ("%40x%3Aelsewhere", "M_INVALID_PARAM")]:
        status, answer = call(hub, "PUT", f"/_synapse/admin/v2/users/{user}", {"password": "whatever123"})
        assert (status, answer["errcode"]) == (400, errcode)
    status, answer = hub["gw"].request("PUT", "/_synapse/admin/v2/users/%40e%3Alocalhost", raw=b"{nope",
                                       token=hub["admin"])
    assert (status, answer["errcode"]) == (400, "M_NOT_JSON")


def test_admin_cannot_demote_itself(hub: dict[str, Any]) -> None:
    status, answer = call(hub, "PUT", "/_synapse/admin/v2/users/%40alice%3Alocalhost", {"admin": False})
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert call(hub, "GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost")[1]["admin"] is True


def test_deactivate_and_reactivate(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    gw.add_user("erin", PASSWORD)
    token = gw.login("erin", PASSWORD)
    device_token = gw.device_token("erin", "erin-sensor")
    status, body = call(hub, "POST", "/_synapse/admin/v1/deactivate/%40erin%3Alocalhost", {"erase": False})
    assert (status, body) == (200, {"id_server_unbind_result": "success"})
    for t in (token, device_token):
        status, body = gw.request("GET", "/_matrix/client/v3/account/whoami", token=t)
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    with pytest.raises(RuntimeError):
        gw.login("erin", PASSWORD)
    details = call(hub, "GET", "/_synapse/admin/v2/users/%40erin%3Alocalhost")[1]
    assert details["deactivated"] is True
    assert "@erin:localhost" not in [u["name"] for u in call(hub, "GET", "/_synapse/admin/v2/users")[1]["users"]]
    listed = call(hub, "GET", "/_synapse/admin/v2/users?deactivated=true")[1]["users"]
    assert next(u for u in listed if u["name"] == "@erin:localhost")["deactivated"] is True
    # no device for a deactivated account
    status, body = call(hub, "POST", "/_gateway/admin/v1/users/%40erin%3Alocalhost/devices", {"device_id": "x1"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    # reactivation needs a password (Synapse's rule)
    status, body = call(hub, "PUT", "/_synapse/admin/v2/users/%40erin%3Alocalhost", {"deactivated": False})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = call(hub, "PUT", "/_synapse/admin/v2/users/%40erin%3Alocalhost",
                        {"deactivated": False, "password": "back again 123"})
    assert status == 200 and body["deactivated"] is False
    gw.login("erin", "back again 123")
    # the erase flag must be a boolean
    status, body = call(hub, "POST", "/_synapse/admin/v1/deactivate/%40erin%3Alocalhost", {"erase": "yes"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


def test_the_users_own_deactivation_shows_too(hub: dict[str, Any]) -> None:
    """/account/deactivate (the client API, UIA with the password) marks the account as the admin's does."""
    gw = hub["gw"]
    gw.add_user("fay", PASSWORD)
    token = gw.login("fay", PASSWORD)
    status, _ = gw.request("POST", "/_matrix/client/v3/account/deactivate", {
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fay"},
                 "password": PASSWORD}}, token=token)
    if status == 401:  # a UIA session first
        pytest.fail("UIA with the password in the first request was expected to pass")
    assert status == 200
    assert call(hub, "GET", "/_synapse/admin/v2/users/%40fay%3Alocalhost")[1]["deactivated"] is True


def test_deactivation_leaves_every_room_and_declines_invites(hub: dict[str, Any]) -> None:
    """As Synapse: a deactivated account (by an admin or by itself) leaves the rooms it is in and
    declines its pending invites, so member lists stop naming it; `erase: true` is refused first."""
    gw = hub["gw"]
    owner = gw.login("bob", PASSWORD)
    rooms = {}
    for name in ("gina", "hank"):
        gw.add_user(name, PASSWORD)
        token = gw.login(name, PASSWORD)
        user = f"@{name}:localhost"
        joined = gw.request("POST", "/_matrix/client/v3/createRoom", {"invite": [user]}, token=owner)[1]["room_id"]
        assert gw.request("POST", f"/_matrix/client/v3/join/{quote_all(joined)}", {}, token=token)[0] == 200
        invited = gw.request("POST", "/_matrix/client/v3/createRoom", {"invite": [user]}, token=owner)[1]["room_id"]
        rooms[name] = (token, joined, invited)
    status, body = call(hub, "POST", "/_synapse/admin/v1/deactivate/%40gina%3Alocalhost", {"erase": True})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert gw.request("GET", "/_matrix/client/v3/account/whoami", token=rooms["gina"][0])[0] == 200  # untouched
    assert call(hub, "POST", "/_synapse/admin/v1/deactivate/%40gina%3Alocalhost", {})[0] == 200
    token = rooms["hank"][0]
    status, _ = gw.request("POST", "/_matrix/client/v3/account/deactivate", {
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hank"},
                 "password": PASSWORD}}, token=token)
    assert status == 200
    for name, (_, joined, invited) in rooms.items():
        user = f"@{name}:localhost"
        for room_id in (joined, invited):
            status, member = gw.request(
                "GET", f"/_matrix/client/v3/rooms/{quote_all(room_id)}/state/m.room.member/{quote_all(user)}", token=owner)
            assert (status, member["membership"]) == (200, "leave"), (name, room_id, member)
        members = gw.request("GET", f"/_matrix/client/v3/rooms/{quote_all(joined)}/joined_members", token=owner)[1]
        assert user not in members["joined"]


def test_devices_list_create_delete_ends_live_sessions(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    path = "/_synapse/admin/v2/users/%40bob%3Alocalhost/devices"
    status, body = call(hub, "POST", path, {"device_id": "BOBSENSOR"})
    assert (status, body) == (201, {})
    assert call(hub, "POST", path, {"device_id": "BOBSENSOR"})[0] == 201  # exists: nothing done, as Synapse
    status, body = call(hub, "GET", path)
    assert status == 200 and body["total"] == len(body["devices"])
    sensor = next(d for d in body["devices"] if d["device_id"] == "BOBSENSOR")
    assert sensor["user_id"] == "@bob:localhost" and {"display_name", "last_seen_ip", "last_seen_ts"} <= set(sensor)

    token = gw.device_token("bob", "bobthermo")
    mqtt_client = Paho(gw.mqtt_port, "bob", token)
    _, reason, _ = mqtt_client.connect()
    assert reason == 0
    try:
        status, body = call(hub, "DELETE", f"{path}/bobthermo")
        assert (status, body) == (200, {})
        mqtt_client.disconnects.get(timeout=10)  # the live MQTT session ended with the token
    finally:
        mqtt_client.disconnect()
    status, body = gw.request("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert "bobthermo" not in [d["device_id"] for d in call(hub, "GET", path)[1]["devices"]]
    status, body = call(hub, "DELETE", f"{path}/bobthermo")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    for bad in ({"device_id": ""}, {"device_id": "a b"}, {"device_id": 5}, {}):
        status, body = call(hub, "POST", path, bad)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


def test_rooms_list_and_details(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    made = []
    for name in ("Attic", "Basement", "Cellar"):
        status, body = gw.request("POST", "/_matrix/client/v3/createRoom",
                                  {"name": name, "room_alias_name": name.lower()}, token=hub["admin"])
        assert status == 200
        made.append(body["room_id"])
    status, body = call(hub, "GET", "/_synapse/admin/v1/rooms")
    assert status == 200 and body["offset"] == 0 and body["total_rooms"] == len(body["rooms"])
    attic = next(r for r in body["rooms"] if r["room_id"] == made[0])
    assert attic["name"] == "Attic" and attic["canonical_alias"] == "#attic:localhost"
    assert attic["joined_members"] == 1 and attic["joined_local_members"] == 1
    assert attic["creator"] == "@alice:localhost" and attic["federatable"] is True and attic["public"] is False
    assert {"version", "encryption", "join_rules", "guest_access", "history_visibility", "state_events",
            "room_type"} <= set(attic)

    found = call(hub, "GET", "/_synapse/admin/v1/rooms?search_term=base")[1]
    assert [r["room_id"] for r in found["rooms"]] == [made[1]] and found["total_rooms"] == 1
    named = [r["name"] for r in call(hub, "GET", "/_synapse/admin/v1/rooms?search_term=a&order_by=name")[1]["rooms"]
             if r["name"] in ("Attic", "Basement", "Cellar")]
    assert named == ["Attic", "Basement", "Cellar"]
    back = [r["name"] for r in call(hub, "GET", "/_synapse/admin/v1/rooms?order_by=name&dir=b")[1]["rooms"]
            if r["name"] in ("Attic", "Basement", "Cellar")]
    assert back == ["Cellar", "Basement", "Attic"]
    page = call(hub, "GET", "/_synapse/admin/v1/rooms?limit=1&from=1")[1]
    assert len(page["rooms"]) == 1 and page["offset"] == 1 and page["prev_batch"] == 0
    if page["total_rooms"] > 2:
        assert page["next_batch"] == 2

    status, room = call(hub, "GET", f"/_synapse/admin/v1/rooms/{q(made[2])}")
    assert status == 200 and room["name"] == "Cellar" and room["forgotten"] is False
    assert room["joined_local_devices"] >= 1
    status, joined = call(hub, "GET", "/_synapse/admin/v1/users/%40alice%3Alocalhost/joined_rooms")
    assert status == 200 and set(made) <= set(joined["joined_rooms"]) and joined["total"] == len(joined["joined_rooms"])
    status, joined = call(hub, "GET", "/_synapse/admin/v1/users/%40nobody%3Alocalhost/joined_rooms")
    assert (status, joined["errcode"]) == (404, "M_NOT_FOUND")
    status, room = call(hub, "GET", "/_synapse/admin/v1/rooms/%21nope%3Alocalhost")
    assert (status, room["errcode"]) == (404, "M_NOT_FOUND")
    status, room = call(hub, "GET", "/_synapse/admin/v1/rooms/%23attic%3Alocalhost")
    assert (status, room["errcode"]) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("query", ["from=-5", "limit=x", "order_by=secret", "dir=sideways", "search_term=" + "y" * 300])
def test_rooms_bad_params(hub: dict[str, Any], query: str) -> None:
    status, body = call(hub, "GET", "/_synapse/admin/v1/rooms?" + query)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


def test_gateway_add_device_with_psk_settings_and_qr(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    status, body = call(hub, "POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices",
                        {"device_id": "therm9", "display_name": "Thermometer", "psk": True})
    assert status == 200, body
    assert body["user_id"] == "@alice:localhost" and body["device_id"] == "therm9"
    assert body["psk_identity"] == "therm9" and len(body["psk"]) == 16
    assert body["settings"] == {"server_name": "localhost", "host": "127.0.0.1", "http_port": gw.http_port,
                                "mqtt_port": gw.mqtt_port, "coap_port": gw.coap_port, "coaps_port": gw.coaps_port}
    labels = [s["label"] for s in body["snippets"]]
    assert any("mosquitto_pub" in x for x in labels) and any("coap-client" in x for x in labels)
    assert any("MicroPython" in x for x in labels)
    assert all(body["access_token"] in s["text"] for s in body["snippets"] if "coaps" not in s["label"])
    assert body["qr_code"].startswith("data:image/svg+xml;base64,")
    assert b"<svg" in base64.b64decode(body["qr_code"].split(",", 1)[1])
    # the token works, as the snippet says
    mosquitto_pub(gw.mqtt_port, "alice", body["access_token"], "home/therm9/reading", '{"temp": 21.5}')
    # the device is listed with its name
    accounts = call(hub, "GET", "/_gateway/admin/v1/accounts")[1]
    alice = next(u for u in accounts["users"] if u["name"] == "@alice:localhost")
    assert {"device_id": "therm9", "display_name": "Thermometer"}.items() <= \
        next(d for d in alice["devices"] if d["device_id"] == "therm9").items()
    # a second time: refused, nothing changed
    status, again = call(hub, "POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices", {"device_id": "therm9"})
    assert (status, again["errcode"]) == (400, "M_INVALID_PARAM")
    mosquitto_pub(gw.mqtt_port, "alice", body["access_token"], "home/therm9/reading", '{"temp": 22}')


def test_gateway_add_device_psk_identity_taken_leaves_nothing(hub: dict[str, Any]) -> None:
    """bob's device named like alice's keyed device: the PSK identity is taken, no device is made."""
    status, body = call(hub, "POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices",
                        {"device_id": "shared1", "psk": True})
    assert status == 200
    status, body = call(hub, "POST", "/_gateway/admin/v1/users/%40bob%3Alocalhost/devices",
                        {"device_id": "shared1", "psk": True})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    devices = call(hub, "GET", "/_synapse/admin/v2/users/%40bob%3Alocalhost/devices")[1]["devices"]
    assert "shared1" not in [d["device_id"] for d in devices]


def test_gateway_add_device_host_header(hub: dict[str, Any]) -> None:
    """The settings name the host the request reached; a forged Host with shell syntax does not
    reach a snippet (the server name stands in)."""
    gw = hub["gw"]
    for host, expected in [("hub.local:8008", "hub.local"), ("x;rm -rf /", "localhost")]:
        conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
        conn.putrequest("POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices", skip_host=True)
        payload = json.dumps({"device_id": f"h{len(host)}"}).encode()
        conn.putheader("Host", host)
        conn.putheader("Authorization", f"Bearer {hub['admin']}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, body
        assert body["settings"]["host"] == expected
        assert all(f" {expected} " in s["text"] or f"//{expected}:" in s["text"] or f"'{expected}'" in s["text"]
                   for s in body["snippets"])


@pytest.mark.parametrize("body", [{"device_id": "a b"}, {"device_id": "x" * 33}, {"device_id": "ok", "psk": "yes"},
                                  {"device_id": "ok", "display_name": 7}, {}])
def test_gateway_add_device_bad_body(hub: dict[str, Any], body: dict[str, Any]) -> None:
    status, answer = call(hub, "POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices", body)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    devices = call(hub, "GET", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices")[1]["devices"]
    assert "ok" not in [d["device_id"] for d in devices]


def test_gateway_household_flag(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    gw.add_user("hal", PASSWORD)
    path = "/_gateway/admin/v1/users/%40hal%3Alocalhost/household"
    status, body = call(hub, "PUT", path, {"household": False})
    assert status == 200 and body["household"] is False and body["is_guest"] is True
    status, body = call(hub, "PUT", path, {"household": "no"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = call(hub, "PUT", "/_gateway/admin/v1/users/%40nobody%3Alocalhost/household", {"household": True})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


def test_revoking_a_device_ends_its_coap_observation(hub: dict[str, Any]) -> None:
    """As a logout does (tests/test_token_revocation.py): the observation made with the revoked
    device's token gets a final 4.01 at once, before any new event."""
    gw = hub["gw"]
    token = gw.device_token("alice", "observer1")
    status, body = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "adminobs"},
                              token=hub["admin"])
    assert status == 200, body
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", gw.coap_port))
        sock.send(_raw_coap(Type.CON, 7101, aiocoap.GET, token=b"adm1", observe=0,
                            uri_path=("_m", "c", "v3", "r", "#adminobs:localhost", "m"),
                            uri_query=(f"a={token}", "l=1")).encode())
        first = _next_response(sock, b"adm1")
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None
        status, body = call(hub, "DELETE", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices/observer1")
        assert status == 200, body
        last = _next_response(sock, b"adm1")
        assert last.code == aiocoap.UNAUTHORIZED and cbor2.loads(last.payload)["errcode"] == "M_UNKNOWN_TOKEN"


def quote_all(value: str) -> str:
    return quote(value, safe="")
