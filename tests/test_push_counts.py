"""Notification counts at the service level (hs.push), with the receipts' read positions faked
(the ReadPositions protocol) to set them directly; the end-to-end receipt path is the
matrix-js-sdk steps (tests/test_matrix_js_sdk.py): reset by receipts, per thread, the sender's own event
as a read receipt, incremental evaluation for long-polls, bounded caches, the pushers' interface."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service import push as push_service
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows

ALICE, BOB, CAROL = "@alice:hub", "@bob:hub", "@carol:hub"


class FakeReceipts:
    """The receipts service's read positions, set by the test."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str, str], dict[str, int]] = {}
        self.calls = 0

    async def read_positions(self, user_id: str, room_id: str) -> dict[str, int]:
        self.calls += 1
        return dict(self.positions.get((user_id, room_id), {}))


@pytest.fixture()
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Homeserver, FakeReceipts, str]]:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(0, 0)))
    await hs.start()
    receipts = FakeReceipts()
    real_receipts = hs.receipts
    hs.receipts = receipts  # type: ignore[assignment]  # hs.push reads positions from hs.receipts
    try:
        for user in (ALICE, BOB, CAROL):
            await hs.db.write(partial(account_rows.insert_user, user_id=user, password_hash=None, admin=False))
        room_id = (await hs.rooms.create_room(req(ALICE), {"preset": "public_chat"}))["room_id"]
        for user in (BOB, CAROL):
            await hs.rooms.join(req(user), room_id)
        yield hs, receipts, room_id
    finally:
        hs.receipts = real_receipts
        await hs.stop()


def req(user: str) -> Requester:
    return Requester(user, "D", False, "t")


async def say(hs: Homeserver, user: str, room_id: str, body: str, **extra: Any) -> tuple[str, int]:
    event_id = await hs.rooms.send_event(req(user), room_id, "m.room.message",
                                         {"msgtype": "m.text", "body": body, **extra})
    return event_id, hs.stream.position


async def test_receipts_reset_counts(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    positions = [(await say(hs, BOB, room, f"m{i}"))[1] for i in range(5)]
    await say(hs, BOB, room, "hi", **{"m.mentions": {"user_ids": [ALICE]}})
    assert await hs.push.unread_counts(ALICE, room) == (6, 1)
    receipts.positions[(ALICE, room)] = {"main": positions[2]}
    assert await hs.push.unread_counts(ALICE, room) == (3, 1)
    receipts.positions[(ALICE, room)] = {"unthreaded": hs.stream.position}
    assert await hs.push.unread_counts(ALICE, room) == (0, 0)
    await say(hs, BOB, room, "again")
    assert await hs.push.unread_counts(ALICE, room) == (1, 0)
    # bob's own messages never count for him; carol has read nothing
    assert await hs.push.unread_counts(BOB, room) == (0, 0)
    assert await hs.push.unread_counts(CAROL, room) == (7, 0)


async def test_threads_count_apart_and_threaded_receipts(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    root, _ = await say(hs, BOB, room, "root")
    rel = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    await say(hs, BOB, room, "t1", **rel)
    _, t2 = await say(hs, BOB, room, "t2", **rel)
    _, main_pos = await say(hs, BOB, room, "main")
    assert await hs.push.thread_counts(ALICE, room) == {"main": (2, 0), root: (2, 0)}
    receipts.positions[(ALICE, room)] = {root: t2}  # read the thread only
    assert await hs.push.thread_counts(ALICE, room) == {"main": (2, 0)}
    receipts.positions[(ALICE, room)] = {root: t2, "main": main_pos}
    assert await hs.push.unread_counts(ALICE, room) == (0, 0)
    # alice answering in the thread reads the thread up to there, not the main timeline
    receipts.positions[(ALICE, room)] = {}
    await say(hs, ALICE, room, "mine", **rel)
    assert await hs.push.thread_counts(ALICE, room) == {"main": (2, 0)}


async def test_own_message_acts_as_a_read_receipt(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    for i in range(3):
        await say(hs, BOB, room, f"m{i}")
    assert await hs.push.unread_counts(ALICE, room) == (3, 0)
    await say(hs, ALICE, room, "read it")          # counted forward from the cache
    assert await hs.push.unread_counts(ALICE, room) == (0, 0)
    await say(hs, BOB, room, "more")
    hs.push._counts.clear()                        # and from scratch, scanning back
    assert await hs.push.unread_counts(ALICE, room) == (1, 0)


async def test_a_long_poll_evaluates_only_new_events(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    for i in range(50):
        await say(hs, BOB, room, f"m{i}")
    assert await hs.push.unread_counts(ALICE, room) == (50, 0)
    seen = hs.push.evaluated
    assert await hs.push.unread_counts(ALICE, room) == (50, 0)
    assert hs.push.evaluated == seen               # nothing new: nothing evaluated
    await say(hs, BOB, room, "one more")
    assert await hs.push.unread_counts(ALICE, room) == (51, 0)
    assert hs.push.evaluated == seen + 1


async def test_the_scan_and_the_caches_are_bounded(hub: tuple[Homeserver, FakeReceipts, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hs, receipts, room = hub
    monkeypatch.setattr(push_service, "MAX_SCAN", 10)
    monkeypatch.setattr(push_service, "PAGE", 4)
    monkeypatch.setattr(push_service, "COUNT_CACHE_SIZE", 2)
    for i in range(25):
        await say(hs, BOB, room, f"m{i}")
    assert await hs.push.unread_counts(ALICE, room) == (10, 0)  # saturates at MAX_SCAN
    await hs.push.unread_counts(CAROL, room)
    await hs.push.unread_counts(BOB, room)
    assert len(hs.push._counts) == 2 and (ALICE, room) not in hs.push._counts


async def test_rule_changes_apply_to_counts(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    await say(hs, BOB, room, "hello")
    assert await hs.push.unread_counts(ALICE, room) == (1, 0)
    await hs.push.set_enabled(ALICE, "underride", ".m.rule.message", False)
    assert await hs.push.unread_counts(ALICE, room) == (0, 0)
    await hs.push.put_rule(ALICE, "content", "hello", {"pattern": "hello",
                                                       "actions": ["notify", {"set_tweak": "highlight"}]}, None, None)
    assert await hs.push.unread_counts(ALICE, room) == (1, 1)


async def test_actions_for_the_pushers(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    mention_id, _ = await say(hs, BOB, room, "yo", **{"m.mentions": {"user_ids": [ALICE]}})
    notice_id = await hs.rooms.send_event(req(BOB), room, "m.room.message", {"msgtype": "m.notice", "body": "n"})
    mention = (await hs.rooms.fetch_event(mention_id))[0]  # type: ignore[index]
    notice = (await hs.rooms.fetch_event(notice_id))[0]  # type: ignore[index]
    actions = await hs.push.actions_for(ALICE, mention)
    assert "notify" in actions and {"set_tweak": "highlight"} in actions
    assert await hs.push.actions_for(BOB, mention) == []      # the sender
    assert await hs.push.actions_for(ALICE, notice) == []     # .m.rule.suppress_notices
    assert await hs.push.actions_for(CAROL, mention) == ["notify", {"set_tweak": "highlight", "value": False}]


async def test_a_read_makes_the_room_appear_in_a_long_poll(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    hs, receipts, room = hub
    _, pos = await say(hs, BOB, room, "hello")
    first = await hs.sync.sync(req(ALICE), None, 0, False, {})
    assert first["rooms"]["join"][room]["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
    quiet = await hs.sync.sync(req(ALICE), first["next_batch"], 0, False, {})
    assert room not in quiet["rooms"]["join"]
    receipts.positions[(ALICE, room)] = {"main": pos}  # what the receipts service stores ...
    hs.push.note_read(ALICE, room)                     # ... and tells
    read = await hs.sync.sync(req(ALICE), quiet["next_batch"], 1000, False, {})
    assert read["rooms"]["join"][room]["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert read["rooms"]["join"][room]["timeline"]["events"] == []
    # bob's sync does not show alice's read
    bob_first = await hs.sync.sync(req(BOB), None, 0, False, {})
    hs.push.note_read(ALICE, room)
    bob_next = await hs.sync.sync(req(BOB), bob_first["next_batch"], 0, False, {})
    assert room not in bob_next["rooms"]["join"]


async def test_rules_and_their_stream_survive_a_restart(tmp_path: Path) -> None:
    """Rules are durable; after a restart a token handed out before it still sees later rule
    changes (the stream position only moves forward), even past read hints that were in memory."""
    def make() -> Homeserver:
        return Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                             message_rate=RateLimit(0, 0)))

    hs = make()
    await hs.start()
    try:
        await hs.db.write(partial(account_rows.insert_user, user_id=ALICE, password_hash=None, admin=False))
        await hs.push.put_rule(ALICE, "content", "kw", {"pattern": "warm", "actions": ["notify"]}, None, None)
        await hs.push.put_rule(ALICE, "content", "kw2", {"pattern": "cold", "actions": []}, None, "kw")
        for _ in range(3):
            hs.push.note_read(ALICE, "!r:hub")
        token = (await hs.sync.sync(req(ALICE), None, 0, False, {}))["next_batch"]
    finally:
        await hs.stop()
    hs = make()
    await hs.start()
    try:
        rules = await hs.push.ruleset(ALICE)
        assert [r["rule_id"] for r in rules["content"]][:2] == ["kw", "kw2"]
        quiet = await hs.sync.sync(req(ALICE), token, 0, False, {})
        assert not [e for e in quiet["account_data"]["events"] if e["type"] == "m.push_rules"]
        await hs.push.delete_rule(ALICE, "content", "kw")
        changed = await hs.sync.sync(req(ALICE), token, 0, False, {})
        [event] = [e for e in changed["account_data"]["events"] if e["type"] == "m.push_rules"]
        assert [r["rule_id"] for r in event["content"]["global"]["content"]][0] == "kw2"
    finally:
        await hs.stop()


async def test_a_user_has_a_bounded_number_of_rules(hub: tuple[Homeserver, FakeReceipts, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from matrix_core import errors, push_rules as pr
    hs, receipts, room = hub
    monkeypatch.setattr(pr, "MAX_RULES_PER_USER", 2)
    for rule_id in ("a", "b"):
        await hs.push.put_rule(ALICE, "override", rule_id, {"conditions": [], "actions": []}, None, None)
    await hs.push.put_rule(ALICE, "override", "a", {"conditions": [], "actions": ["notify"]}, None, None)  # replace
    with pytest.raises(errors.MatrixError) as err:
        await hs.push.put_rule(ALICE, "override", "c", {"conditions": [], "actions": []}, None, None)
    assert err.value.errcode == "M_RESOURCE_LIMIT_EXCEEDED"
    assert [r["rule_id"] for r in (await hs.push.ruleset(ALICE))["override"] if not r["default"]] == ["b", "a"]


async def test_own_message_ends_the_scan_in_a_room_without_threads(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    """No relation in the room: the user's own newest event reads everything older, so a count
    from scratch stops at it instead of reading MAX_SCAN events back; with a thread it goes on."""
    hs, receipts, room = hub
    await say(hs, BOB, room, "before")
    for i in range(3 * push_service.PAGE):
        await say(hs, ALICE, room, f"mine {i}")
    await say(hs, BOB, room, "after")
    hs.push._counts.clear()
    seen = hs.push.evaluated
    assert await hs.push.unread_counts(ALICE, room) == (1, 0)
    assert hs.push.evaluated - seen <= push_service.FIRST_PAGE
    # a thread reply behind alice's messages still counts: the scan does not stop early then
    root, _ = await say(hs, BOB, room, "root")
    receipts.positions[(ALICE, room)] = {}
    await say(hs, BOB, room, "in thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    for i in range(push_service.FIRST_PAGE + 10):  # past the first page
        await say(hs, ALICE, room, f"main again {i}")
    hs.push._counts.clear()
    assert await hs.push.thread_counts(ALICE, room) == {root: (1, 0)}


async def test_an_edit_or_reaction_of_a_thread_reply_is_in_that_thread(hub: tuple[Homeserver, FakeReceipts, str]) -> None:
    """Synapse's thread of an event (get_thread_id): an edit, reaction or reference of an event in
    a thread is in that thread. So alice editing her thread reply, or reacting to bob's, reads
    (her own event as a read receipt) that thread, not the main timeline; counted forward from
    the cache and from scratch alike."""
    hs, receipts, room = hub
    root, _ = await say(hs, BOB, room, "root")
    rel = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    mine, _ = await say(hs, ALICE, room, "my reply", **rel)
    await say(hs, BOB, room, "main 1")
    await say(hs, BOB, room, "main 2")
    await say(hs, BOB, room, "their reply", **rel)
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0), root: (1, 0)}
    await say(hs, ALICE, room, "* my reply, fixed", **{"m.new_content": {"msgtype": "m.text", "body": "fixed"},
                                                        "m.relates_to": {"rel_type": "m.replace", "event_id": mine}})
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0)}  # the thread is read, main is not
    hs.push._counts.clear()
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0)}
    another, _ = await say(hs, BOB, room, "another reply", **rel)
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0), root: (1, 0)}
    await hs.rooms.send_event(req(ALICE), room, "m.reaction",
                              {"m.relates_to": {"rel_type": "m.annotation", "event_id": another, "key": "👍"}})
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0)}
    hs.push._counts.clear()
    assert await hs.push.thread_counts(ALICE, room) == {"main": (3, 0)}
    # a reaction to the root (in the main timeline) reads the main timeline
    await hs.rooms.send_event(req(ALICE), room, "m.reaction",
                              {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👀"}})
    assert await hs.push.thread_counts(ALICE, room) == {}
