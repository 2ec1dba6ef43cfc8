"""`Rooms.send_events_nowait`: the coroutine-free batch send used by high-rate front ends resolves
only after COMMIT, chains the batch's events, refuses per item what `send_event` refuses, and falls
back (None) for rooms not in memory."""
from __future__ import annotations

import sqlite3
from pathlib import Path


from matrix_core import errors
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows, event_json


async def test_nowait_sends_are_committed_before_they_resolve(tmp_path: Path) -> None:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(0, 0)))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        await hs.db.write(lambda c: account_rows.insert_user(c, "@b:hub", None, False))
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]
        assert hs.rooms.send_events_nowait(alice, "!unknown:hub", [("m.room.message", {}, None)]) == (None, [])
        contents = [{"body": str(i)} for i in range(20)]
        contents[7] = {"t": 21.5}  # refused alone: not canonical JSON
        future, outcomes = hs.rooms.send_events_nowait(alice, room_id, [("m.room.message", c, None) for c in contents])
        assert isinstance(outcomes[7], errors.MatrixError) and outcomes[7].errcode == "M_BAD_JSON"
        ids = [o for i, o in enumerate(outcomes) if i != 7]
        assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 19
        await future
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # another connection sees them: committed
            rows = dict(conn.execute("SELECT event_id, json FROM events WHERE type = 'm.room.message'").fetchall())
        assert set(ids) <= set(rows)
        assert all(isinstance(stored, bytes) for stored in rows.values())  # tokenised (store/event_json.py)
        for prev, nxt in zip(ids, ids[1:]):  # each built on the one before it
            assert event_json.load(rows[nxt])["prev_events"] == [prev]
        future, outcomes = hs.rooms.send_events_nowait(Requester("@b:hub", "D", False, "t"), room_id,
                                                       [("m.room.message", {"b": 1}, None)])
        assert future is None and outcomes[0].errcode == "M_FORBIDDEN"
    finally:
        await hs.stop()


async def test_the_message_rate_is_taken_in_the_core_send_path(tmp_path: Path) -> None:
    """The per-user message rate is the core's: a room costs 5, each sent event and membership
    change 1, whichever front end calls (HTTP, CoAP, MQTT); a batch refuses only its items over
    the rate. `rate_limit=False` is for a caller that already took the token (MQTT admits a
    publish with `check_send_rate` before building it, to slow the client down instead)."""
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(per_second=0.01, burst=8)))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]  # 8 - 5: 3 left
        future, outcomes = hs.rooms.send_events_nowait(alice, room_id, [("m.room.message", {"n": i}, None)
                                                                        for i in range(5)])
        assert future is not None and all(isinstance(o, str) for o in outcomes[:3])
        for refused in outcomes[3:]:
            assert isinstance(refused, errors.MatrixError) and refused.errcode == "M_LIMIT_EXCEEDED"
            assert refused.status == 429 and refused.extra["retry_after_ms"] > 0
        await future
        for call in (hs.rooms.send_event(alice, room_id, "m.room.message", {"n": 9}),
                     hs.rooms.update_membership(alice, room_id, "@a:hub", "leave"),
                     hs.rooms.redact(alice, room_id, outcomes[0], None, None)):
            try:
                await call
                raise AssertionError("not rate limited")
            except errors.MatrixError as exc:
                assert exc.errcode == "M_LIMIT_EXCEEDED"
        try:
            hs.rooms.check_send_rate("@a:hub")
            raise AssertionError("not rate limited")
        except errors.MatrixError as exc:
            assert exc.errcode == "M_LIMIT_EXCEEDED"
        # Admitted elsewhere: stored without taking another token.
        await hs.rooms.send_event(alice, room_id, "m.room.message", {"n": 10}, rate_limit=False)
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:
            stored = [event_json.load(j)["content"].get("n") for (j,) in conn.execute(
                "SELECT json FROM events WHERE type = 'm.room.message' ORDER BY stream_ordering")]
        assert stored == [0, 1, 2, 10]
    finally:
        await hs.stop()
