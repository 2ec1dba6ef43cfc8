"""Application service delivery races, in process (the interleaving is forced at the two await
points where it happens; against the hub started by the CLI it depends on thread timing)."""
from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from matrix_core.appservice_rules import parse_registration
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service import appservice as as_service
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows
from tests.support.gateway import free_port

CAROL, BOT = "@carol:hub", "@bot:hub"


def req(user: str) -> Requester:
    return Requester(user, "D", False, "t")


async def test_an_event_committed_during_an_empty_read_is_not_skipped(tmp_path: Path, monkeypatch: Any) -> None:
    """The AS's read of new events finds nothing (its snapshot predates a commit), the event
    of interest committed meanwhile wakes it; the sender must not then count itself caught up,
    or the next event of no interest (a sensor reading elsewhere) moves its position past the
    unread one, which is never delivered."""
    port = free_port()
    delivered: list[str] = []
    got = asyncio.Event()

    async def transaction(request: web.Request) -> web.Response:
        for ev in (await request.json())["events"]:
            if ev["type"] == "m.room.message":
                delivered.append(ev["content"]["body"])
                got.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", transaction)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    reg = parse_registration({"id": "race", "url": f"http://127.0.0.1:{port}", "as_token": "a", "hs_token": "h",
                              "sender_localpart": "bot", "namespaces": {"users": [{"exclusive": True,
                                                                                   "regex": "@br_.*:hub"}]}}, "test")
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(0, 0), appservices=(reg,)))
    await hs.start()
    try:
        await hs.db.write(partial(account_rows.insert_user, user_id=CAROL, password_hash=None, admin=False))
        bridged = (await hs.rooms.create_room(req(CAROL), {"preset": "public_chat"}))["room_id"]
        await hs.rooms.join(req(BOT), bridged)
        elsewhere = (await hs.rooms.create_room(req(CAROL), {"preset": "private_chat"}))["room_id"]
        await hs.rooms.send_event(req(CAROL), bridged, "m.room.message", {"msgtype": "m.text", "body": "warm-up"})
        await asyncio.wait_for(got.wait(), 10)
        sender = hs.appservices._senders["race"]
        while not sender.caught_up:
            await asyncio.sleep(0.01)

        armed = {"read": True, "side": True}
        real_read, real_side = as_service.as_rows.events_between, hs.appservices._side

        async def read(db: Any, after: int, upto: int | None, limit: int) -> list[Any]:
            rows = await real_read(db, after, upto, limit)
            if armed["read"] and upto is None and not rows:
                armed["read"] = False  # committed just after the read's snapshot
                await hs.rooms.send_event(req(CAROL), bridged, "m.room.message", {"msgtype": "m.text",
                                                                                  "body": "the one"})
            return rows

        async def side(s: Any) -> Any:
            if armed["side"] and not armed["read"]:
                armed["side"] = False  # a reading elsewhere while the sender looks at its other streams
                await hs.rooms.send_event(req(CAROL), elsewhere, "m.room.message", {"msgtype": "m.text",
                                                                                    "body": "22 C"})
            return await real_side(s)

        monkeypatch.setattr(as_service.as_rows, "events_between", read)
        monkeypatch.setattr(hs.appservices, "_side", side)
        got.clear()
        sender.wake.set()
        for _ in range(200):
            if not armed["side"]:
                break
            await asyncio.sleep(0.01)
        assert not armed["side"]
        await hs.rooms.send_event(req(CAROL), bridged, "m.room.message", {"msgtype": "m.text", "body": "after"})
        await asyncio.wait_for(got.wait(), 10)
        for _ in range(100):
            if "after" in delivered:
                break
            await asyncio.sleep(0.02)
        assert delivered[1:] == ["the one", "after"], delivered
    finally:
        await hs.stop()
        await runner.cleanup()
