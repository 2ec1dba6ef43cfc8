"""The receipts service's interface for push-rule counts (`hs.receipts.read_positions`), in
process: thread -> the stream position of the event the user's latest m.read / m.read.private
receipt there points at; and the read marker kept as room account data."""
from __future__ import annotations

from pathlib import Path
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows


async def test_read_positions_per_thread_and_the_read_marker(tmp_path: Path) -> None:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(),
                                       message_rate=RateLimit(0, 0)))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]
        ids = [await hs.rooms.send_event(alice, room_id, "m.room.message", {"body": str(i)}) for i in range(4)]
        pos = {eid: (await hs.rooms.fetch_event(eid))[1] for eid in ids}  # type: ignore[index]
        assert await hs.receipts.read_positions("@a:hub", room_id) == {}
        await hs.receipts.client_receipt(alice, room_id, "m.read", ids[1], None)
        await hs.receipts.client_receipt(alice, room_id, "m.read.private", ids[2], None)
        await hs.receipts.client_receipt(alice, room_id, "m.read", ids[0], "main")
        await hs.receipts.client_receipt(alice, room_id, "m.read.private", ids[3], ids[0])
        assert await hs.receipts.read_positions("@a:hub", room_id) == {
            "unthreaded": pos[ids[2]], "main": pos[ids[0]], ids[0]: pos[ids[3]]}
        # Cached answers follow new receipts; a receipt pointing back changes nothing.
        await hs.receipts.client_receipt(alice, room_id, "m.read", ids[3], "main")
        await hs.receipts.client_receipt(alice, room_id, "m.read", ids[0], None)
        assert (await hs.receipts.read_positions("@a:hub", room_id))["main"] == pos[ids[3]]
        assert (await hs.receipts.read_positions("@a:hub", room_id))["unthreaded"] == pos[ids[2]]
        assert await hs.receipts.read_positions("@b:hub", room_id) == {}

        # m.fully_read (through /receipt or /read_markers) is room account data.
        await hs.receipts.client_receipt(alice, room_id, "m.fully_read", ids[2], None)
        assert await hs.account_data.get_room_account_data("@a:hub", room_id, "m.fully_read") == {
            "event_id": ids[2]}
        await hs.receipts.read_markers(alice, room_id, {"m.fully_read": ids[3]})
        assert await hs.account_data.get_room_account_data("@a:hub", room_id, "m.fully_read") == {
            "event_id": ids[3]}
    finally:
        await hs.stop()
