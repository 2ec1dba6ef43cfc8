"""The login throttle (issue 20, M4): failed passwords are throttled per account and per client
address in the core, and every protocol answers a throttled attempt as "try later".

The pure throttle is tested with a fake clock; then, per protocol against the CLI-started hub, the
two attacks from the issue: a broken client failing from an address must not lock out another
account's right password from that address (nor its own owner's from elsewhere), and an attacker
holding a valid account must not reset their bucket by logging into it. Clients pick their source
address on loopback (127.0.0.x) to play different hosts.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import math
import subprocess
import time
from typing import Any, Callable, Iterator

import aiocoap
import cbor2
import paho.mqtt.client as mqtt
import pytest

from matrix_core.errors import MatrixError
from matrix_core.ratelimit import LoginLimits, LoginThrottle, RateLimit, address_key
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

# ---------------------------------------------------------------------------------------------
# the throttle itself (pure, fake clock)
# ---------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled(throttle: LoginThrottle, user: str, address: str) -> bool:
    try:
        throttle.attempt(user, address)
    except MatrixError as err:
        assert err.status == 429 and err.errcode == "M_LIMIT_EXCEEDED" and err.extra["retry_after_ms"] > 0
        return True
    return False


def fail(throttle: LoginThrottle, user: str, address: str, times: int) -> list[bool]:
    """`times` wrong passwords (a check that is let through takes its tokens and is never refunded)."""
    return [throttled(throttle, user, address) for _ in range(times)]


def test_a_broken_client_locks_out_neither_other_accounts_nor_its_owner_elsewhere() -> None:
    t = LoginThrottle(clock=Clock())
    assert fail(t, "@sensor:hub", "192.0.2.7", 12) == [False] * 10 + [True] * 2
    assert not throttled(t, "@family:hub", "192.0.2.7")  # same address, another account
    assert not throttled(t, "@sensor:hub", "192.0.2.8")  # the owner, from another host


def test_an_attackers_own_account_does_not_refill_their_bucket() -> None:
    t = LoginThrottle(clock=Clock())
    assert fail(t, "@victim:hub", "192.0.2.66", 11) == [False] * 10 + [True]
    t.succeeded(t.attempt("@mallory:hub", "192.0.2.66"))  # their own account, right password
    assert throttled(t, "@victim:hub", "192.0.2.66")
    for _ in range(20):  # successes, as many as they like
        t.succeeded(t.attempt("@mallory:hub", "192.0.2.66"))
    assert throttled(t, "@victim:hub", "192.0.2.66")
    assert not throttled(t, "@victim:hub", "192.0.2.1")  # the victim, at home


def test_the_throttle_lifts_at_the_refill_rate() -> None:
    clock = Clock()
    t = LoginThrottle(LoginLimits(account=RateLimit(1 / 30, 5), address=RateLimit(1 / 60, 10)), clock)
    fail(t, "@victim:hub", "192.0.2.66", 10)
    assert throttled(t, "@victim:hub", "192.0.2.66")
    clock.now += 30.5  # one account token back
    assert fail(t, "@victim:hub", "192.0.2.66", 2) == [False, True]


def test_concurrent_attempts_cannot_all_pass_one_check() -> None:
    """Each attempt takes its tokens before the (slow) password check, not after."""
    t = LoginThrottle(clock=Clock())
    outcomes = []
    for _ in range(30):  # none has finished yet
        try:
            outcomes.append(t.attempt("@victim:hub", "192.0.2.66"))
        except MatrixError:
            outcomes.append(None)
    assert sum(o is not None for o in outcomes) == 10


def test_a_success_hands_back_only_what_it_took() -> None:
    """An address drained by failures stays drained however often its own account logs in."""
    t = LoginThrottle(clock=Clock())
    fail(t, "@victim:hub", "192.0.2.66", 10)
    for _ in range(5):
        t.succeeded(t.attempt("@mallory:hub", "192.0.2.66"))
    assert t.addresses.tokens("192.0.2.66") < 1


def test_an_address_that_floods_is_refused_even_for_fresh_accounts() -> None:
    t = LoginThrottle(clock=Clock())
    outcomes = [throttled(t, f"@user{i}:hub", "192.0.2.66") for i in range(31)]
    assert outcomes == [False] * 30 + [True]
    assert throttled(t, "@family:hub", "192.0.2.66")
    assert not throttled(t, "@family:hub", "192.0.2.1")


def test_address_keys() -> None:
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("unknown") == "unknown"


# ---------------------------------------------------------------------------------------------
# over every protocol, against the hub
# ---------------------------------------------------------------------------------------------

ACCOUNTS = ["family", "mallory"] + [f"{role}_{proto}" for proto in ("http", "mqtt3", "mqtt5", "coap")
                                    for role in ("sensor", "victim")]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("throttle") / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("enable_registration = true\n")  # accounts in one request each
    with GatewayProcess(data) as gw:
        for name in ACCOUNTS:
            status, body = gw.request("POST", "/_matrix/client/v3/register",
                                      {"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
        yield gw
        assert "Traceback" not in gw.log_path().read_text()


def check_attacks(login: Callable[[str, str, str], Any], ok: Any, wrong: Any, throttled_code: Any,
                  proto: str, net: str) -> None:
    """The issue's two attacks over one protocol; `login(user, password, source address)` answers
    `ok`, `wrong` (bad password) or `throttled_code`. Hosts are 127.0.0.<net><n>."""
    broken, owner, attacker, home = (f"127.0.0.{net}{n}" for n in range(1, 5))
    sensor, victim = f"sensor_{proto}", f"victim_{proto}"
    # A broken client retries a stale password: wrong, then throttled ("try later").
    answers = [login(sensor, "stale password", broken) for _ in range(12)]
    assert answers == [wrong] * 10 + [throttled_code] * 2, answers
    # A family member on the same address still gets in; so does the owner, from another host.
    assert login("family", PASSWORD, broken) == ok
    assert login(sensor, PASSWORD, owner) == ok
    # An attacker guessing the victim's password is throttled ...
    answers = [login(victim, f"guess {i}", attacker) for i in range(11)]
    assert answers == [wrong] * 10 + [throttled_code], answers
    # ... and logging into an account of their own resets nothing: even the right password for
    # the victim is refused unchecked (a throttled guess learns nothing).
    assert login("mallory", PASSWORD, attacker) == ok
    assert login(victim, PASSWORD, attacker) == throttled_code
    # The victim, at home, is not locked out.
    assert login(victim, PASSWORD, home) == ok


def test_http(hub: GatewayProcess) -> None:
    retry_hints = []

    def login(user: str, password: str, source: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=30, source_address=(source, 0))
        try:
            conn.request("POST", "/_matrix/client/v3/login", json.dumps({
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                "password": password}), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        if resp.status == 429:
            assert body["errcode"] == "M_LIMIT_EXCEEDED", body
            retry_hints.append(body["retry_after_ms"])
        return resp.status

    check_attacks(login, 200, 403, 429, "http", "1")
    assert retry_hints and all(isinstance(ms, int) and ms > 0 for ms in retry_hints)


@pytest.mark.parametrize("protocol,proto,net,wrong,throttled_code", [
    (mqtt.MQTTv311, "mqtt3", "2", "Bad user name or password", "Server unavailable"),  # 0x04, 0x03
    (mqtt.MQTTv5, "mqtt5", "3", 0x86, 0x97),  # Bad User Name or Password, Quota exceeded
], ids=["3.1.1", "5"])
def test_mqtt_connect(hub: GatewayProcess, protocol: int, proto: str, net: str, wrong: Any,
                      throttled_code: Any) -> None:
    def login(user: str, password: str, source: str) -> Any:
        """One CONNECT from `source`; paho's loop is run here (no thread, so no reconnect)."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{source}", protocol=protocol)
        client.username_pw_set(user, password)
        connacks: list[Any] = []
        client.on_connect = lambda c, userdata, flags, rc, props: connacks.append(rc)
        client.connect("127.0.0.1", hub.mqtt_port, bind_address=source)
        deadline = time.monotonic() + 10
        while not connacks and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        client.disconnect()
        assert connacks, "no CONNACK"
        rc = connacks[0]
        if protocol == mqtt.MQTTv5:
            return int(rc.value)
        return "ok" if rc == 0 else rc.getName()

    check_attacks(login, 0 if protocol == mqtt.MQTTv5 else "ok", wrong, throttled_code, proto, net)


def test_coap(hub: GatewayProcess) -> None:
    uri = f"coap://127.0.0.1:{hub.coap_port}/_matrix/client/v3/login"

    def login(user: str, password: str, source: str) -> str:
        body = cbor2.dumps({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": password})
        proc = subprocess.run(["coap-client-notls", "-a", source, "-m", "post", "-f", "-", "-o", "-", uri],
                              input=body, capture_output=True, timeout=20)
        err = proc.stderr.decode("utf-8", "replace")
        return err.split(" ", 1)[0] if err else "2.04"

    check_attacks(login, "2.04", "4.03", "4.29", "coap", "4")

    async def throttled_answer() -> aiocoap.Message:
        ctx = await aiocoap.Context.create_client_context()  # from 127.0.0.1: another host's bucket
        try:
            payload = cbor2.dumps({"type": "m.login.password", "user": "victim_coap", "password": "guess"})
            answers = [await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload)).response
                       for _ in range(11)]
        finally:
            await ctx.shutdown()
        assert [a.code for a in answers[:10]] == [aiocoap.FORBIDDEN] * 10
        return answers[10]

    answer = asyncio.run(throttled_answer())
    diagnostic = cbor2.loads(answer.payload)
    assert answer.code == aiocoap.TOO_MANY_REQUESTS and diagnostic["errcode"] == "M_LIMIT_EXCEEDED"
    assert answer.opt.max_age == math.ceil(diagnostic["retry_after_ms"] / 1000) >= 1
