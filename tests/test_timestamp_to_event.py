"""GET /v1/rooms/{roomId}/timestamp_to_event (spec v1.6, advertised by /versions): the closest
event the user may see in each direction, and its errors."""
from __future__ import annotations

import time
import urllib.parse

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def test_closest_event_in_each_direction_and_errors(gateway: GatewayProcess) -> None:
    alice = gateway.login("alice", PASSWORD)
    bob = gateway.login("bob", PASSWORD)
    status, created = gateway.request("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=alice)
    assert status == 200, created
    room = created["room_id"]
    sent = []
    for i in range(5):
        status, body = gateway.request("PUT", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/ts{i}",
                                       {"msgtype": "m.text", "body": f"m{i}"}, token=alice)
        assert status == 200, body
        status, ev = gateway.request("GET", f"/_matrix/client/v3/rooms/{Q(room)}/event/{Q(body['event_id'])}",
                                     token=alice)
        sent.append((ev["origin_server_ts"], ev["event_id"]))
        time.sleep(0.002)  # distinct timestamps
    assert sorted({ts for ts, _ in sent}) == [ts for ts, _ in sent]  # distinct, increasing
    base = f"/_matrix/client/v1/rooms/{Q(room)}/timestamp_to_event"
    middle_ts, middle_id = sent[2]
    for direction in ("f", "b"):
        status, body = gateway.request("GET", f"{base}?ts={middle_ts}&dir={direction}", token=alice)
        assert (status, body) == (200, {"event_id": middle_id, "origin_server_ts": middle_ts})
    status, body = gateway.request("GET", f"{base}?ts={sent[-1][0] + 1}&dir=b", token=alice)
    assert body["event_id"] == sent[-1][1]
    status, body = gateway.request("GET", f"{base}?ts={sent[1][0] + 1}&dir=f", token=alice)
    assert body["event_id"] == sent[2][1]
    status, body = gateway.request("GET", f"{base}?ts={sent[-1][0] + 60_000}&dir=f", token=alice)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = gateway.request("GET", f"{base}?ts=0&dir=b", token=alice)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")  # nothing before the room existed

    for query, code, errcode in (("dir=f", 400, "M_MISSING_PARAM"), (f"ts={middle_ts}", 400, "M_MISSING_PARAM"),
                                 (f"ts={middle_ts}&dir=x", 400, "M_INVALID_PARAM"), ("ts=soon&dir=f", 400, "M_INVALID_PARAM")):
        status, body = gateway.request("GET", f"{base}?{query}", token=alice)
        assert (status, body["errcode"]) == (code, errcode), query
    status, body = gateway.request("GET", f"{base}?ts={middle_ts}&dir=f", token=bob)  # not a member
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
