"""Bad federation input against the running hub: a hostile server on loopback ("evil") joins a
public hub room, then sends bad signatures, wrong hashes, events failing auth, forged origins,
malformed JSON and oversize transactions. Each is refused with the right answer, nothing bad is
stored as accepted, and the transaction (and the hub) go on serving."""
from __future__ import annotations

import asyncio
import copy
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from matrix_core.event_hashing import hash_sign_and_compute_event_id
from matrix_core.federation.client import FederationClient, FederationError, federation_path
from matrix_core.federation.keys import own_key_document
from matrix_core.federation.tls import make_self_signed, server_context
from matrix_core.room_versions import KNOWN_ROOM_VERSIONS
from matrix_core.signing import generate_signing_key
from tests.support.gateway import GatewayProcess, free_port

FLAGS = ["--no-federation-tls-verify", "--federation-allow-loopback"]
PW = "hub password"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class EvilServer:
    """A minimal remote homeserver: serves its key over TLS and signs what the test builds."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.key = generate_signing_key()
        self.workdir = workdir
        self.runner: web.AppRunner | None = None
        self.client = FederationClient(SimpleNamespace(server_name=self.server_name, signing_key=self.key),
                                       verify_tls=False, allow_loopback=True)

    async def start(self) -> None:
        async def keys(_: web.Request) -> web.Response:
            return web.json_response(own_key_document(self.server_name, self.key, int(time.time() * 1000)))

        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", keys)
        app.router.add_get("/_matrix/key/v2/server/{key_id}", keys)
        cert, key = self.workdir / "evil.crt", self.workdir / "evil.key"
        make_self_signed(cert, key, self.server_name)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=server_context(cert, key)).start()

    async def stop(self) -> None:
        await self.client.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def sign(self, pdu: dict[str, Any], version: str, key: Any = None) -> tuple[dict[str, Any], str]:
        return hash_sign_and_compute_event_id(pdu, KNOWN_ROOM_VERSIONS[version], self.server_name, key or self.key)


@pytest.fixture()
def hub(tmp_path: Path) -> Any:
    data = tmp_path / "data"
    gw = GatewayProcess(data, extra_args=FLAGS)
    gw.server_name = f"localhost:{gw.federation_port}"
    data.mkdir(parents=True)
    (data / "gateway.toml").write_text(f'server_name = "{gw.server_name}"\n')
    gw.start()
    gw.add_user("host", PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture()
async def evil(tmp_path: Path) -> AsyncIterator[EvilServer]:
    server = EvilServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


async def test_hostile_pdus_are_refused_and_nothing_bad_is_stored(hub: GatewayProcess, evil: EvilServer) -> None:
    token = hub.login("host", PW)
    status, created = hub.request("POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat", "room_alias_name": "lobby"}, token=token)
    assert status == 200
    room_id = created["room_id"]
    eve = f"@eve:{evil.server_name}"

    # Eve joins properly: make_join, sign, send_join (the hub fetches evil's key over TLS).
    made = await evil.client.request(hub.server_name, "GET",
                                     federation_path("/_matrix/federation/v1/make_join/{r}/{u}", r=room_id, u=eve),
                                     query={"ver": ["10", "11", "12"]})
    version = made["room_version"]
    join, join_id = evil.sign(dict(made["event"], origin_server_ts=int(time.time() * 1000)), version)
    await evil.client.request(hub.server_name, "PUT",
                              federation_path("/_matrix/federation/v2/send_join/{r}/{e}", r=room_id, e=join_id),
                              body=join)
    status, members = hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", token=token)
    assert eve in members["joined"]

    status, state = hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state", token=token)
    ids = {(ev["type"], ev["state_key"]): ev["event_id"] for ev in state}
    auth = [ids[("m.room.power_levels", "")], join_id]
    if version != "12":
        auth.append(ids[("m.room.create", "")])
    prev = [join_id]
    depth = 100

    def message(body: str, **overrides: Any) -> dict[str, Any]:
        nonlocal depth
        depth += 1
        pdu = {"type": "m.room.message", "room_id": room_id, "sender": eve, "content": {"msgtype": "m.text",
               "body": body}, "origin_server_ts": int(time.time() * 1000), "depth": depth, "prev_events": prev,
               "auth_events": auth}
        pdu.update(overrides)
        return pdu

    async def send(pdus: list[dict[str, Any]]) -> dict[str, Any]:
        txn = federation_path("/_matrix/federation/v1/send/{t}", t=str(time.monotonic_ns()))
        return await evil.client.request(hub.server_name, "PUT", txn,
                                         body={"origin": evil.server_name, "origin_server_ts": 1, "pdus": pdus})

    def hub_event(event_id: str) -> tuple[int, Any]:
        return hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}", token=token)

    good, good_id = evil.sign(message("fine"), version)
    bad_sig, bad_sig_id = evil.sign(message("forged key"), version, key=generate_signing_key())
    tampered, tampered_id = evil.sign(message("original"), version)
    tampered = copy.deepcopy(tampered)
    tampered["content"]["body"] = "changed after signing"  # the hash no longer matches
    power, power_id = evil.sign({"type": "m.room.power_levels", "state_key": "", "room_id": room_id, "sender": eve,
                                 "content": {"users": {eve: 100}}, "origin_server_ts": int(time.time() * 1000),
                                 "depth": depth + 1, "prev_events": prev, "auth_events": auth}, version)
    forged, forged_id = evil.sign(message("not from evil", sender="@mallory:localhost:1"), version)
    malformed = {"type": "m.room.message", "room_id": room_id}  # dropped: missing nearly everything

    answer = await send([good, bad_sig, tampered, power, forged, malformed])
    results = answer["pdus"]
    assert results[good_id] == {}
    assert "error" in results[bad_sig_id]
    assert "error" in results[power_id]
    assert "error" in results[forged_id]
    assert hub_event(good_id)[0] == 200
    for refused in (bad_sig_id, power_id, forged_id):
        assert hub_event(refused)[0] == 404, refused
    status, redacted = hub_event(tampered_id)
    assert status == 200 and redacted["content"] == {}  # kept only in its redacted form
    status, levels = hub.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.power_levels",
                                 token=token)
    assert eve not in levels.get("users", {})

    # Oversize transactions and malformed JSON are refused whole.
    too_many = [evil.sign(message(f"n{i}"), version)[0] for i in range(51)]
    with pytest.raises(FederationError) as err:
        await send(too_many)
    assert err.value.status in (400, 413)
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{hub.federation_port}/_matrix/federation/v1/send/raw1"
        async with session.put(url, data=b"{not json", ssl=False) as resp:
            assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
        async with session.put(url, json={"origin": evil.server_name, "pdus": []}, ssl=False) as resp:
            assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"

    # The hub serves on: a later good event from the same server is accepted.
    prev[:] = [good_id]
    later, later_id = evil.sign(message("still here"), version)
    assert (await send([later]))["pdus"][later_id] == {}
    assert hub_event(later_id)[0] == 200
