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
