"""The client-server API driven by a real Matrix client (matrix-nio) against the CLI-started hub."""
from __future__ import annotations

import asyncio
import time

import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess


async def logged_in(gw: GatewayProcess, localpart: str) -> AsyncClient:
    client = AsyncClient(gw.http_url, f"@{localpart}:localhost")
    response = await client.login(PASSWORD, device_name=f"{localpart}-nio")
    assert isinstance(response, LoginResponse), response
    return client


async def test_two_users_room_by_alias_messages_and_sync(gateway: GatewayProcess) -> None:
    alice = await logged_in(gateway, "alice")
    bob = await logged_in(gateway, "bob")
    try:
        created = await alice.room_create(alias="kitchen", name="Kitchen", topic="sensors",
                                          visibility=RoomVisibility.public)
        assert isinstance(created, RoomCreateResponse), created
        joined = await bob.join("#kitchen:localhost")
        assert isinstance(joined, JoinResponse), joined
        assert joined.room_id == created.room_id

        first = await bob.sync(timeout=0, full_state=True)
        assert isinstance(first, SyncResponse), first
        assert created.room_id in first.rooms.join
        state_types = {ev.source["type"] for ev in first.rooms.join[created.room_id].state}
        state_types |= {ev.source["type"] for ev in first.rooms.join[created.room_id].timeline.events}
        assert {"m.room.create", "m.room.name", "m.room.topic", "m.room.join_rules"} <= state_types

        # Long-poll: bob waits up to 30 s; alice's send must wake him well before that.
        started = time.monotonic()
        waiting = asyncio.create_task(bob.sync(timeout=30_000, since=first.next_batch))
        sent = await alice.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi bob"})
        assert isinstance(sent, RoomSendResponse), sent
        woke = await asyncio.wait_for(waiting, 20)
        assert isinstance(woke, SyncResponse), woke
        assert time.monotonic() - started < 20
        bodies = [ev.source["content"].get("body") for ev in woke.rooms.join[created.room_id].timeline.events]
        assert "hi bob" in bodies
        assert sent.event_id in [ev.event_id for ev in woke.rooms.join[created.room_id].timeline.events]

        # A sync with nothing new returns empty after its timeout (and does not error).
        quiet = await bob.sync(timeout=200, since=woke.next_batch)
        assert isinstance(quiet, SyncResponse)
        assert created.room_id not in quiet.rooms.join
    finally:
        await alice.close()
        await bob.close()


async def test_backwards_pagination_returns_all_history_in_order(gateway: GatewayProcess) -> None:
    alice = await logged_in(gateway, "alice")
    try:
        created = await alice.room_create(name="paging")
        assert isinstance(created, RoomCreateResponse)
        for i in range(25):
            sent = await alice.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": f"n{i}"})
            assert isinstance(sent, RoomSendResponse)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await alice.room_messages(created.room_id, start=token, limit=10,
                                             direction=MessageDirection.back)
            assert isinstance(page, RoomMessagesResponse), page
            pages += 1
            seen += [ev.source["content"]["body"] for ev in page.chunk if ev.source["type"] == "m.room.message"]
            if not page.end or not page.chunk:
                break
            token = page.end
        assert seen == [f"n{i}" for i in reversed(range(25))]
        assert pages >= 3
        # Forwards from the start gives the same messages oldest first.
        forward = await alice.room_messages(created.room_id, start="s0", limit=100,
                                            direction=MessageDirection.front)
        assert isinstance(forward, RoomMessagesResponse)
        bodies = [ev.source["content"]["body"] for ev in forward.chunk if ev.source["type"] == "m.room.message"]
        assert bodies == [f"n{i}" for i in range(25)]
    finally:
        await alice.close()


async def test_history_survives_restart(tmp_path) -> None:
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("carol", PASSWORD)
        carol = AsyncClient(gw.http_url, "@carol:localhost")
        assert isinstance(await carol.login(PASSWORD), LoginResponse)
        created = await carol.room_create(alias="persist", name="persist")
        ids = []
        for i in range(5):
            sent = await carol.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": f"p{i}"})
            ids.append(sent.event_id)
        await carol.close()
        assert gw.stop() == 0
        gw.start()
        carol = AsyncClient(gw.http_url, "@carol:localhost")
        assert isinstance(await carol.login(PASSWORD), LoginResponse)
        synced = await carol.sync(timeout=0)
        assert isinstance(synced, SyncResponse)
        timeline = [ev.event_id for ev in synced.rooms.join[created.room_id].timeline.events]
        assert timeline[-5:] == ids
        after = await carol.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "again"})
        assert isinstance(after, RoomSendResponse)
        page = await carol.room_messages(created.room_id, start="", limit=3)
        assert [ev.event_id for ev in page.chunk] == [after.event_id, ids[4], ids[3]]
        joined = await carol.join("#persist:localhost")
        assert isinstance(joined, JoinResponse) and joined.room_id == created.room_id
        await carol.close()
    finally:
        assert gw.stop() == 0
