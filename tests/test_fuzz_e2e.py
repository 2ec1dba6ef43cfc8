"""Fuzzing the hub as a user starts it (the CLI), over its real sockets, for a bounded time each:
mutated MQTT sessions over TCP, mutated CoAP datagrams over UDP, mutated HTTP requests and JSON
bodies. Afterwards the hub is alive and serves a normal request on that protocol (paho,
aiocoap-free raw CoAP, urllib), no HTTP answer was a 500 nor a CoAP one a 5.00, and its log has
no traceback. The drivers and the input classes left to other changes are in
tests/support/fuzz_e2e.py; the long run is `bench/fuzz.py --e2e`. HTTP goes first: the MQTT fuzz
makes alice a member of many rooms, which makes every sync of hers heavier.
"""
from __future__ import annotations

import socket
from typing import Any, Iterator

import cbor2
import paho.mqtt.client as mqtt
import pytest

from bridges.coap import wire
from tests.support.fuzz_e2e import E2EResult, fuzz_coap, fuzz_http, fuzz_mqtt, tracebacks
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho

SEED = 20
SECONDS = 12.0


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> Iterator[dict[str, Any]]:
    token = gateway.device_token("alice", "fuzzer")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                   {"room_alias_name": "fuzz", "name": "Fuzz"}, token=token)
    assert status == 200, body
    # bob checks the hub afterwards: alice's token may have spent its rate limit on the fuzz
    bob = gateway.device_token("bob", "checker")
    status, bob_room = gateway.request("POST", "/_matrix/client/v3/createRoom", {"name": "Check"}, token=bob)
    assert status == 200, bob_room
    yield {"gw": gateway, "token": token, "room": body["room_id"], "user": "@alice:localhost",
           "bob": bob, "bob_room": bob_room["room_id"]}


def _log_is_clean(gw: GatewayProcess, result: E2EResult) -> None:
    unknown, known = tracebacks(gw.log_path().read_text(errors="replace"))
    assert not unknown, f"{len(unknown)} traceback(s) in the hub's log after {result.count} inputs:\n" \
                        + "\n---\n".join(unknown[:3])
    for why, n in known.items():
        print(f"known elsewhere: {n} traceback(s): {why}")


def _report(result: E2EResult) -> None:
    print(f"{result.protocol}: {result.count} inputs in {result.seconds:.1f} s ({result.rate:.0f}/s), "
          f"answers {result.answers}, left to other changes {result.known}")
    assert not result.failures, "\n".join(result.failures[:10])


def test_http_fuzz_leaves_the_api_serving(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    result = fuzz_http(gw.http_port, hub["token"], hub["user"], hub["room"], SEED, SECONDS)
    assert result.count > 100
    _report(result)
    status, body = gw.request("GET", "/_matrix/client/v3/account/whoami", token=hub["token"])
    assert status == 200 and body["user_id"] == hub["user"]
    status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{hub['bob_room']}/send/m.room.message/after",
                              {"msgtype": "m.text", "body": "after the fuzz"}, token=hub["bob"])
    assert status == 200, body
    _log_is_clean(gw, result)


def test_coap_fuzz_leaves_the_coap_listener_serving(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    result = fuzz_coap(gw.coap_port, hub["token"], "#fuzz:localhost", SEED, SECONDS)
    assert result.count > 200
    _report(result)
    # message id 0: the fuzz counted up from 1 (a port the kernel hands out again, with an id the
    # fuzz used, would be a retransmission to the hub's deduplication, rightly)
    request = wire.encode(wire.CON, 2, 0, b"ok", [
        (11, b"_m"), (11, b"c"), (11, b"a"), (11, b"v1"), (11, b"r"), (11, hub["bob_room"].encode()),
        (11, b"s"), (11, b"m.room.message"), (15, f"a={hub['bob']}".encode())],
        cbor2.dumps({"msgtype": "m.text", "body": "after the fuzz"}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", gw.coap_port))
        sock.send(request)
        while True:  # piggybacked on the ACK, or separate (an empty ACK first): match the token
            answer = sock.recv(2048)
            if answer[1] and answer[4:4 + (answer[0] & 0x0F)] == b"ok":
                break
    assert answer[1] == 0x44, answer.hex()  # 2.04 Changed
    assert "event_id" in cbor2.loads(answer[answer.index(b"\xff") + 1:])
    _log_is_clean(gw, result)


def test_mqtt_fuzz_leaves_the_broker_serving(hub: dict[str, Any]) -> None:
    gw = hub["gw"]
    result = fuzz_mqtt(gw.mqtt_port, "alice", hub["token"], SEED, SECONDS)
    assert result.count > 50
    _report(result)
    client = Paho(gw.mqtt_port, "alice", hub["token"], "after-fuzz", protocol=mqtt.MQTTv5)
    try:
        _, reason, _ = client.connect()
        assert reason == 0
        assert client.subscribe("fuzz/after/#", 1)[0] == 1
        client.publish("fuzz/after/x", b"still here", qos=1)
        assert client.get().payload == b"still here"
    finally:
        client.disconnect()
    _log_is_clean(gw, result)
