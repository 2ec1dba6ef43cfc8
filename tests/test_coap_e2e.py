"""CoAP front end against real peers: libcoap's coap-client (plus the seed's Perl CBOR::XS
pipeline) and aiocoap's client, with the hub started through the CLI. HTTP (urllib) checks what
was stored."""
from __future__ import annotations

import asyncio
import math
import subprocess
from typing import Any

import aiocoap
import cbor2
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

ROOM_ALIAS = "#sensors:localhost"
ALIAS_IN_URI = "%23sensors:localhost"


def coap_client(*args: str, payload: bytes | None = None, timeout: float = 20) -> tuple[bytes, str]:
    """Run libcoap's coap-client-notls; returns (stdout payload bytes, stderr text)."""
    proc = subprocess.run(["coap-client-notls", "-o", "-", *args], input=payload, capture_output=True,
                          timeout=timeout)
    return proc.stdout, proc.stderr.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> dict[str, Any]:
    """alice's device token, a room with an alias, and bob (not in the room)."""
    token = gateway.device_token("alice", "sensor1")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                   {"room_alias_name": "sensors", "name": "Sensors"}, token=token)
    assert status == 200, body
    bob_token = gateway.device_token("bob", "bobdev")
    return {"gw": gateway, "token": token, "room_id": body["room_id"], "bob": bob_token,
            "base": f"coap://127.0.0.1:{gateway.coap_port}"}


@pytest.fixture
async def client():
    ctx = await aiocoap.Context.create_client_context()
    yield ctx
    await ctx.shutdown()


async def coap(ctx: aiocoap.Context, method: Any, uri: str, payload: Any = None, raw: bytes | None = None,
               **options: Any) -> aiocoap.Message:
    msg = aiocoap.Message(code=method, uri=uri, **options)
    if raw is not None:
        msg.payload = raw
    elif payload is not None:
        msg.payload = cbor2.dumps(payload)
    return await ctx.request(msg).response


def http_timeline(gw: GatewayProcess, token: str, room_id: str, limit: int = 20) -> list[dict[str, Any]]:
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit={limit}", token=token)
    assert status == 200, body
    return body["chunk"]


# ---------------------------------------------------------------------------------------------
# the seed
# ---------------------------------------------------------------------------------------------


def test_seed_pipeline_with_perl_cbor_xs_and_coap_client(hub: dict[str, Any]) -> None:
    """The seed's shell pipeline (JSON -> Perl CBOR::XS -> coap-client POST, no Content-Format)
    stores the same m.room.message as the seed's HTTP call."""
    # The seed writes `decode_json` without an argument; JSON.pm's prototype then sees no input,
    # so it is given `$_` explicitly here. CBOR::XS still writes every string as a byte string.
    uri = f"{hub['base']}/_m/c/a/v1/r/{ALIAS_IN_URI}/s/m.room.message?a={hub['token']}"
    assert len(uri.split("://", 1)[1].split("/", 1)[1]) < 100  # under libcoap's URI limit
    pipeline = (
        "echo '{\"msgtype\":\"m.text\", \"body\":\"hello\"}' "
        "| perl -MCBOR::XS -MJSON -pe '$_=encode_cbor decode_json $_' "
        f"| coap-client-notls -m post -f - -o - '{uri}'"
    )
    out = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    answer = cbor2.loads(out.stdout)
    assert set(answer) == {"event_id"} and answer["event_id"].startswith("$")

    # the seed's HTTP call, for comparison
    status, body = hub["gw"].request(
        "POST", f"/_matrix/client/api/v1/rooms/%23sensors:localhost/send/m.room.message?access_token={hub['token']}",
        {"msgtype": "m.text", "body": "hello"})
    assert status == 200
    events = {ev["event_id"]: ev for ev in http_timeline(hub["gw"], hub["token"], hub["room_id"])}
    over_coap, over_http = events[answer["event_id"]], events[body["event_id"]]
    assert over_coap["content"] == over_http["content"] == {"msgtype": "m.text", "body": "hello"}
    assert over_coap["type"] == "m.room.message" and over_coap["sender"] == "@alice:localhost"


def test_full_paths_and_text_cbor_with_content_format(hub: dict[str, Any]) -> None:
    body = cbor2.dumps({"msgtype": "m.text", "body": "full path"})
    out, err = coap_client("-m", "post", "-t", "60", "-f", "-",
                           f"{hub['base']}/_matrix/client/r0/rooms/{ALIAS_IN_URI}/send/m.room.message"
                           f"?access_token={hub['token']}", payload=body)
    event_id = cbor2.loads(out)["event_id"]
    assert [ev for ev in http_timeline(hub["gw"], hub["token"], hub["room_id"])
            if ev["event_id"] == event_id][0]["content"]["body"] == "full path"


# ---------------------------------------------------------------------------------------------
# lossless device payloads
# ---------------------------------------------------------------------------------------------

DEVICE_READING = {
    "t": 21.5,
    "h": 40,
    "ok": True,
    "err": None,
    "raw": b"\x00\x01\xfe\xff",
    "nested": {"list": [1.25, -0.0, [b"\x10", False]], "big": 2**64 + 1, "$unit": "C"},
    "nan": math.nan,
    "inf": -math.inf,
    "when": cbor2.CBORTag(1234, [1, 2]),
    7: "integer key",
}


async def test_lossless_round_trip_coap_to_coap_and_readable_over_http(hub: dict[str, Any], client) -> None:
    uri = f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/s/org.example.reading/txn-lossless?a={hub['token']}"
    resp = await coap(client, aiocoap.PUT, uri, DEVICE_READING)
    assert resp.code == aiocoap.CHANGED, resp.payload
    assert resp.opt.content_format == 60
    event_id = cbor2.loads(resp.payload)["event_id"]

    # read back over CoAP (GET of the event): equal, floats, bytes, tag and NaN included
    got = await coap(client, aiocoap.GET, f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/e/{event_id}?a={hub['token']}")
    assert got.code == aiocoap.CONTENT
    content = cbor2.loads(got.payload)["content"]
    assert math.isnan(content.pop("nan"))
    expected = cbor2.loads(cbor2.dumps(DEVICE_READING))  # what the device reads its own payload as
    del expected["nan"]
    assert content == expected
    assert math.copysign(1, content["nested"]["list"][1]) == -1.0  # -0.0 kept
    assert isinstance(content["raw"], bytes) and isinstance(content["t"], float)

    # over HTTP: canonical JSON a person can read (21.5 visible), no floats
    status, event = hub["gw"].request("GET", f"/_matrix/client/v3/rooms/{hub['room_id']}/event/{event_id}",
                                      token=hub["token"])
    assert status == 200
    assert event["content"]["$map"][0] == ["err", None] or ["t", {"$f": "21.5"}] in event["content"]["$map"]
    pairs = dict((k if isinstance(k, str) else str(k), v) for k, v in event["content"]["$map"])
    assert pairs["t"] == {"$f": "21.5"} and pairs["raw"] == {"$b": "AAH+/w=="}
    assert pairs["nested"]["$$unit"] == "C" and pairs["nested"]["big"] == {"$i": "18446744073709551617"}
    assert pairs["nan"] == {"$f": "nan"} and pairs["inf"] == {"$f": "-inf"}
    assert pairs["when"] == {"$tag": [1234, [1, 2]]}


async def test_string_keyed_reading_is_plain_readable_json_over_http(hub: dict[str, Any], client) -> None:
    uri = f"{hub['base']}/_m/c/a/v1/r/{ALIAS_IN_URI}/s/org.example.reading?a={hub['token']}"
    resp = await coap(client, aiocoap.POST, uri, {"t": 21.5, "h": 40, "raw": b"\x01"})
    event_id = cbor2.loads(resp.payload)["event_id"]
    status, event = hub["gw"].request("GET", f"/_matrix/client/v3/rooms/{hub['room_id']}/event/{event_id}",
                                      token=hub["token"])
    assert event["content"] == {"t": {"$f": "21.5"}, "h": 40, "raw": {"$b": "AQ=="}}


async def test_json_content_format_and_accept(hub: dict[str, Any], client) -> None:
    uri = f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/s/org.example.reading/txn-json?a={hub['token']}"
    resp = await coap(client, aiocoap.PUT, uri, raw=b'{"t": 19.25, "n": 3}', content_format=50, accept=50)
    assert resp.code == aiocoap.CHANGED and resp.opt.content_format == 50
    import json
    event_id = json.loads(resp.payload)["event_id"]
    got = await coap(client, aiocoap.GET, f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/e/{event_id}?a={hub['token']}",
                     accept=50)
    assert json.loads(got.payload)["content"] == {"t": {"$f": "19.25"}, "n": 3}  # the lossless JSON form
    got = await coap(client, aiocoap.GET, f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/e/{event_id}?a={hub['token']}")
    assert cbor2.loads(got.payload)["content"] == {"t": 19.25, "n": 3}
    bad = await coap(client, aiocoap.GET, f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/e/{event_id}?a={hub['token']}",
                     accept=0)
    assert bad.code == aiocoap.NOT_ACCEPTABLE


# ---------------------------------------------------------------------------------------------
# MSC3079 codes, token option 256, more endpoints through the same route table
# ---------------------------------------------------------------------------------------------


async def test_msc3079_send_with_token_option_then_sync(hub: dict[str, Any], client) -> None:
    msg = aiocoap.Message(code=aiocoap.PUT, uri=f"{hub['base']}/9/{ALIAS_IN_URI}/m.room.message/m1",
                          payload=cbor2.dumps({"msgtype": "m.text", "body": "msc3079"}))
    msg.opt.add_option(aiocoap.optiontypes.OpaqueOption(256, hub["token"].encode()))
    resp = await client.request(msg).response
    assert resp.code == aiocoap.CHANGED, resp.payload
    event_id = cbor2.loads(resp.payload)["event_id"]

    sync = aiocoap.Message(code=aiocoap.GET, uri=f"{hub['base']}/7")
    sync.opt.add_option(aiocoap.optiontypes.OpaqueOption(256, hub["token"].encode()))
    resp = await client.request(sync).response  # larger than one block: Block2 by itself
    assert resp.code == aiocoap.CONTENT
    body = cbor2.loads(resp.payload)
    timeline = body["rooms"]["join"][hub["room_id"]]["timeline"]["events"]
    assert event_id in [ev["event_id"] for ev in timeline]


def test_state_whoami_and_joined_rooms_short_paths(hub: dict[str, Any]) -> None:
    out, err = coap_client("-m", "get", f"{hub['base']}/_m/c/v3/ac/w?a={hub['token']}")
    assert cbor2.loads(out)["user_id"] == "@alice:localhost", err
    out, err = coap_client("-m", "get", f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/st/m.room.name/?a={hub['token']}")
    assert cbor2.loads(out) == {"name": "Sensors"}, err
    out, err = coap_client("-m", "get", f"{hub['base']}/_m/c/v3/jr?a={hub['token']}")
    assert hub["room_id"] in cbor2.loads(out)["joined_rooms"], err


# ---------------------------------------------------------------------------------------------
# bad input: right code, a CBOR diagnostic, nothing stored
# ---------------------------------------------------------------------------------------------


def _diagnostic(err: str, code: str) -> str:
    assert err.startswith(code + " "), err
    return err


async def test_errors_map_to_coap_codes_and_store_nothing(hub: dict[str, Any], client) -> None:
    gw, token, base = hub["gw"], hub["token"], hub["base"]
    before = [ev["event_id"] for ev in http_timeline(gw, token, hub["room_id"], limit=50)]
    send = f"{base}/_m/c/a/v1/r/{ALIAS_IN_URI}/s/m.room.message"

    cases = [
        # (request, expected code, expected errcode)
        (dict(method=aiocoap.POST, uri=f"{send}?a={token}", raw=b"\xa1\x61"), aiocoap.BAD_REQUEST, "M_NOT_JSON"),
        (dict(method=aiocoap.POST, uri=f"{send}?a={token}", raw=b"\xa0\x00"), aiocoap.BAD_REQUEST, "M_NOT_JSON"),
        (dict(method=aiocoap.POST, uri=f"{send}?a={token}", payload=[1, 2]), aiocoap.BAD_REQUEST, "M_BAD_JSON"),
        (dict(method=aiocoap.POST, uri=send, payload={"body": "x"}), aiocoap.UNAUTHORIZED, "M_MISSING_TOKEN"),
        (dict(method=aiocoap.POST, uri=f"{send}?a=notatoken", payload={"body": "x"}), aiocoap.UNAUTHORIZED,
         "M_UNKNOWN_TOKEN"),
        (dict(method=aiocoap.POST, uri=f"{send}?a={hub['bob']}", payload={"body": "x"}), aiocoap.FORBIDDEN,
         "M_FORBIDDEN"),
        (dict(method=aiocoap.POST, uri=f"{base}/_m/c/a/v1/r/%23nowhere:localhost/s/m.room.message?a={token}",
              payload={"body": "x"}), aiocoap.NOT_FOUND, "M_NOT_FOUND"),
        (dict(method=aiocoap.GET, uri=f"{base}/_m/c/v3/nonsense?a={token}"), aiocoap.NOT_FOUND, "M_UNRECOGNIZED"),
        (dict(method=aiocoap.GET, uri=f"{base}/hello"), aiocoap.NOT_FOUND, "M_UNRECOGNIZED"),
        (dict(method=aiocoap.POST, uri=f"{send}?a={token}", payload={"body": "x" * 70_000}),
         aiocoap.REQUEST_ENTITY_TOO_LARGE, "M_TOO_LARGE"),
        (dict(method=aiocoap.POST, uri=f"{send}?a={token}", raw=b"hello", content_format=0),
         aiocoap.UNSUPPORTED_CONTENT_FORMAT, "M_NOT_JSON"),
    ]
    for request, code, errcode in cases:
        resp = await coap(client, **request)
        assert resp.code == code, (request["uri"], resp.code, resp.payload[:200])
        assert resp.opt.content_format == 60
        diag = cbor2.loads(resp.payload)
        assert diag["errcode"] == errcode and isinstance(diag["error"], str) and diag["error"], diag

    # coap-client shows the same: code and CBOR diagnostic on stderr
    out, err = coap_client("-m", "post", "-f", "-", f"{send}?a=wrongtoken", payload=cbor2.dumps({"body": "x"}))
    assert err.startswith("4.01 ") and b"M_UNKNOWN_TOKEN" in err.encode(), err
    assert out == b""

    after = [ev["event_id"] for ev in http_timeline(gw, token, hub["room_id"], limit=50)]
    assert after == before


def test_rate_limit_answers_4_29_with_max_age(tmp_path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "gateway.toml").write_text("messages_per_second = 0.1\nmessages_burst = 7\n")
    with GatewayProcess(data_dir) as gw:
        gw.add_user("carol", PASSWORD)
        token = gw.device_token("carol", "dev")
        status, room = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "r"}, token=token)
        assert status == 200
        uri = f"coap://127.0.0.1:{gw.coap_port}/_m/c/a/v1/r/%23r:localhost/s/m.room.message?a={token}"
        payload = cbor2.dumps({"msgtype": "m.text", "body": "x"})
        codes = []
        for _ in range(4):
            out, err = coap_client("-m", "post", "-f", "-", uri, payload=payload)
            codes.append(err.split(" ", 1)[0] if err else "2.04")
        assert codes[:2] == ["2.04", "2.04"] and codes[-1] == "4.29", codes  # createRoom cost 5
        assert "M_LIMIT_EXCEEDED" in err

        async def max_age() -> tuple[Any, Any, dict[str, Any]]:
            ctx = await aiocoap.Context.create_client_context()
            try:
                resp = await coap(ctx, aiocoap.POST, uri, raw=payload)
            finally:
                await ctx.shutdown()
            return resp.code, resp.opt.max_age, cbor2.loads(resp.payload)

        code, seconds, diag = asyncio.run(max_age())
        assert code == aiocoap.TOO_MANY_REQUESTS and diag["errcode"] == "M_LIMIT_EXCEEDED"
        assert seconds == math.ceil(diag["retry_after_ms"] / 1000) and seconds >= 1
        bodies = [ev["content"].get("body") for ev in http_timeline(gw, token, room["room_id"])
                  if ev["type"] == "m.room.message"]
        assert len(bodies) == codes.count("2.04")


# ---------------------------------------------------------------------------------------------
# block-wise transfer (RFC 7959) both ways
# ---------------------------------------------------------------------------------------------


def test_blockwise_post_and_get_with_coap_client(hub: dict[str, Any]) -> None:
    text = "".join(f"line {i:05d} of a long reading\n" for i in range(300))  # ~9 KB: Block1
    out, err = coap_client("-m", "put", "-f", "-",
                           f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/s/m.room.message/big1?a={hub['token']}",
                           payload=cbor2.dumps({"msgtype": "m.text", "body": text}))
    event_id = cbor2.loads(out)["event_id"]
    out, err = coap_client("-m", "get", "-b", "64", f"{hub['base']}/_m/c/v3/r/{ALIAS_IN_URI}/e/{event_id}"
                           f"?a={hub['token']}")
    assert cbor2.loads(out)["content"]["body"] == text, err[:300]


# ---------------------------------------------------------------------------------------------
# the message layer (frontends/coap/message_layer.py) with a bare UDP peer: what a device whose
# ACK got lost, or whose hub is slow, sees
# ---------------------------------------------------------------------------------------------


def _raw_post(hub: dict[str, Any], mid: int, token: bytes, body: Any, mtype: int = 0) -> bytes:
    from frontends.coap import wire
    path = ["_m", "c", "a", "v1", "r", ALIAS_IN_URI.replace("%23", "#"), "s", "m.room.message"]
    options = [(11, seg.encode()) for seg in path] + [(15, f"a={hub['token']}".encode())]
    return wire.encode(mtype, 2, mid, token, options, cbor2.dumps(body))


def _udp(hub: dict[str, Any]) -> Any:
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", hub["gw"].coap_port))
    return sock


def _bodies(hub: dict[str, Any], text: str) -> int:
    return sum(1 for ev in http_timeline(hub["gw"], hub["token"], hub["room_id"], limit=50)
               if ev["content"].get("body") == text)


def test_retransmitted_con_post_is_stored_once_and_answered_alike(hub: dict[str, Any]) -> None:
    with _udp(hub) as sock:
        request = _raw_post(hub, 0x4242, b"rt", {"msgtype": "m.text", "body": "retransmitted"})
        sock.send(request)
        first = sock.recv(2048)
        answer = aiocoap.Message.decode(first)
        assert (answer.mtype, answer.mid, answer.token, answer.code) == (aiocoap.ACK, 0x4242, b"rt", aiocoap.CHANGED)
        sock.send(request)  # the device did not get the ACK and sends the same message again
        assert sock.recv(2048) == first
    assert _bodies(hub, "retransmitted") == 1


def test_slow_commit_gets_empty_ack_then_separate_response(hub: dict[str, Any]) -> None:
    """The database is held locked by the test, so the write waits: the hub acknowledges the
    request with an empty ACK and sends the answer as a CON of its own once the event is stored."""
    import sqlite3
    lock = sqlite3.connect(hub["gw"].data_dir / "homeserver.db", timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        with _udp(hub) as sock:
            request = _raw_post(hub, 0x0707, b"sep", {"msgtype": "m.text", "body": "separate"})
            sock.send(request)
            ack = aiocoap.Message.decode(sock.recv(2048))
            assert (ack.mtype, ack.code, ack.mid) == (aiocoap.ACK, aiocoap.EMPTY, 0x0707)
            sock.send(request)  # a retransmission now gets the empty ACK again, not a second write
            again = aiocoap.Message.decode(sock.recv(2048))
            assert (again.mtype, again.code, again.mid) == (aiocoap.ACK, aiocoap.EMPTY, 0x0707)
            lock.execute("ROLLBACK")
            response = aiocoap.Message.decode(sock.recv(2048))
            assert (response.mtype, response.code, response.token) == (aiocoap.CON, aiocoap.CHANGED, b"sep")
            assert cbor2.loads(response.payload)["event_id"].startswith("$")
            sock.send(bytes([0x60, 0]) + response.mid.to_bytes(2, "big"))  # ACK it
            sock.send(request)  # a late copy of the request
            late = aiocoap.Message.decode(sock.recv(2048))
            assert (late.mtype, late.code, late.mid) == (aiocoap.ACK, aiocoap.EMPTY, 0x0707)
    finally:
        lock.close()
    assert _bodies(hub, "separate") == 1


def test_non_post_is_answered_non(hub: dict[str, Any]) -> None:
    with _udp(hub) as sock:
        request = _raw_post(hub, 0x0909, b"non", {"msgtype": "m.text", "body": "non-confirmable"}, mtype=1)
        sock.send(request)
        answer = aiocoap.Message.decode(sock.recv(2048))
        assert (answer.mtype, answer.code, answer.token) == (aiocoap.NON, aiocoap.CHANGED, b"non")
        event_id = cbor2.loads(answer.payload)["event_id"]
        sock.send(request)  # a duplicate NON is ignored ...
        sock.send(_raw_post(hub, 0x090A, b"con", {"msgtype": "m.text", "body": "after non"}))
        answer = aiocoap.Message.decode(sock.recv(2048))  # ... so the next answer is the CON's
        assert (answer.mtype, answer.mid, answer.token) == (aiocoap.ACK, 0x090A, b"con")
    assert _bodies(hub, "non-confirmable") == 1
    assert event_id in [ev["event_id"] for ev in http_timeline(hub["gw"], hub["token"], hub["room_id"])]


def test_ping_is_still_answered_with_rst(hub: dict[str, Any]) -> None:
    with _udp(hub) as sock:
        sock.send(bytes([0x40, 0, 0x12, 0x34]))  # empty CON: CoAP ping
        assert sock.recv(2048) == bytes([0x70, 0, 0x12, 0x34])


async def test_non_confirmable_posts_from_coap_client_and_aiocoap(hub: dict[str, Any], client) -> None:
    uri = f"{hub['base']}/_m/c/a/v1/r/{ALIAS_IN_URI}/s/m.room.message?a={hub['token']}"
    out, err = await asyncio.to_thread(coap_client, "-N", "-m", "post", "-f", "-", uri,
                                       payload=cbor2.dumps({"msgtype": "m.text", "body": "non by libcoap"}))
    assert cbor2.loads(out)["event_id"].startswith("$"), err
    msg = aiocoap.Message(code=aiocoap.POST, uri=uri, transport_tuning=aiocoap.Unreliable,
                          payload=cbor2.dumps({"msgtype": "m.text", "body": "non by aiocoap"}))
    resp = await client.request(msg).response
    assert resp.code == aiocoap.CHANGED and resp.mtype == aiocoap.NON
    assert _bodies(hub, "non by libcoap") == 1 and _bodies(hub, "non by aiocoap") == 1
