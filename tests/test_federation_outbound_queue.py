"""The outbound queue against a remote that goes away: local sends never wait for it, and what
was queued while it was down is delivered once it is back (the hub retries as soon as the remote
makes an authenticated request, or at the end of its backoff)."""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from matrix_core.federation.client import federation_path
from matrix_core.federation.keys import own_key_document
from matrix_core.federation.tls import server_context
from tests.test_federation_bad_input import PW, EvilServer, hub  # noqa: F401  (the hub fixture)
from tests.support.gateway import GatewayProcess


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class RecordingServer(EvilServer):
    """The same remote, now also accepting /send and recording the PDUs it is given."""

    def __init__(self, workdir: Path, like: EvilServer) -> None:
        super().__init__(workdir)
        self.port, self.server_name, self.key, self.client = like.port, like.server_name, like.key, like.client
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        async def keys(_: web.Request) -> web.Response:
            return web.json_response(own_key_document(self.server_name, self.key, int(time.time() * 1000)))

        async def send(request: web.Request) -> web.Response:
            body = await request.json()
            self.received.extend(body.get("pdus", []))
            self.arrived.set()
            return web.json_response({"pdus": {}})

        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", keys)
        app.router.add_put("/_matrix/federation/v1/send/{txn}", send)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        ctx = server_context(self.workdir / "evil.crt", self.workdir / "evil.key")
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()


async def test_dead_remote_never_blocks_local_sends_and_is_caught_up_when_heard_from(
        hub: GatewayProcess, tmp_path: Path) -> None:  # noqa: F811
    token = hub.login("host", PW)
    status, created = hub.request("POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat", "room_alias_name": "queue"}, token=token)
    room_id = created["room_id"]
    evil = EvilServer(tmp_path)
    await evil.start()
    eve = f"@eve:{evil.server_name}"
    made = await evil.client.request(hub.server_name, "GET",
                                     federation_path("/_matrix/federation/v1/make_join/{r}/{u}", r=room_id, u=eve),
                                     query={"ver": ["10", "11", "12"]})
    join, join_id = evil.sign(dict(made["event"], origin_server_ts=int(time.time() * 1000)), made["room_version"])
    await evil.client.request(hub.server_name, "PUT",
                              federation_path("/_matrix/federation/v2/send_join/{r}/{e}", r=room_id, e=join_id),
                              body=join)
    # The remote goes away (its port now refuses connections).
    assert evil.runner is not None
    await evil.runner.cleanup()

    # Local sends answer at once and are stored, whatever the remote does.
    sent = []
    for i in range(5):
        status, body = await asyncio.to_thread(
            hub.request, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/q{i}",
            {"msgtype": "m.text", "body": f"queued {i}"}, token)
        assert status == 200
        sent.append(body["event_id"])

    # The remote comes back and makes any authenticated request: the hub retries at once.
    back = RecordingServer(tmp_path, evil)
    await back.start()
    try:
        await back.client.request(hub.server_name, "PUT",
                                  federation_path("/_matrix/federation/v1/send/{t}", t="hello-again"),
                                  body={"origin": back.server_name, "origin_server_ts": 1, "pdus": []})
        deadline = time.monotonic() + 30
        while not set(sent) <= {_event_id(p, made["room_version"]) for p in back.received}:
            back.arrived.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(back.received)} PDUs arrived"
            await asyncio.wait_for(back.arrived.wait(), remaining)
    finally:
        await back.stop()
    await evil.client.close()


def _event_id(pdu: dict[str, Any], version: str) -> str:
    from matrix_core.event_hashing import compute_event_id
    from matrix_core.room_versions import KNOWN_ROOM_VERSIONS

    return compute_event_id(pdu, KNOWN_ROOM_VERSIONS[version])


async def test_status_shows_a_peer_backing_off_then_reachable(hub: GatewayProcess, tmp_path: Path) -> None:  # noqa: F811
    """The Status page's federation peers (GET /_gateway/v1/status): a remote that stopped
    answering is "backing off" with its error; once back and caught up, "reachable" with a time."""
    hub.add_user("admin", PW, admin=True)
    token, admin = hub.login("host", PW), hub.login("admin", PW)
    status, created = hub.request("POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat", "room_alias_name": "peers"}, token=token)
    room_id = created["room_id"]
    evil = EvilServer(tmp_path)
    await evil.start()
    eve = f"@eve:{evil.server_name}"
    made = await evil.client.request(hub.server_name, "GET",
                                     federation_path("/_matrix/federation/v1/make_join/{r}/{u}", r=room_id, u=eve),
                                     query={"ver": ["10", "11", "12"]})
    join, join_id = evil.sign(dict(made["event"], origin_server_ts=int(time.time() * 1000)), made["room_version"])
    await evil.client.request(hub.server_name, "PUT",
                              federation_path("/_matrix/federation/v2/send_join/{r}/{e}", r=room_id, e=join_id),
                              body=join)
    assert evil.runner is not None
    await evil.runner.cleanup()  # gone: its port refuses connections

    async def peer() -> dict[str, Any] | None:
        status, body = await asyncio.to_thread(hub.request, "GET", "/_gateway/v1/status", None, admin)
        assert status == 200, body
        return {p["server_name"]: p for p in body["federation_peers"]}.get(evil.server_name)

    await asyncio.to_thread(hub.request, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/p1",
                            {"msgtype": "m.text", "body": "to a dead peer"}, token)
    deadline = time.monotonic() + 20
    while (found := await peer()) is None or found["state"] != "backing off":
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.1)
    assert found["last_error"] and found["last_success_ts"] is None and found["queued"] >= 1 and found["backoff_s"] >= 1
    status, body = await asyncio.to_thread(hub.request, "GET", "/_gateway/v1/status", None, token)
    assert status == 403  # not for non-admins

    back = RecordingServer(tmp_path, evil)
    await back.start()
    try:
        await back.client.request(hub.server_name, "PUT", federation_path("/_matrix/federation/v1/send/{t}", t="back"),
                                  body={"origin": back.server_name, "origin_server_ts": 1, "pdus": []})
        while (found := await peer()) is None or found["state"] != "reachable":
            assert time.monotonic() < deadline + 20, found
            await asyncio.sleep(0.1)
        assert found["last_success_ts"] > 0 and found["queued"] == 0
    finally:
        await back.stop()
    await evil.client.close()
