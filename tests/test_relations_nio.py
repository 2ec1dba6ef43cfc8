"""Reactions, edits and threads with a real client (matrix-nio): what one user sends, the other
sees aggregated in /messages and /sync, and through nio's own relations, threads and context calls."""
from __future__ import annotations

from nio import (
    AsyncClient,
    LoginResponse,
    MessageDirection,
    RoomContextResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)
from nio.api import RelationshipType

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess


async def logged_in(gw: GatewayProcess, localpart: str) -> AsyncClient:
    client = AsyncClient(gw.http_url, f"@{localpart}:localhost")
    response = await client.login(PASSWORD, device_name=f"{localpart}-relations")
    assert isinstance(response, LoginResponse), response
    return client


async def sent(client: AsyncClient, room_id: str, event_type: str, content: dict) -> str:
    response = await client.room_send(room_id, event_type, content)
    assert isinstance(response, RoomSendResponse), response
    return response.event_id


async def test_reaction_edit_and_thread_reply_seen_by_another_user(gateway: GatewayProcess) -> None:
    alice = await logged_in(gateway, "alice")
    bob = await logged_in(gateway, "bob")
    try:
        created = await alice.room_create(name="freezer", invite=["@bob:localhost"])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await bob.join(room)
        before = await bob.sync(timeout=0)
        assert isinstance(before, SyncResponse)

        await sent(alice, room, "m.room.message", {"msgtype": "m.text", "body": "morning"})
        root = await sent(alice, room, "m.room.message", {"msgtype": "m.text", "body": "freezer at -12"})
        like = await sent(alice, room, "m.reaction",
                          {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "❄️"}})
        fixed = await sent(alice, room, "m.room.message", {
            "msgtype": "m.text", "body": "* freezer at -18",
            "m.new_content": {"msgtype": "m.text", "body": "freezer at -18"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        reply = await sent(alice, room, "m.room.message", {
            "msgtype": "m.text", "body": "door was open",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                             "m.in_reply_to": {"event_id": root}}})

        def check_root(source: dict) -> None:
            relations = source["unsigned"]["m.relations"]
            assert source["content"]["body"] == "freezer at -12", "content is not replaced"
            assert relations["m.replace"]["event_id"] == fixed
            assert relations["m.replace"]["content"]["m.new_content"]["body"] == "freezer at -18"
            assert relations["m.thread"]["latest_event"]["event_id"] == reply
            assert relations["m.thread"]["count"] == 1
            assert relations["m.thread"]["current_user_participated"] is False  # bob has not taken part

        page = await bob.room_messages(room, start="", limit=20, direction=MessageDirection.back)
        assert isinstance(page, RoomMessagesResponse), page
        check_root(next(ev.source for ev in page.chunk if ev.event_id == root))

        # /sync: a limited timeline bundles; the thread reply is in the main timeline as well
        limited = await bob.sync(timeout=0, since=before.next_batch,
                                 sync_filter={"room": {"timeline": {"limit": 4}}})
        assert isinstance(limited, SyncResponse), limited
        timeline = limited.rooms.join[room].timeline
        assert timeline.limited
        assert [ev.event_id for ev in timeline.events] == [root, like, fixed, reply]
        check_root(timeline.events[0].source)

        # nio's own calls for relations, threads and context
        children = [ev.event_id async for ev in bob.room_get_event_relations(room, root)]
        assert children == [reply, fixed, like]
        reactions = [ev.event_id async for ev in bob.room_get_event_relations(
            room, root, RelationshipType.annotation, "m.reaction")]
        assert reactions == [like]
        roots = [ev async for ev in bob.room_get_threads(room)]
        assert [ev.event_id for ev in roots] == [root]
        check_root(roots[0].source)
        context = await bob.room_context(room, reply, limit=2)
        assert isinstance(context, RoomContextResponse), context
        assert [ev.event_id for ev in context.events_before] == [fixed]
        around_like = await bob.room_context(room, like, limit=2)
        assert isinstance(around_like, RoomContextResponse), around_like
        check_root(around_like.events_before[0].source)
    finally:
        await alice.close()
        await bob.close()
