"""Element X's engine against the hub: matrix-rust-sdk's RoomListService (Simplified Sliding Sync,
native) through its Python build (tests/rust_sdk/prepare.py puts it in lib/). Run by
tests/test_sliding_sync_rust_sdk.py in a subprocess (the SDK's threads outlive the interpreter's
finalization, so this process ends with os._exit), it prints one JSON line per step:
{"step": name, "ok": bool, ...facts}.

    python tests/rust_sdk/client.py --base-url URL --user1 alice --user2 bob --password PW

Steps: the room list (all rooms, sorted by recency, named as the hub names them); a message from
user2 bumps its room to the top of user1's list within a second; an invite appears as an invited
room; the room's unread count goes up with user2's message and back to 0 once user1 sends a read
receipt (no new event: the hub re-sends the room with its counts).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

LIB = Path(__file__).resolve().parent / "lib"
SHIM = LIB / "libisoc23shim.so"
if SHIM.exists():  # glibc < 2.38: the two C23 functions the SDK's library imports (prepare.py)
    ctypes.CDLL(str(SHIM), mode=ctypes.RTLD_GLOBAL)
sys.path.insert(0, str(LIB))

import matrix_sdk_python as sdk  # noqa: E402


def emit(step: str, ok: bool, **facts: Any) -> None:
    print(json.dumps({"step": step, "ok": ok, **facts}), flush=True)


class Http:
    """user2's side (and user1's receipts): plain client-API calls."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        req = urllib.request.Request(self.base + "/_matrix/client/v3" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def login(self, user: str, password: str) -> str:
        return self.call("POST", "/login", {"type": "m.login.password", "identifier": {
            "type": "m.id.user", "user": user}, "password": password})["access_token"]


class RoomList:
    """The RoomList entries, kept by applying the SDK's diffs (as Element X's list view does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rooms: list[Any] = []
        self.changed = asyncio.Event()

    def on_update(self, room_entries_update: list[Any]) -> None:  # called on an SDK thread
        self.loop.call_soon_threadsafe(self._apply, room_entries_update)

    def _apply(self, updates: list[Any]) -> None:
        for u in updates:
            if u.is_APPEND():
                self.rooms.extend(u.values)
            elif u.is_CLEAR():
                self.rooms.clear()
            elif u.is_PUSH_FRONT():
                self.rooms.insert(0, u.value)
            elif u.is_PUSH_BACK():
                self.rooms.append(u.value)
            elif u.is_POP_FRONT():
                self.rooms.pop(0)
            elif u.is_POP_BACK():
                self.rooms.pop()
            elif u.is_INSERT():
                self.rooms.insert(u.index, u.value)
            elif u.is_SET():
                self.rooms[u.index] = u.value
            elif u.is_REMOVE():
                self.rooms.pop(u.index)
            elif u.is_TRUNCATE():
                del self.rooms[u.length:]
            elif u.is_RESET():
                self.rooms = list(u.values)
        self.changed.set()

    def ids(self) -> list[str]:
        return [r.id() for r in self.rooms]

    async def until(self, check: Callable[[], Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await _truthy(check()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                return bool(await _truthy(check()))


async def _truthy(value: Any) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def counts(client: Any, room_id: str) -> tuple[int, int]:
    room = client.get_room(room_id)
    info = await room.room_info()
    return info.notification_count, info.highlight_count


async def run(args: argparse.Namespace) -> None:
    http = Http(args.base_url)
    t1 = http.login(args.user1, args.password)
    t2 = http.login(args.user2, args.password)
    me = http.call("GET", "/account/whoami", token=t1)["user_id"]
    rooms = [http.call("POST", "/createRoom", {"name": f"rust {i}", "preset": "private_chat"}, token=t1)["room_id"]
             for i in range(3)]
    http.call("POST", f"/rooms/{urllib.parse.quote(rooms[0])}/invite", {"user_id": f"@{args.user2}:{me.split(':', 1)[1]}"}, token=t1)
    http.call("POST", f"/rooms/{urllib.parse.quote(rooms[0])}/join", {}, token=t2)
    http.call("PUT", f"/rooms/{urllib.parse.quote(rooms[0])}/send/m.room.message/a1",
              {"msgtype": "m.text", "body": "oldest room is newest"}, token=t2)
    expected = [rooms[0], rooms[2], rooms[1]]

    with tempfile.TemporaryDirectory() as store:
        client = await (sdk.ClientBuilder().homeserver_url(args.base_url)
                        .sliding_sync_version_builder(sdk.SlidingSyncVersionBuilder.NATIVE)
                        .session_paths(store + "/data", store + "/cache").build())
        await client.login(args.user1, args.password, "rust-sdk", None)
        sync = await client.sync_service().finish()
        await sync.start()
        all_rooms = await sync.room_list_service().all_rooms()
        view = RoomList(asyncio.get_running_loop())
        result = all_rooms.entries_with_dynamic_adapters(50, view)
        result.controller().set_filter(sdk.RoomListEntriesDynamicFilterKind.NON_LEFT())

        def names() -> list[str | None]:
            by_id = {r.id(): r.display_name() for r in view.rooms}
            return [by_id.get(r) for r in expected]

        # the order first; each entry's display name is computed as its room info is processed
        ok = await view.until(lambda: view.ids() == expected and None not in names(), 20)
        emit("room_list_sorted_by_recency", ok, ids=view.ids(), expected=expected, names=names())

        sent = time.monotonic()
        http.call("PUT", f"/rooms/{urllib.parse.quote(rooms[1])}/send/m.room.message/b1",
                  {"msgtype": "m.text", "body": "bump"}, token=t1)
        ok = await view.until(lambda: view.ids()[:1] == [rooms[1]], 10)
        emit("message_bumps_room_to_top", ok, seconds=round(time.monotonic() - sent, 3), ids=view.ids())

        invited = http.call("POST", "/createRoom", {"name": "rust invite", "invite": [me]}, token=t2)["room_id"]

        def is_invited() -> bool:
            room = client.get_room(invited) if invited in view.ids() else None
            return room is not None and room.membership() == sdk.Membership.INVITED

        ok = await view.until(is_invited, 10)
        emit("invite_appears", ok, ids=view.ids())

        event_id = http.call("PUT", f"/rooms/{urllib.parse.quote(rooms[0])}/send/m.room.message/c1",
                             {"msgtype": "m.text", "body": "unread"}, token=t2)["event_id"]

        async def unread_is(n: int) -> bool:
            return (await counts(client, rooms[0]))[0] == n

        up = await view.until(lambda: unread_is(2), 10)  # "oldest room is newest" and "unread"
        before = await counts(client, rooms[0])
        http.call("POST", f"/rooms/{urllib.parse.quote(rooms[0])}/receipt/m.read/{urllib.parse.quote(event_id)}",
                  {}, token=t1)
        down = await view.until(lambda: unread_is(0), 10)
        emit("read_receipt_clears_count", up and down, before=list(before),
             after=list(await counts(client, rooms[0])))
        await sync.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--user1", required=True)
    parser.add_argument("--user2", required=True)
    parser.add_argument("--password", required=True)
    code = 0
    try:
        asyncio.run(run(parser.parse_args()))
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
