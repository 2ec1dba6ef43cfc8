"""Account data, tags, presence, forget and the user directory driven by real clients against the
CLI-started hub (issue 13): mautrix-python as a bot (account data, tags, the directory search)
matrix-nio (presence, forget), and aiocoap for the CoAP front end (the same route table)."""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any, AsyncIterator

import aiocoap
import cbor2
import pytest
from mautrix.api import Method, Path
from mautrix.client import ClientAPI
from mautrix.errors import MatrixStandardRequestError, MNotFound
from mautrix.types import RoomTagInfo
from nio import (
    AsyncClient,
    LoginResponse,
    PresenceGetResponse,
    PresenceSetResponse,
    RoomCreateResponse,
    RoomForgetError,
    RoomForgetResponse,
    SyncResponse,
)

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

ALICE, BOB = "@alice:localhost", "@bob:localhost"


async def mautrix_bot(gw: GatewayProcess, localpart: str) -> ClientAPI:
    bot = ClientAPI(f"@{localpart}:localhost", base_url=gw.http_url)
    await bot.login(password=PASSWORD, device_name=f"{localpart}-mautrix")
    return bot


@pytest.fixture()
async def bot(gateway: GatewayProcess) -> AsyncIterator[ClientAPI]:
    client = await mautrix_bot(gateway, "alice")
    yield client
    await client.api.session.close()


async def nio_client(gw: GatewayProcess, localpart: str) -> AsyncClient:
    client = AsyncClient(gw.http_url, f"@{localpart}:localhost")
    response = await client.login(PASSWORD, device_name=f"{localpart}-nio")
    assert isinstance(response, LoginResponse), response
    return client


async def test_mautrix_bot_keeps_its_state_in_account_data(bot: ClientAPI) -> None:
    await bot.set_account_data("org.example.bot.state", {"count": 3, "ratio": 0.5, "seen": ["a", "b"]})
    assert await bot.get_account_data("org.example.bot.state") == {"count": 3, "ratio": 0.5, "seen": ["a", "b"]}
    with pytest.raises(MNotFound):
        await bot.get_account_data("org.example.bot.never")
    room_id = await bot.create_room(name="bot room")
    await bot.set_account_data("org.example.bot.room", {"muted": True}, room_id=room_id)
    assert await bot.get_account_data("org.example.bot.room", room_id=room_id) == {"muted": True}
    # Room account data does not fall back to (or leak into) the global one of the same type.
    with pytest.raises(MNotFound):
        await bot.get_account_data("org.example.bot.room")
    # The server-managed types are refused with the spec's 405 M_BAD_JSON.
    with pytest.raises(MatrixStandardRequestError) as refused:
        await bot.set_account_data("m.fully_read", {"event_id": "$x"}, room_id=room_id)
    assert refused.value.http_status == 405 and refused.value.errcode == "M_BAD_JSON"
    synced = await bot.sync(timeout=0)
    globals_ = {ev["type"]: ev["content"] for ev in synced["account_data"]["events"]}
    assert globals_["org.example.bot.state"]["ratio"] == 0.5
    room_events = synced["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "org.example.bot.room", "content": {"muted": True}} in room_events


async def test_mautrix_bot_tags_rooms_and_a_long_poll_sees_it(bot: ClientAPI) -> None:
    room_id = await bot.create_room(name="tagged")
    await bot.set_room_tag(room_id, "m.favourite", RoomTagInfo(order=0.25))
    await bot.set_room_tag(room_id, "u.sensors")
    tags = await bot.get_room_tags(room_id)
    assert set(tags.tags) == {"m.favourite", "u.sensors"}
    assert tags.tags["m.favourite"].order == 0.25
    since = (await bot.sync(timeout=0))["next_batch"]
    started = time.monotonic()
    waiting = asyncio.create_task(bot.sync(since=since, timeout=30_000))
    await bot.remove_room_tag(room_id, "u.sensors")
    woke = await asyncio.wait_for(waiting, 20)
    assert time.monotonic() - started < 20
    events = woke["rooms"]["join"][room_id]["account_data"]["events"]
    assert events == [{"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}}}}]
    assert set((await bot.get_room_tags(room_id)).tags) == {"m.favourite"}


async def test_mautrix_searches_the_user_directory(gateway: GatewayProcess, bot: ClientAPI) -> None:
    gateway.add_user("gustav", PASSWORD)
    gustav = await mautrix_bot(gateway, "gustav")
    try:
        await gustav.set_displayname("Gustav the Gardener")
        room_id = await gustav.create_room(invitees=[ALICE])
        await bot.join_room_by_id(room_id)
        found = await bot.search_users("gardener")
        assert [u.user_id for u in found.results] == ["@gustav:localhost"]
        # mautrix's User reads a `displayname` key; the spec's (and Synapse's) is `display_name`:
        # read the raw answer through the same client for that field.
        raw = await bot.api.request(Method.POST, Path.v3.user_directory.search, {"search_term": "gardener"})
        assert raw == {"results": [{"user_id": "@gustav:localhost", "display_name": "Gustav the Gardener"}],
                       "limited": False}
        assert (await bot.search_users("nobody-like-this")).results == []
    finally:
        await gustav.api.session.close()


async def test_nio_presence_reaches_room_peers(gateway: GatewayProcess) -> None:
    alice, bob = await nio_client(gateway, "alice"), await nio_client(gateway, "bob")
    try:
        created = await alice.room_create(name="presence", invite=[BOB])
        assert isinstance(created, RoomCreateResponse), created
        await bob.join(created.room_id)
        first = await bob.sync(timeout=0)
        assert isinstance(first, SyncResponse), first
        started = time.monotonic()
        waiting = asyncio.create_task(bob.sync(timeout=30_000, since=first.next_batch))
        assert isinstance(await alice.set_presence("online", "in the greenhouse"), PresenceSetResponse)
        woke = await asyncio.wait_for(waiting, 20)
        assert time.monotonic() - started < 20
        assert isinstance(woke, SyncResponse), woke
        seen = {ev.user_id: ev for ev in woke.presence_events}
        assert seen[ALICE].presence == "online" and seen[ALICE].status_msg == "in the greenhouse"
        got = await bob.get_presence(ALICE)
        assert isinstance(got, PresenceGetResponse), got
        assert got.presence == "online" and got.status_msg == "in the greenhouse"
        assert isinstance(await alice.set_presence("unavailable"), PresenceSetResponse)
        got = await bob.get_presence(ALICE)
        assert isinstance(got, PresenceGetResponse) and got.presence == "unavailable" and got.status_msg is None
    finally:
        await alice.close()
        await bob.close()


async def test_nio_forgets_a_room_after_leaving(gateway: GatewayProcess) -> None:
    bob = await nio_client(gateway, "bob")
    try:
        created = await bob.room_create(name="to forget")
        assert isinstance(created, RoomCreateResponse), created
        refused = await bob.room_forget(created.room_id)
        assert isinstance(refused, RoomForgetError) and refused.status_code == "M_UNKNOWN", refused
        since = (await bob.sync(timeout=0)).next_batch
        await bob.room_leave(created.room_id)
        assert isinstance(await bob.room_forget(created.room_id), RoomForgetResponse)
        after = await bob.sync(timeout=0, since=since)
        assert isinstance(after, SyncResponse) and created.room_id not in after.rooms.leave
    finally:
        await bob.close()


async def test_coap_device_sets_account_data_and_tags_with_floats(gateway: GatewayProcess) -> None:
    """The one route table: over CoAP (aiocoap, CBOR) account data and tags take the device's
    floats as plain numbers, read back as the same numbers over HTTP and CoAP."""
    token = gateway.login("alice", PASSWORD)
    status, created = gateway.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200, created
    room = urllib.parse.quote(created["room_id"], safe="")
    base = f"coap://127.0.0.1:{gateway.coap_port}/_matrix/client/v3/user/%40alice:localhost"
    ctx = await aiocoap.Context.create_client_context()
    try:
        async def coap(method: Any, uri: str, body: Any = None) -> aiocoap.Message:
            msg = aiocoap.Message(code=method, uri=f"{uri}?access_token={token}")
            if body is not None:
                msg.payload = cbor2.dumps(body)
            return await ctx.request(msg).response

        resp = await coap(aiocoap.PUT, f"{base}/rooms/{room}/tags/m.favourite", {"order": 0.5})
        assert resp.code == aiocoap.CHANGED, resp.payload
        resp = await coap(aiocoap.PUT, f"{base}/account_data/org.example.sensor", {"offset": -0.25, "n": 3})
        assert resp.code == aiocoap.CHANGED, resp.payload
        got = await coap(aiocoap.GET, f"{base}/account_data/org.example.sensor")
        assert got.code == aiocoap.CONTENT and cbor2.loads(got.payload) == {"offset": -0.25, "n": 3}
        # Bytes have no plain JSON form: refused, nothing stored.
        bad = await coap(aiocoap.PUT, f"{base}/account_data/org.example.bytes", {"raw": b"\x01"})
        assert bad.code == aiocoap.BAD_REQUEST and cbor2.loads(bad.payload)["errcode"] == "M_BAD_JSON"
    finally:
        await ctx.shutdown()
    assert gateway.request("GET", f"/_matrix/client/v3/user/%40alice:localhost/rooms/{room}/tags", token=token) == \
        (200, {"tags": {"m.favourite": {"order": 0.5}}})
    assert gateway.request("GET", "/_matrix/client/v3/user/%40alice:localhost/account_data/org.example.sensor",
                           token=token) == (200, {"offset": -0.25, "n": 3})
    assert gateway.request("GET", "/_matrix/client/v3/user/%40alice:localhost/account_data/org.example.bytes",
                           token=token)[0] == 404
