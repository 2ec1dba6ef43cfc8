"""Federation transport against a real Synapse (PyPI matrix-synapse) on loopback.

The hub runs as a user starts it (the CLI, via GatewayProcess) with server name
localhost:<federation port>, certificate checks off and loopback allowed (both peers use
self-signed certificates on 127.0.0.1). Outbound requests are driven from this process by a
FederationClient that signs as the hub with the hub's own signing.key, so Synapse has to fetch the
hub's key from the hub's TLS listener to accept them.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import aiohttp
import pytest
import yaml
import yarl

from matrix_core.federation.client import (
    DestinationRefused, FederationClient, FederationError, federation_path,
)
from matrix_core.federation.keyring import KeyRing
from matrix_core.federation.server import FederationFrontend, FederationRequest, FederationRoutes
from matrix_core.federation.xmatrix import build_authorization, parse_header, verify_request
from matrix_core.signing import generate_signing_key, parse_signing_key
from matrix_core.store.database import Database
from tests.support.gateway import GatewayProcess, free_port
from tests.support.synapse import SynapseProcess

FLAGS = ["--no-federation-tls-verify", "--federation-allow-loopback"]


def _synapse_key(synapse: SynapseProcess) -> Any:
    cfg = yaml.safe_load(synapse.config_path.read_text())
    return parse_signing_key(Path(cfg["signing_key_path"]).read_text())


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    with SynapseProcess(tmp_path_factory.mktemp("synapse") / "hs") as hs:
        hs.register_user("alice", "synapse-pw")
        hs.api("PUT", f"/_matrix/client/v3/profile/{hs.quote(hs.user_id('alice'))}/displayname",
               {"displayname": "Alice on Synapse"}, token=hs.login("alice", "synapse-pw"))
        yield hs


def _start_gateway(data_dir: Path, extra: list[str]) -> GatewayProcess:
    gw = GatewayProcess(data_dir, extra_args=extra)
    gw.server_name = f"localhost:{gw.federation_port}"
    gw.start()
    return gw


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = _start_gateway(Path(tmp_path_factory.mktemp("hub")) / "data", FLAGS)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def as_hub(gw: GatewayProcess, **kwargs: Any) -> FederationClient:
    """A client that signs as the running hub, with the hub's own key from its data dir."""
    key = parse_signing_key((gw.data_dir / "signing.key").read_text())
    return FederationClient(SimpleNamespace(server_name=gw.server_name, signing_key=key), **kwargs)


def fed_url(gw: GatewayProcess, path: str) -> str:
    return f"https://127.0.0.1:{gw.federation_port}{path}"


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def raw_request(gw: GatewayProcess, method: str, path: str, headers: dict[str, str] | None = None,
                      data: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, yarl.URL(fed_url(gw, path), encoded=True), headers=headers,
                                   data=data, ssl=_insecure()) as resp:
            return resp.status, await resp.json(content_type=None)


# (a) outbound: Synapse accepts our X-Matrix signature, having fetched our key over our TLS listener

async def test_signed_request_to_synapse_is_accepted(gateway: GatewayProcess, synapse: SynapseProcess) -> None:
    client = as_hub(gateway, verify_tls=False, allow_loopback=True)
    try:
        profile = await client.request(synapse.server_name, "GET", "/_matrix/federation/v1/query/profile",
                                       query={"user_id": synapse.user_id("alice")})
        assert profile["displayname"] == "Alice on Synapse"
        # A path parameter with '@' and ':' percent-encoded, signed exactly as sent.
        path = federation_path("/_matrix/federation/v1/user/devices/{userId}", userId=synapse.user_id("alice"))
        assert "%40" in path and "%3A" in path
        devices = await client.request(synapse.server_name, "GET", path)
        assert devices["user_id"] == synapse.user_id("alice")
    finally:
        await client.close()


async def test_synapse_refuses_a_signature_by_another_key(gateway: GatewayProcess, synapse: SynapseProcess) -> None:
    real = parse_signing_key((gateway.data_dir / "signing.key").read_text())
    impostor = generate_signing_key(real.version)  # same key id, different key
    client = FederationClient(SimpleNamespace(server_name=gateway.server_name, signing_key=impostor),
                              verify_tls=False, allow_loopback=True)
    try:
        with pytest.raises(FederationError) as info:
            await client.request(synapse.server_name, "GET", "/_matrix/federation/v1/query/profile",
                                 query={"user_id": synapse.user_id("alice")})
        assert info.value.status == 401
        assert info.value.errcode == "M_UNAUTHORIZED"
    finally:
        await client.close()


# (b) Synapse's keys, fetched directly and through notaries, self-signatures checked

async def test_keyring_fetches_synapse_keys_directly_and_via_notaries(
        gateway: GatewayProcess, synapse: SynapseProcess, tmp_path: Path) -> None:
    synapse_key = _synapse_key(synapse)
    hub_key = parse_signing_key((gateway.data_dir / "signing.key").read_text())
    me = SimpleNamespace(server_name="tester.invalid", signing_key=generate_signing_key())
    client = FederationClient(me, verify_tls=False, allow_loopback=True)
    db = Database(tmp_path / "keys.db")
    await db.open()
    try:
        ring = KeyRing(me.server_name, me.signing_key, client=client, db=db)
        now = int(time.time() * 1000)
        direct = await ring.fetch_direct(synapse.server_name)
        assert direct[synapse_key.key_id].key == synapse_key.verify_key_bytes
        assert direct[synapse_key.key_id].valid_until_ts > now

        # Synapse as a notary, about itself and about the hub (Synapse fetches the hub's key).
        via = await ring.fetch_via_notary(synapse.server_name, {
            synapse.server_name: {synapse_key.key_id: now},
            gateway.server_name: {hub_key.key_id: now},
        })
        assert via[synapse.server_name][synapse_key.key_id].key == synapse_key.verify_key_bytes
        assert via[gateway.server_name][hub_key.key_id].key == hub_key.verify_key_bytes

        # The hub as a notary about Synapse: it fetches Synapse's keys and signs the document.
        ring_b = KeyRing(me.server_name, me.signing_key, client=client)
        via_hub = await ring_b.fetch_via_notary(gateway.server_name, {synapse.server_name: {synapse_key.key_id: now}})
        assert via_hub[synapse.server_name][synapse_key.key_id].key == synapse_key.verify_key_bytes

        # Cached in SQLite: a fresh keyring on the same database needs no network.
        offline = KeyRing(me.server_name, me.signing_key, client=None, db=db)
        key = await offline.get_server_key(synapse.server_name, synapse_key.key_id, now)
        assert key.key == synapse_key.verify_key_bytes
        # valid_until_ts is respected: not usable for a time after its validity.
        assert await offline.get_verify_key(synapse.server_name, synapse_key.key_id, key.valid_until_ts + 1) is None
    finally:
        await db.close()
        await client.close()


async def test_hub_key_server_and_notary_answers(gateway: GatewayProcess, synapse: SynapseProcess) -> None:
    hub_key = parse_signing_key((gateway.data_dir / "signing.key").read_text())
    status, doc = await raw_request(gateway, "GET", "/_matrix/key/v2/server")
    assert status == 200
    assert doc["verify_keys"] == {hub_key.key_id: {"key": hub_key.verify_key_base64}}
    assert doc["old_verify_keys"] == {}
    day = 24 * 3600 * 1000
    assert 0 < doc["valid_until_ts"] - int(time.time() * 1000) <= day
    status, answer = await raw_request(gateway, "GET",
                                       f"/_matrix/key/v2/query/{synapse.server_name}?minimum_valid_until_ts=0")
    assert status == 200
    [relayed] = answer["server_keys"]
    assert relayed["server_name"] == synapse.server_name
    assert set(relayed["signatures"]) == {synapse.server_name, gateway.server_name}


# (c) inbound: X-Matrix checked on the hub's listener

async def test_inbound_requests_need_a_valid_x_matrix_signature(
        gateway: GatewayProcess, synapse: SynapseProcess) -> None:
    path = "/_matrix/federation/v1/transport-test/%40alice%3Aexample.org?x=%3A"
    status, body = await raw_request(gateway, "GET", path)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")

    synapse_key = _synapse_key(synapse)
    good = build_authorization("GET", path, synapse.server_name, gateway.server_name, synapse_key)
    # Signed as Synapse with Synapse's key: the hub fetches that key from Synapse and lets it
    # through to routing (no route: 404 M_UNRECOGNIZED, not 401).
    status, body = await raw_request(gateway, "GET", path, {"Authorization": good})
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED"), body

    sig = parse_header(good).signature
    flipped = sig[:10] + ("B" if sig[10] != "B" else "C") + sig[11:]
    for bad in (
        good.replace(sig, flipped),                                                    # tampered signature
        build_authorization("GET", path, synapse.server_name, "elsewhere.example", synapse_key),  # not us
        build_authorization("GET", path.replace("%40", "@"), synapse.server_name, gateway.server_name,
                            synapse_key),                                              # another uri
        build_authorization("GET", path, synapse.server_name, gateway.server_name,
                            generate_signing_key(synapse_key.version)),                # wrong key
    ):
        status, body = await raw_request(gateway, "GET", path, {"Authorization": bad})
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), bad

    # A body is part of what is signed: the same header with other content fails.
    put_path = "/_matrix/federation/v1/send/txn1"
    content = {"pdus": [], "edus": []}
    auth = build_authorization("PUT", put_path, synapse.server_name, gateway.server_name, synapse_key, content)
    status, body = await raw_request(gateway, "PUT", put_path, {"Authorization": auth, "Content-Type": "application/json"},
                                     b'{"pdus":[],"edus":[{"edu_type":"m.typing"}]}')
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    status, body = await raw_request(gateway, "PUT", put_path, {"Authorization": auth}, b"{not json")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")
    status, body = await raw_request(gateway, "PUT", put_path, {"Authorization": auth}, b'{"x": 1.5}')
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_inbound_body_over_the_limit_is_refused(gateway: GatewayProcess) -> None:
    from matrix_core.federation.server import MAX_BODY_BYTES

    status, body = await raw_request(gateway, "PUT", "/_matrix/federation/v1/send/big",
                                     {"Content-Type": "application/json"}, b" " * (MAX_BODY_BYTES + 1))
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")


async def test_a_synapse_request_is_authenticated_by_our_listener(synapse: SynapseProcess, tmp_path: Path) -> None:
    """Synapse signs a request to our listener (run in this process with a recording route)."""
    port = free_port()
    me = SimpleNamespace(server_name=f"localhost:{port}", signing_key=generate_signing_key(), db=None)
    seen: list[FederationRequest] = []

    async def profile(hs: Any, origin: str, request: FederationRequest) -> tuple[int, Any]:
        seen.append(request)
        return 200, {"displayname": f"profile for {request.arg('user_id')} asked by {origin}"}

    routes = FederationRoutes()
    routes.add("GET", "/_matrix/federation/v1/query/profile", profile)
    frontend = FederationFrontend(me, tmp_path, "127.0.0.1", port, verify_tls=False, allow_loopback=True,
                                  routes=routes)
    await frontend.start()
    try:
        _, token = await asyncio.to_thread(synapse.register_user, "carol", "pw-c")
        user = f"@bob:{me.server_name}"
        answer = await asyncio.to_thread(
            synapse.api, "GET", f"/_matrix/client/v3/profile/{synapse.quote(user)}", token=token)
        assert answer["displayname"] == f"profile for {user} asked by {synapse.server_name}"
        [request] = seen
        header = request.headers["Authorization"]
        auth = parse_header(header)
        assert (auth.origin, auth.destination, auth.key_id) == (
            synapse.server_name, me.server_name, _synapse_key(synapse).key_id)
        assert "%40bob%3Alocalhost" in request.raw_path  # verified against the raw path
        verify_request(auth, "GET", request.raw_path, me.server_name, _synapse_key(synapse).verify_key_bytes)
        assert me.keyring.get_verify_key is not None and me.federation_client is frontend.client
    finally:
        await frontend.stop()


# (d) outbound federation to loopback is refused unless allowed

async def test_outbound_to_loopback_is_refused_by_default(gateway: GatewayProcess, synapse: SynapseProcess) -> None:
    client = as_hub(gateway, verify_tls=False)  # allow_loopback defaults to False
    try:
        for destination in (synapse.server_name, f"127.0.0.1:{synapse.federation_port}",
                            f"[::1]:{synapse.federation_port}"):
            with pytest.raises(DestinationRefused):
                await client.request(destination, "GET", "/_matrix/federation/v1/version", authenticated=False)
    finally:
        await client.close()
    verifying = as_hub(gateway, allow_loopback=True)  # TLS verification on by default: self-signed fails
    try:
        with pytest.raises(Exception) as info:
            await verifying.request(synapse.server_name, "GET", "/_matrix/federation/v1/version",
                                    authenticated=False)
        assert "certificate" in str(info.value).lower()
    finally:
        await verifying.close()


async def test_hub_without_flags_refuses_loopback_and_self_signed_peers(
        synapse: SynapseProcess, tmp_path: Path) -> None:
    gw = _start_gateway(tmp_path / "strict", [])
    try:
        status, answer = await raw_request(gw, "POST", "/_matrix/key/v2/query",
                                           data=b'{"server_keys": {"%s": {}}}' % synapse.server_name.encode())
        assert status == 200 and answer == {"server_keys": []}
        assert "refused" in gw.read_log()
    finally:
        assert gw.stop() == 0
