"""The client-server API over raw HTTP: the seed's curl calls (with curl itself), room flows,
and bad input (a clear Matrix errcode, nothing stored)."""
from __future__ import annotations

import json
import subprocess
import urllib.parse

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess



def Q(value: str) -> str:
    """Percent-encode one path segment (slashes too)."""
    return urllib.parse.quote(value, safe="")


def curl(*args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob")}


@pytest.fixture()
def room(gateway: GatewayProcess, tokens: dict[str, str]) -> str:
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"},
                                   token=tokens["alice"])
    assert status == 200, body
    return body["room_id"]


def message_count(gw: GatewayProcess, room_id: str, token: str) -> int:
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{Q(room_id)}/messages?dir=b&limit=1000",
                              token=token)
    assert status == 200, body
    return len(body["chunk"])


def test_seed_curl_calls(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    base = f"{gateway.http_url}/_matrix/client/api/v1/rooms/{room}"
    token = tokens["alice"]
    code, body = curl("-XPOST", "-d", '{"msgtype":"m.text", "body":"hello"}',
                      f"{base}/send/m.room.message?access_token={token}")
    assert code == 200 and body["event_id"].startswith("$")
    code, midi = curl("-XPOST", "-d", '{"note": "71", "velocity": 68, "state": "on", "channel": 1, '
                      '"midi_ts": 374023441}', f"{base}/send/org.matrix.midi?access_token={token}")
    assert code == 200 and midi["event_id"].startswith("$")
    code, call = curl("-XPOST", "-d", '{"version": 0, "call_id": "12345", "offer": {"type": "offer", '
                      '"sdp": "v=0\\r\\no=- 658458 2 IN IP4 127.0.0.1..."}}',
                      f"{base}/send/m.call.invite?access_token={token}")
    assert code == 200 and call["event_id"].startswith("$")
    status, event = gateway.request("GET", f"/_matrix/client/v3/rooms/{Q(room)}/event/{Q(midi['event_id'])}",
                                    token=token)
    assert status == 200
    assert event["type"] == "org.matrix.midi"
    assert event["content"] == {"note": "71", "velocity": 68, "state": "on", "channel": 1, "midi_ts": 374023441}


def test_put_send_is_idempotent_per_transaction(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    path = f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/txn-1"
    before = message_count(gateway, room, tokens["alice"])
    first = gateway.request("PUT", path, {"msgtype": "m.text", "body": "once"}, token=tokens["alice"])
    again = gateway.request("PUT", path, {"msgtype": "m.text", "body": "once"}, token=tokens["alice"])
    assert first[0] == again[0] == 200
    assert first[1]["event_id"] == again[1]["event_id"]
    assert message_count(gateway, room, tokens["alice"]) == before + 1


def test_membership_flows(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    r = f"/_matrix/client/v3/rooms/{Q(room)}"
    # Invite-only: bob cannot join uninvited.
    status, body = gateway.request("POST", f"{r}/join", {}, token=bob)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert gateway.request("POST", f"{r}/invite", {"user_id": "@bob:localhost"}, token=alice)[0] == 200
    assert gateway.request("POST", f"{r}/join", {}, token=bob)[0] == 200
    status, joined = gateway.request("GET", "/_matrix/client/v3/joined_rooms", token=bob)
    assert room in joined["joined_rooms"]
    # Bob may not kick alice (power 0 < kick 50).
    status, body = gateway.request("POST", f"{r}/kick", {"user_id": "@alice:localhost"}, token=bob)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert gateway.request("POST", f"{r}/kick", {"user_id": "@bob:localhost", "reason": "x"}, token=alice)[0] == 200
    status, member = gateway.request("GET", f"{r}/state/m.room.member/{Q('@bob:localhost')}", token=alice)
    assert member["membership"] == "leave" and member["reason"] == "x"
    assert gateway.request("POST", f"{r}/ban", {"user_id": "@bob:localhost"}, token=alice)[0] == 200
    assert gateway.request("POST", f"{r}/invite", {"user_id": "@bob:localhost"}, token=alice)[0] == 403
    assert gateway.request("POST", f"{r}/unban", {"user_id": "@bob:localhost"}, token=alice)[0] == 200
    assert gateway.request("POST", f"{r}/invite", {"user_id": "@bob:localhost"}, token=alice)[0] == 200
    assert gateway.request("POST", f"/_matrix/client/v3/join/{Q(room)}", {}, token=bob)[0] == 200
    assert gateway.request("POST", f"{r}/leave", {}, token=bob)[0] == 200
    status, joined = gateway.request("GET", "/_matrix/client/v3/joined_rooms", token=bob)
    assert room not in joined["joined_rooms"]
    # Knocking on an invite-only room is refused cleanly.
    status, body = gateway.request("POST", f"/_matrix/client/v3/knock/{Q(room)}", {}, token=bob)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"


def test_create_room_direct_invite_carries_is_direct(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    """`is_direct: true` on createRoom sets is_direct on the invites it sends (the spec), which is
    how the invitee's client knows the room is a direct chat; without it, no is_direct."""
    alice = tokens["alice"]
    for direct in (True, False):
        status, created = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                          {"preset": "trusted_private_chat", "is_direct": direct,
                                           "invite": ["@bob:localhost"]}, token=alice)
        assert status == 200, created
        status, member = gateway.request(
            "GET", f"/_matrix/client/v3/rooms/{Q(created['room_id'])}/state/m.room.member/{Q('@bob:localhost')}",
            token=alice)
        assert status == 200 and member["membership"] == "invite"
        assert member.get("is_direct") is (True if direct else None)


def test_state_redaction_and_event_get(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    alice = tokens["alice"]
    r = f"/_matrix/client/v3/rooms/{Q(room)}"
    status, put = gateway.request("PUT", f"{r}/state/m.room.topic", {"topic": "greenhouse"}, token=alice)
    assert status == 200
    assert gateway.request("GET", f"{r}/state/m.room.topic", token=alice) == (200, {"topic": "greenhouse"})
    status, custom = gateway.request("PUT", f"{r}/state/org.example.sensor/{Q('temp/1')}", {"unit": "C"}, token=alice)
    assert status == 200
    status, state = gateway.request("GET", f"{r}/state", token=alice)
    assert {"org.example.sensor", "m.room.topic", "m.room.create"} <= {ev["type"] for ev in state}
    status, sent = gateway.request("PUT", f"{r}/send/m.room.message/t-red", {"msgtype": "m.text", "body": "oops"},
                                   token=alice)
    status, red = gateway.request("PUT", f"{r}/redact/{Q(sent['event_id'])}/r1", {"reason": "typo"}, token=alice)
    assert status == 200 and red["event_id"].startswith("$")
    status, event = gateway.request("GET", f"{r}/event/{Q(sent['event_id'])}", token=alice)
    assert status == 200
    assert event["content"] == {}
    assert event["unsigned"]["redacted_because"]["event_id"] == red["event_id"]


def test_profile_directory_whoami_logout_register(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    alice = tokens["alice"]
    assert gateway.request("GET", "/_matrix/client/v3/account/whoami", token=alice)[1]["user_id"] == "@alice:localhost"
    assert gateway.request("PUT", f"/_matrix/client/v3/profile/{Q('@alice:localhost')}/displayname",
                           {"displayname": "Alice"}, token=alice)[0] == 200
    assert gateway.request("GET", f"/_matrix/client/v3/profile/{Q('@alice:localhost')}")[1]["displayname"] == "Alice"
    alias = "#greenhouse:localhost"
    assert gateway.request("PUT", f"/_matrix/client/v3/directory/room/{Q(alias)}", {"room_id": room},
                           token=alice)[0] == 200
    assert gateway.request("GET", f"/_matrix/client/v3/directory/room/{Q(alias)}")[1]["room_id"] == room
    assert gateway.request("DELETE", f"/_matrix/client/v3/directory/room/{Q(alias)}", token=alice)[0] == 200
    assert gateway.request("GET", f"/_matrix/client/v3/directory/room/{Q(alias)}")[0] == 404
    status, body = gateway.request("POST", "/_matrix/client/v3/register", {"username": "mallory", "password": "x"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    temp = gateway.login("alice", PASSWORD)
    assert gateway.request("POST", "/_matrix/client/v3/logout", {}, token=temp)[0] == 200
    status, body = gateway.request("GET", "/_matrix/client/v3/account/whoami", token=temp)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"


BAD_SENDS = [
    # (description, raw body, expected status, errcode)
    ("not json", b"this is not json", 400, "M_NOT_JSON"),
    ("float", b'{"msgtype":"m.text","body":"t","temp":21.5}', 400, "M_BAD_JSON"),
    ("huge int", b'{"n": 9007199254740993}', 400, "M_BAD_JSON"),
    ("array content", b'[1, 2, 3]', 400, "M_BAD_JSON"),
    ("NaN", b'{"n": NaN}', 400, "M_BAD_JSON"),
    ("bad utf-8", b'{"body": "\xff"}', 400, "M_NOT_JSON"),
    ("too large", json.dumps({"body": "x" * 70_000}).encode(), 413, "M_TOO_LARGE"),
]


@pytest.mark.parametrize("name,raw,status,errcode", BAD_SENDS, ids=[b[0] for b in BAD_SENDS])
def test_bad_sends_are_refused_and_store_nothing(gateway: GatewayProcess, tokens: dict[str, str], room: str,
                                                 name: str, raw: bytes, status: int, errcode: str) -> None:
    before = message_count(gateway, room, tokens["alice"])
    got_status, body = gateway.request("PUT", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/bad-{Q(name)}",
                                       raw=raw, token=tokens["alice"])
    assert (got_status, body["errcode"]) == (status, errcode), body
    assert isinstance(body["error"], str) and body["error"]
    assert message_count(gateway, room, tokens["alice"]) == before


def test_auth_and_access_errors(gateway: GatewayProcess, tokens: dict[str, str], room: str) -> None:
    send = f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/e1"
    before = message_count(gateway, room, tokens["alice"])
    status, body = gateway.request("PUT", send, {"body": "x"})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = gateway.request("PUT", send, {"body": "x"}, token="nottoken")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = gateway.request("PUT", send, {"body": "x"}, token=tokens["bob"])  # bob is not in the room
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = gateway.request("GET", f"/_matrix/client/v3/rooms/{Q(room)}/messages", token=tokens["bob"])
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = gateway.request("PUT", "/_matrix/client/v3/rooms/!nope:localhost/send/m.room.message/e2",
                                   {"body": "x"}, token=tokens["alice"])
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = gateway.request("GET", f"/_matrix/client/v3/rooms/{Q(room)}/event/{Q('$missing')}",
                                   token=tokens["alice"])
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = gateway.request("GET", "/_matrix/client/v3/no/such/endpoint", token=tokens["alice"])
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"room_version": "1"},
                                   token=tokens["alice"])
    assert (status, body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    status, body = gateway.request("POST", "/_matrix/client/v3/login",
                                   {"type": "m.login.password", "user": "alice", "password": "wrong"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert message_count(gateway, room, tokens["alice"]) == before


def test_rate_limit_exceeded(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0.5\nmessages_burst = 8\n")
    with GatewayProcess(data) as gw:
        gw.add_user("dave", PASSWORD)
        token = gw.login("dave", PASSWORD)
        status, created = gw.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
        assert status == 200
        room = created["room_id"]
        codes = []
        for i in range(6):
            status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/{i}",
                                      {"body": str(i)}, token=token)
            codes.append(status)
            if status == 429:
                assert body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
        assert codes[:3] == [200, 200, 200] and 429 in codes
        assert message_count(gw, room, token) == 6 + codes.count(200)  # 6 creation events


def test_bad_config_is_refused_with_a_clear_message(tmp_path) -> None:
    from tests.support.gateway import gateway_cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("htp_port = 1\n")
    proc = gateway_cli("run", "--data-dir", str(data), check=False)
    assert proc.returncode != 0 and "unknown setting 'htp_port'" in proc.stderr
    (data / "gateway.toml").write_text('http_port = "eighty"\n')
    proc = gateway_cli("run", "--data-dir", str(data), check=False)
    assert proc.returncode != 0 and "http_port must be a int" in proc.stderr


def test_a_power_level_change_takes_effect_for_the_next_send(gateway: GatewayProcess, tokens: dict[str, str],
                                                              room: str) -> None:
    """The send path remembers auth verdicts per room state: a state change must void them."""
    alice, bob = tokens["alice"], tokens["bob"]
    r = f"/_matrix/client/v3/rooms/{Q(room)}"
    assert gateway.request("POST", f"{r}/invite", {"user_id": "@bob:localhost"}, token=alice)[0] == 200
    assert gateway.request("POST", f"{r}/join", {}, token=bob)[0] == 200
    for i in range(3):
        assert gateway.request("PUT", f"{r}/send/m.room.message/ok{i}", {"body": "allowed"}, token=bob)[0] == 200
    status, levels = gateway.request("GET", f"{r}/state/m.room.power_levels", token=alice)
    levels["events_default"] = 50
    assert gateway.request("PUT", f"{r}/state/m.room.power_levels", levels, token=alice)[0] == 200
    before = message_count(gateway, room, alice)
    status, body = gateway.request("PUT", f"{r}/send/m.room.message/no", {"body": "refused"}, token=bob)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert message_count(gateway, room, alice) == before
