"""The E2EE EDUs' shapes as they arrive over federation (pure: matrix_core/e2e_federation_rules.py)."""
from __future__ import annotations

from typing import Any

import pytest

from matrix_core.e2e_federation_rules import (DeviceListUpdate, follows, parse_device_list_update,
                                              parse_direct_to_device, parse_signing_key_update)
from matrix_core.ephemeral import BadEDU

ORIGIN = "remote.example"
SAM = "@sam:remote.example"


def keys(user: str = SAM) -> dict[str, Any]:
    return {"user_id": user, "keys": {"ed25519:X": "a2V5"}}


def test_direct_to_device_good() -> None:
    msg = parse_direct_to_device(ORIGIN, {"sender": SAM, "type": "m.room_key", "message_id": "m1",
                                          "messages": {"@a:hub": {"*": {"k": 1}}}})
    assert (msg.sender, msg.type, msg.message_id, msg.messages) == (SAM, "m.room_key", "m1", {"@a:hub": {"*": {"k": 1}}})


@pytest.mark.parametrize("content", [
    None, "x", [],
    {"sender": "@sam:other.example", "type": "t", "message_id": "m", "messages": {}},  # not the origin's user
    {"sender": SAM, "type": "", "message_id": "m", "messages": {}},
    {"sender": SAM, "type": "t", "message_id": 5, "messages": {}},
    {"sender": SAM, "type": "t", "message_id": "m", "messages": "no"},
    {"sender": SAM, "type": "t", "message_id": "m", "messages": {"not a user": {"D": {}}}},
    {"sender": SAM, "type": "t", "message_id": "m", "messages": {"@a:hub": {"D": "not an object"}}},
])
def test_direct_to_device_bad(content: Any) -> None:
    with pytest.raises(BadEDU):
        parse_direct_to_device(ORIGIN, content)


def test_device_list_update_good_and_deleted() -> None:
    update = parse_device_list_update(ORIGIN, {"user_id": SAM, "device_id": "D", "stream_id": 3, "prev_id": [2],
                                               "keys": keys()})
    assert update == DeviceListUpdate(SAM, "D", 3, [2], False, keys())
    gone = parse_device_list_update(ORIGIN, {"user_id": SAM, "device_id": "D", "stream_id": 4, "deleted": True})
    assert gone.deleted and gone.prev_id == [] and gone.keys is None


@pytest.mark.parametrize("content", [
    None,
    {"user_id": "@x:other.example", "device_id": "D", "stream_id": 1},
    {"user_id": SAM, "device_id": "", "stream_id": 1},
    {"user_id": SAM, "device_id": "D", "stream_id": "1"},
    {"user_id": SAM, "device_id": "D", "stream_id": True},
    {"user_id": SAM, "device_id": "D", "stream_id": 1, "prev_id": [1.5]},
    {"user_id": SAM, "device_id": "D", "stream_id": 1, "prev_id": 0},
    {"user_id": SAM, "device_id": "D", "stream_id": 1, "keys": keys("@other:remote.example")},
])
def test_device_list_update_bad(content: Any) -> None:
    with pytest.raises(BadEDU):
        parse_device_list_update(ORIGIN, content)


def test_signing_key_update() -> None:
    assert parse_signing_key_update(ORIGIN, {"user_id": SAM, "master_key": keys()}) == (SAM, {"master_key": keys()})
    for bad in ({"user_id": SAM, "master_key": "x"}, {"user_id": SAM, "self_signing_key": keys("@o:remote.example")},
                {"user_id": "@sam:elsewhere"}, None):
        with pytest.raises(BadEDU):
            parse_signing_key_update(ORIGIN, bad)


@pytest.mark.parametrize("known, stream_id, prev_id, expected", [
    (None, 5, [4], False),   # a list cached without a stream id: resync
    (4, 5, [4], True),       # the next one
    (5, 5, [4], True),       # the same update again
    (4, 6, [5], False),      # one missed
    (4, 6, [4, 5], False),   # one of two unknown
    (4, 5, [], False),       # no chain at all while we hold one
])
def test_follows(known: int | None, stream_id: int, prev_id: list[int], expected: bool) -> None:
    assert follows(known, DeviceListUpdate(SAM, "D", stream_id, prev_id, False, None)) is expected
