"""`Rooms.send_event_nowait`: the coroutine-free send used by high-rate front ends resolves only
after COMMIT, refuses what `send_event` refuses, and falls back (None) for rooms not in memory."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from matrix_core import errors
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows


async def test_nowait_sends_are_committed_before_they_resolve(tmp_path: Path) -> None:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(0, 0)))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        await hs.db.write(lambda c: account_rows.insert_user(c, "@b:hub", None, False))
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]
        assert hs.rooms.send_event_nowait(alice, "!unknown:hub", "m.room.message", {}) is None
        futures = [hs.rooms.send_event_nowait(alice, room_id, "m.room.message", {"body": str(i)}) for i in range(20)]
        ids = [await f for f in futures]
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # another connection sees them: committed
            stored = {row[0] for row in conn.execute("SELECT event_id FROM events WHERE type = 'm.room.message'")}
        assert set(ids) <= stored
        with pytest.raises(errors.MatrixError) as refused:
            hs.rooms.send_event_nowait(Requester("@b:hub", "D", False, "t"), room_id, "m.room.message", {"b": 1})
        assert refused.value.errcode == "M_FORBIDDEN"
        with pytest.raises(errors.MatrixError) as bad:
            hs.rooms.send_event_nowait(alice, room_id, "m.room.message", {"t": 21.5})
        assert bad.value.errcode == "M_BAD_JSON"
    finally:
        await hs.stop()
