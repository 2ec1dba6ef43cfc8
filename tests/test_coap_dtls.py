"""coaps: DTLS with a pre-shared key per device (`matrix-gateway device add --psk`), tested with
libcoap's coap-client-openssl. The PSK identity stands for the device's access token."""
from __future__ import annotations

import subprocess
from typing import Any

import cbor2
import pytest

from tests.support.gateway import GatewayProcess, gateway_cli


@pytest.fixture(scope="module")
def device(gateway: GatewayProcess) -> dict[str, Any]:
    out = gateway_cli("device", "add", "alice", "therm1", "--psk", "--data-dir", str(gateway.data_dir)).stdout
    token, identity_line, psk_line = out.split()
    assert identity_line == "psk_identity=therm1" and psk_line.startswith("psk=")
    psk = psk_line[4:]
    assert len(psk) == 16 and psk.isalnum() and len(token) == 16
    status, room = gateway.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "dtls"}, token=token)
    assert status == 200
    return {"gw": gateway, "token": token, "identity": "therm1", "psk": psk, "room_id": room["room_id"],
            "base": f"coaps://127.0.0.1:{gateway.coaps_port}"}


def coaps_client(device: dict[str, Any], *args: str, key: str | None = None, payload: bytes | None = None,
                 ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["coap-client-openssl", "-u", device["identity"], "-k", key or device["psk"],
                           "-B", "5", "-o", "-", *args], input=payload, capture_output=True, timeout=30)


def test_ready_line_names_the_coaps_listener(device: dict[str, Any]) -> None:
    assert f"coaps=coaps://127.0.0.1:{device['gw'].coaps_port}" in "".join(device["gw"].stdout_lines)


def test_psk_identity_is_the_device_without_a_token(device: dict[str, Any]) -> None:
    out = coaps_client(device, "-m", "get", f"{device['base']}/_m/c/v3/ac/w")
    whoami = cbor2.loads(out.stdout)
    assert (whoami["user_id"], whoami["device_id"]) == ("@alice:localhost", "therm1"), out.stderr

    out = coaps_client(device, "-m", "post", "-f", "-", f"{device['base']}/_m/c/a/v1/r/%23dtls:localhost/s/m.room.message",
                       payload=cbor2.dumps({"msgtype": "m.text", "body": "over dtls", "t": 21.5}))
    event_id = cbor2.loads(out.stdout)["event_id"]
    status, event = device["gw"].request("GET", f"/_matrix/client/v3/rooms/{device['room_id']}/event/{event_id}",
                                         token=device["token"])
    assert status == 200 and event["sender"] == "@alice:localhost"
    assert event["content"] == {"msgtype": "m.text", "body": "over dtls", "t": {"$f": "21.5"}}


def test_wrong_key_gets_no_answer_and_stores_nothing(device: dict[str, Any]) -> None:
    before = device["gw"].request("GET", f"/_matrix/client/v3/rooms/{device['room_id']}/messages?dir=b&limit=5",
                                  token=device["token"])[1]["chunk"]
    wrong = "x" * 16
    out = coaps_client(device, "-m", "post", "-f", "-", "-B", "2",
                       f"{device['base']}/_m/c/a/v1/r/%23dtls:localhost/s/m.room.message",
                       key=wrong, payload=cbor2.dumps({"body": "must not be stored"}))
    assert b"event_id" not in out.stdout  # coap-client only logs the failed handshake
    after = device["gw"].request("GET", f"/_matrix/client/v3/rooms/{device['room_id']}/messages?dir=b&limit=5",
                                 token=device["token"])[1]["chunk"]
    assert [ev["event_id"] for ev in after] == [ev["event_id"] for ev in before]


def test_psk_identity_must_be_unique(device: dict[str, Any]) -> None:
    proc = gateway_cli("device", "add", "bob", "therm1", "--psk", "--data-dir", str(device["gw"].data_dir),
                       check=False)
    assert proc.returncode != 0 and "already belongs to @alice:localhost" in proc.stderr
    # nothing half-done: bob got no device token either
    status, body = device["gw"].request("GET", "/_matrix/client/v3/account/whoami", token=proc.stdout.strip() or "x")
    assert status == 401


def test_logged_out_device_is_locked_out_of_coaps(device: dict[str, Any]) -> None:
    gw = device["gw"]
    out = gateway_cli("device", "add", "alice", "therm2", "--psk", "--data-dir", str(gw.data_dir)).stdout
    token, _, psk_line = out.split()
    other = dict(device, identity="therm2", psk=psk_line[4:])
    whoami = coaps_client(other, "-m", "get", f"{device['base']}/_m/c/v3/ac/w")
    assert cbor2.loads(whoami.stdout)["device_id"] == "therm2", whoami.stderr
    assert gw.request("POST", "/_matrix/client/v3/logout", {}, token=token)[0] == 200
    whoami = coaps_client(other, "-m", "get", f"{device['base']}/_m/c/v3/ac/w")
    assert whoami.stderr.startswith(b"4.01 ") and b"M_UNKNOWN_TOKEN" in whoami.stderr, whoami
