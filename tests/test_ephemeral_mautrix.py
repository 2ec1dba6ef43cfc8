"""mautrix-python as a bot (issue 13 named its typing, receipts and read markers as failing with
404): alice's bot calls `set_typing`, `send_receipt` and `set_fully_read_marker`; bob, another
mautrix client, sees each in his /sync long-poll."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from mautrix.client import Client
from mautrix.types import EventType, RoomID, UserID

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess


async def logged_in(gateway: GatewayProcess, localpart: str) -> Client:
    client = Client(mxid=UserID(f"@{localpart}:localhost"), base_url=gateway.http_url)
    await client.login(password=PASSWORD)
    return client


@pytest.fixture()
async def clients(gateway: GatewayProcess) -> AsyncIterator[tuple[Client, Client]]:
    bot, bob = await logged_in(gateway, "alice"), await logged_in(gateway, "bob")
    yield bot, bob
    for client in (bot, bob):
        await client.api.session.close()


def ephemeral(sync: dict[str, Any], room_id: str, kind: str) -> list[dict[str, Any]]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [ev["content"] for ev in room.get("ephemeral", {}).get("events", []) if ev.get("type") == kind]


async def next_sync(client: Client, since: str) -> dict[str, Any]:
    """One long-poll: it answers as soon as something is new for the client."""
    return await client.sync(since=since, timeout=20_000)


async def test_mautrix_bot_typing_receipts_and_read_markers(clients: tuple[Client, Client]) -> None:
    bot, bob = clients
    room_id: RoomID = await bot.create_room(invitees=[bob.mxid])
    await bob.join_room(room_id)
    hello = await bob.send_text(room_id, "hello bot")
    since = (await bob.sync(timeout=0))["next_batch"]

    await bot.set_typing(room_id, timeout=10_000)
    answer = await next_sync(bob, since)
    assert ephemeral(answer, room_id, "m.typing") == [{"user_ids": [bot.mxid]}]
    await bot.set_typing(room_id, timeout=0)  # mautrix: stopped typing
    answer = await next_sync(bob, answer["next_batch"])
    assert ephemeral(answer, room_id, "m.typing") == [{"user_ids": []}]

    await bot.send_receipt(room_id, hello)
    answer = await next_sync(bob, answer["next_batch"])
    [content] = ephemeral(answer, room_id, "m.receipt")
    assert bot.mxid in content[hello]["m.read"]

    later = await bob.send_message_event(room_id, EventType.ROOM_MESSAGE, {"msgtype": "m.text", "body": "more"})
    answer = await next_sync(bob, answer["next_batch"])
    await bot.set_fully_read_marker(room_id, later, later)
    answer = await next_sync(bob, answer["next_batch"])
    [content] = ephemeral(answer, room_id, "m.receipt")
    assert bot.mxid in content[later]["m.read"]
