"""Push rules and notification counts over HTTP against the CLI-started hub: the rule set as
matrix-js-sdk asks it (`pushrules/` with a trailing slash), rule changes with before/after,
`enabled` and `actions`, the spec's errcodes with nothing stored, `m.push_rules` in /sync, and
bob's messages raising alice's `unread_notifications` (seen by matrix-nio) and /notifications."""
from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
from nio import AsyncClient, LoginResponse, RoomSendResponse, SyncResponse

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V3 = "/_matrix/client/v3"
ALICE = "@alice:localhost"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob")}


def rules_of(gw: GatewayProcess, token: str) -> dict[str, Any]:
    status, body = gw.request("GET", f"{V3}/pushrules/", token=token)
    assert status == 200, body
    return body["global"]


def ids(rules: dict[str, Any], kind: str) -> list[str]:
    return [r["rule_id"] for r in rules[kind]]


def test_the_rule_set_as_matrix_js_sdk_asks_it(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    status, body = gateway.request("GET", f"{V3}/pushrules/", token=tokens["alice"])
    assert status == 200, body
    rules = body["global"]
    assert set(rules) == {"override", "content", "room", "sender", "underride"}
    assert ids(rules, "override")[0] == ".m.rule.master" and rules["override"][0]["enabled"] is False
    assert ".m.rule.is_user_mention" in ids(rules, "override")
    assert ids(rules, "underride")[-2:] == [".m.rule.message", ".m.rule.encrypted"]
    mention = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.is_user_mention")
    assert mention["conditions"][0]["value"] == ALICE and mention["default"] is True
    # the same without the slash, the scope with and without it, one kind
    assert gateway.request("GET", f"{V3}/pushrules", token=tokens["alice"]) == (200, body)
    assert gateway.request("GET", f"{V3}/pushrules/global/", token=tokens["alice"]) == (200, rules)
    assert gateway.request("GET", f"{V3}/pushrules/global", token=tokens["alice"]) == (200, rules)
    assert gateway.request("GET", f"{V3}/pushrules/global/underride", token=tokens["alice"]) == \
        (200, rules["underride"])
    assert gateway.request("GET", f"{V3}/pushrules/", token=None)[0] == 401


def test_put_get_move_and_delete_rules(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    bob = tokens["bob"]
    base = f"{V3}/pushrules/global/override"
    cond = [{"kind": "event_match", "key": "content.body", "pattern": "freezer"}]
    for rule_id in ("one", "two"):
        status, body = gateway.request("PUT", f"{base}/{rule_id}", {"conditions": cond, "actions": ["notify"]},
                                       token=bob)
        assert status == 200, body
    # a new rule goes first among the user's rules, after .m.rule.master
    assert ids(rules_of(gateway, bob), "override")[:3] == [".m.rule.master", "two", "one"]
    assert gateway.request("PUT", f"{base}/three?after=one", {"conditions": [], "actions": []}, token=bob)[0] == 200
    assert gateway.request("PUT", f"{base}/zero?before=two", {"conditions": [], "actions": []}, token=bob)[0] == 200
    assert ids(rules_of(gateway, bob), "override")[:5] == [".m.rule.master", "zero", "two", "one", "three"]
    status, rule = gateway.request("GET", f"{base}/one", token=bob)
    assert status == 200 and rule == {"rule_id": "one", "default": False, "enabled": True, "actions": ["notify"],
                                      "conditions": cond}
    # enabled and actions, of a user rule and of a server-default one
    assert gateway.request("PUT", f"{base}/one/enabled", {"enabled": False}, token=bob)[0] == 200
    assert gateway.request("GET", f"{base}/one/enabled", token=bob) == (200, {"enabled": False})
    master = f"{base}/{Q('.m.rule.master')}"
    assert gateway.request("PUT", f"{master}/enabled", {"enabled": True}, token=bob)[0] == 200
    assert gateway.request("GET", f"{master}/enabled", token=bob) == (200, {"enabled": True})
    assert gateway.request("PUT", f"{master}/enabled", {"enabled": False}, token=bob)[0] == 200
    msg = f"{V3}/pushrules/global/underride/{Q('.m.rule.message')}/actions"
    assert gateway.request("PUT", msg, {"actions": ["notify", {"set_tweak": "sound", "value": "bell"}]},
                           token=bob)[0] == 200
    assert gateway.request("GET", msg, token=bob) == (200, {"actions": ["notify", {"set_tweak": "sound",
                                                                                    "value": "bell"}]})
    assert gateway.request("PUT", f"{base}/one/actions", {"actions": []}, token=bob)[0] == 200
    assert gateway.request("GET", f"{base}/one/actions", token=bob) == (200, {"actions": []})
    # content, room and sender rules
    content = f"{V3}/pushrules/global/content/keyword"
    assert gateway.request("PUT", content, {"pattern": "warm", "actions": ["notify"]}, token=bob)[0] == 200
    assert gateway.request("GET", content, token=bob)[1]["pattern"] == "warm"
    room_rule = f"{V3}/pushrules/global/room/{Q('!abc:localhost')}"
    assert gateway.request("PUT", room_rule, {"actions": []}, token=bob)[0] == 200
    assert "conditions" not in gateway.request("GET", room_rule, token=bob)[1]
    for rule_id in ("zero", "one", "two", "three"):
        assert gateway.request("DELETE", f"{base}/{rule_id}", token=bob) == (200, {})
    assert gateway.request("DELETE", content, token=bob)[0] == 200
    assert gateway.request("DELETE", room_rule, token=bob)[0] == 200
    assert gateway.request("GET", f"{base}/one", token=bob)[1]["errcode"] == "M_NOT_FOUND"
    # other users' rule sets are their own
    assert ids(rules_of(gateway, tokens["alice"]), "override")[1] == ".m.rule.suppress_notices"


@pytest.mark.parametrize("method, path, body, status, errcode", [
    ("GET", "global/override/nope", None, 404, "M_NOT_FOUND"),
    ("DELETE", "global/override/nope", None, 404, "M_NOT_FOUND"),
    ("GET", "global/override/nope/enabled", None, 404, "M_NOT_FOUND"),
    ("PUT", "global/override/nope/enabled", {"enabled": True}, 404, "M_NOT_FOUND"),
    ("PUT", "global/override/nope/actions", {"actions": []}, 404, "M_NOT_FOUND"),
    ("PUT", "global/override/.m.rule.mine", {"conditions": [], "actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/override/a%2Fb", {"conditions": [], "actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/override/a%5Cb", {"conditions": [], "actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/overide/r", {"conditions": [], "actions": []}, 400, "M_INVALID_PARAM"),
    ("GET", "global/overide", None, 400, "M_INVALID_PARAM"),
    ("PUT", "device/override/r", {"conditions": [], "actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/room/not-a-room", {"actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/sender/bob", {"actions": []}, 400, "M_INVALID_PARAM"),
    ("PUT", "global/override/r", {"conditions": [{"key": "type"}], "actions": []}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/r", {"conditions": "all", "actions": []}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/r", {"conditions": [], "actions": ["shout"]}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/r", {"conditions": []}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/r", [1, 2], 400, "M_BAD_JSON"),
    ("PUT", "global/content/r", {"actions": []}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/r?before=nope", {"conditions": [], "actions": []}, 400, "M_UNKNOWN"),
    ("PUT", "global/override/r?after=.m.rule.master", {"conditions": [], "actions": []}, 400, "M_UNKNOWN"),
    ("PUT", "global/override/.m.rule.master/enabled", {"enabled": "yes"}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/.m.rule.master/actions", {"actions": "notify"}, 400, "M_BAD_JSON"),
    ("PUT", "global/override/.m.rule.master/enabled", {}, 400, "M_MISSING_PARAM"),
    ("DELETE", "global/override/.m.rule.master", None, 404, "M_NOT_FOUND"),
    ("GET", "global/override/.m.rule.master/colour", None, 404, "M_UNRECOGNIZED"),
])
def test_bad_requests_are_refused_and_store_nothing(gateway: GatewayProcess, tokens: dict[str, str], method: str,
                                                    path: str, body: Any, status: int, errcode: str) -> None:
    token = tokens["bob"]
    before = rules_of(gateway, token)
    got = gateway.request(method, f"{V3}/pushrules/{path}", body, token=token)
    assert got[0] == status and got[1]["errcode"] == errcode, got
    assert rules_of(gateway, token) == before


def sync(gw: GatewayProcess, token: str, since: str | None = None, filt: str | None = None,
         timeout: int = 0) -> dict[str, Any]:
    query = f"?timeout={timeout}" + (f"&since={since}" if since else "") + (f"&filter={Q(filt)}" if filt else "")
    status, body = gw.request("GET", f"{V3}/sync{query}", token=token)
    assert status == 200, body
    return body


def push_rules_events(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [ev for ev in body["account_data"]["events"] if ev["type"] == "m.push_rules"]


def test_push_rules_in_sync_account_data(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice = tokens["alice"]
    first = sync(gateway, alice)
    [event] = push_rules_events(first)
    assert event["content"]["global"] == rules_of(gateway, alice)
    quiet = sync(gateway, alice, first["next_batch"])
    assert push_rules_events(quiet) == []
    path = f"{V3}/pushrules/global/content/freezer"
    assert gateway.request("PUT", path, {"pattern": "freezer", "actions": ["notify"]}, token=alice)[0] == 200
    changed = sync(gateway, alice, quiet["next_batch"], timeout=5000)
    [event] = push_rules_events(changed)
    assert ids(event["content"]["global"], "content")[0] == "freezer"
    assert gateway.request("DELETE", path, token=alice)[0] == 200
    # bob's rules changing is not alice's news
    again = sync(gateway, alice, changed["next_batch"])
    assert len(push_rules_events(again)) == 1
    assert gateway.request("PUT", f"{V3}/pushrules/global/content/b", {"pattern": "b", "actions": []},
                           token=tokens["bob"])[0] == 200
    assert push_rules_events(sync(gateway, alice, again["next_batch"])) == []
    assert gateway.request("DELETE", f"{V3}/pushrules/global/content/b", token=tokens["bob"])[0] == 200


async def nio_client(gw: GatewayProcess, localpart: str) -> AsyncClient:
    client = AsyncClient(gw.http_url, f"@{localpart}:localhost")
    response = await client.login(PASSWORD, device_name=f"{localpart}-nio")
    assert isinstance(response, LoginResponse), response
    return client


async def test_bobs_messages_raise_alices_counts_seen_by_nio(gateway: GatewayProcess,
                                                            tokens: dict[str, str]) -> None:
    alice_token = tokens["alice"]
    status, created = gateway.request("POST", f"{V3}/createRoom",
                                      {"preset": "public_chat", "name": "Hall"}, token=alice_token)
    room_id = created["room_id"]
    alice = await nio_client(gateway, "alice")
    bob = await nio_client(gateway, "bob")
    try:
        assert (await bob.join(room_id)).room_id == room_id
        first = await alice.sync(timeout=0)
        assert isinstance(first, SyncResponse), first
        unread = first.rooms.join[room_id].unread_notifications
        assert (unread.notification_count, unread.highlight_count) == (0, 0)

        async def bob_says(content: dict[str, Any]) -> None:
            sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", **content})
            assert isinstance(sent, RoomSendResponse), sent

        await bob_says({"body": "the freezer is warm"})
        after_one = await alice.sync(timeout=5000, since=first.next_batch)
        unread = after_one.rooms.join[room_id].unread_notifications
        assert (unread.notification_count, unread.highlight_count) == (1, 0)
        await bob_says({"body": "look", "m.mentions": {"user_ids": [ALICE]}})
        # by name in the body: the legacy rules (the hub's member events carry no displayname yet,
        # so her localpart's .m.rule.contains_user_name is what matches)
        await bob_says({"body": "hey Alice, the freezer"})
        await bob_says({"body": "just noise", "msgtype": "m.notice"})
        await bob_says({"body": "x", "m.mentions": {}})
        later = await alice.sync(timeout=5000, since=after_one.next_batch)
        unread = later.rooms.join[room_id].unread_notifications
        assert (unread.notification_count, unread.highlight_count) == (4, 2)
        # a fresh (initial) sync gives the same counts
        body = sync(gateway, alice_token)
        assert body["rooms"]["join"][room_id]["unread_notifications"] == {"notification_count": 4,
                                                                          "highlight_count": 2}
        # /notifications: the same four, newest first; only=highlight the two mentions
        status, notes = gateway.request("GET", f"{V3}/notifications?limit=10", token=alice_token)
        assert status == 200, notes
        mine = [n for n in notes["notifications"] if n["room_id"] == room_id]
        assert [n["event"]["content"]["body"] for n in mine] == ["x", "hey Alice, the freezer", "look",
                                                                 "the freezer is warm"]
        assert all(n["read"] is False and isinstance(n["ts"], int) for n in mine)
        status, high = gateway.request("GET", f"{V3}/notifications?only=highlight", token=alice_token)
        assert [n["event"]["content"]["body"] for n in high["notifications"] if n["room_id"] == room_id] == \
            ["hey Alice, the freezer", "look"]
        status, page = gateway.request("GET", f"{V3}/notifications?limit=1", token=alice_token)
        assert len(page["notifications"]) == 1 and "next_token" in page
        status, page2 = gateway.request("GET", f"{V3}/notifications?limit=1&from={page['next_token']}",
                                        token=alice_token)
        assert page2["notifications"][0]["event"]["event_id"] != page["notifications"][0]["event"]["event_id"]
        # alice's own message acts as her read receipt: her counts go back to zero
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "on it"})
        assert isinstance(sent, RoomSendResponse), sent
        cleared = await alice.sync(timeout=5000, since=later.next_batch)
        unread = cleared.rooms.join[room_id].unread_notifications
        assert (unread.notification_count, unread.highlight_count) == (0, 0)
        # bob's own messages never count for bob, alice's do
        bob_sync = sync(gateway, tokens["bob"])
        assert bob_sync["rooms"]["join"][room_id]["unread_notifications"] == {"notification_count": 1,
                                                                              "highlight_count": 0}
    finally:
        await alice.close()
        await bob.close()


def test_thread_counts_when_the_filter_asks(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    status, created = gateway.request("POST", f"{V3}/createRoom", {"preset": "public_chat"}, token=alice)
    room_id = created["room_id"]
    assert gateway.request("POST", f"{V3}/join/{Q(room_id)}", {}, token=bob)[0] == 200
    r = f"{V3}/rooms/{Q(room_id)}"
    status, root = gateway.request("PUT", f"{r}/send/m.room.message/t-root", {"msgtype": "m.text", "body": "root"},
                                   token=bob)
    in_thread = {"msgtype": "m.text", "body": "reply",
                 "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"]}}
    for n in range(2):
        assert gateway.request("PUT", f"{r}/send/m.room.message/t-th{n}", in_thread, token=bob)[0] == 200
    plain = sync(gateway, alice)["rooms"]["join"][room_id]
    assert plain["unread_notifications"]["notification_count"] == 3
    assert "unread_thread_notifications" not in plain
    threaded = sync(gateway, alice, filt='{"room":{"timeline":{"unread_thread_notifications":true}}}')
    body = threaded["rooms"]["join"][room_id]
    assert body["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
    assert body["unread_thread_notifications"] == {root["event_id"]: {"notification_count": 2,
                                                                      "highlight_count": 0}}


def test_display_name_in_the_body_highlights(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    """Bob's display name in the room (his join carries his profile's) said by alice highlights
    for bob (.m.rule.contains_display_name), as a whole word, not when the event has m.mentions."""
    alice, bob = tokens["alice"], tokens["bob"]
    assert gateway.request("PUT", f"{V3}/profile/{Q('@bob:localhost')}/displayname",
                           {"displayname": "Frost Watcher"}, token=bob)[0] == 200
    status, created = gateway.request("POST", f"{V3}/createRoom", {"preset": "public_chat"}, token=alice)
    room_id = created["room_id"]
    assert gateway.request("POST", f"{V3}/join/{Q(room_id)}", {}, token=bob)[0] == 200
    first = sync(gateway, bob)
    r = f"{V3}/rooms/{Q(room_id)}"
    for n, body in enumerate(["frost watcher: the freezer!", "Frost Watchers unite", "frost watcher",
                              "plain"]):
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if n == 2:
            content["m.mentions"] = {}
        assert gateway.request("PUT", f"{r}/send/m.room.message/dn{n}", content, token=alice)[0] == 200
    got = sync(gateway, bob, first["next_batch"], timeout=5000)
    assert got["rooms"]["join"][room_id]["unread_notifications"] == {"notification_count": 4,
                                                                     "highlight_count": 1}


def test_push_rules_over_coap_through_the_one_route_table(gateway: GatewayProcess) -> None:
    """libcoap's coap-client reads a rule and its `enabled` flag (CBOR answers), as HTTP does."""
    import subprocess

    import cbor2

    token = gateway.device_token("alice", "push-coap")
    base = f"coap://127.0.0.1:{gateway.coap_port}/_matrix/client/v3/pushrules/global"
    for path, expected in ((f"underride/.m.rule.message?a={token}", ".m.rule.message"),
                           (f"override/.m.rule.master/enabled?a={token}", {"enabled": False})):
        proc = subprocess.run(["coap-client-notls", "-o", "-", "-m", "get", f"{base}/{path}"], capture_output=True,
                              timeout=20)
        answer = cbor2.loads(proc.stdout)
        assert (answer["rule_id"] if isinstance(expected, str) else answer) == expected, proc.stderr
