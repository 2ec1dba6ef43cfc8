"""Who reads what (issue 20, L1): a matrix of users x read paths against the CLI-started hub.

Users of one private room (history visibility `shared`, the default): a member, one still
invited, one who rejected the invite (left, never joined), one banned before joining, one who
joined and left, a non-member, a logged-out token, and a guest (refused: the hub has no guest
access). Read paths: HTTP (/messages both ways, /event, /state, a state event, /members,
/joined_members, /sync's leave section), CoAP (the same route table, aiocoap), MQTT (retained
messages and live delivery, paho).
"""
from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import aiocoap
import cbor2
import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import Paho

USERS = ("bob", "carol", "erin", "frank", "gina", "henry", "ivan")


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class World:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.tokens: dict[str, str] = {}
        self.room = ""
        self.before: list[str] = []  # messages sent while bob and gina were members
        self.after = ""  # a message sent once gina had left

    def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.gw.request(method, path, body, token=self.tokens[who])

    def ok(self, who: str, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(who, method, path, body)
        assert status == 200, (who, path, status, answer)
        return answer

    def r(self, tail: str = "") -> str:
        return f"/_matrix/client/v3/rooms/{Q(self.room)}{tail}"


@pytest.fixture(scope="module")
def world(gateway: GatewayProcess) -> World:
    w = World(gateway)
    for name in USERS:
        if name != "bob":  # the gateway fixture made alice and bob
            # guests: household members share the MQTT broker's rooms (issue 16); these are not
            gateway.add_user(name, PASSWORD, guest=True)
    w.tokens = {name: gateway.login(name, PASSWORD) for name in ("alice", *USERS)}
    w.room = w.ok("alice", "POST", "/_matrix/client/v3/createRoom",
                  {"preset": "private_chat", "room_alias_name": "acl", "name": "ACL"})["room_id"]
    w.ok("alice", "PUT", w.r("/state/m.room.topic/"), {"topic": "secret topic"})
    for name in ("bob", "carol", "erin", "gina"):
        w.ok("alice", "POST", w.r("/invite"), {"user_id": f"@{name}:localhost"})
    w.ok("bob", "POST", w.r("/join"), {})
    w.ok("gina", "POST", w.r("/join"), {})
    w.before = [w.ok("alice", "PUT", w.r(f"/send/m.room.message/b{i}"), {"msgtype": "m.text", "body": f"secret {i}"})
                ["event_id"] for i in range(3)]
    w.ok("erin", "POST", w.r("/leave"), {})  # rejects the invite
    w.ok("alice", "POST", w.r("/ban"), {"user_id": "@frank:localhost"})  # banned before ever joining
    w.ok("gina", "POST", w.r("/leave"), {})
    w.after = w.ok("alice", "PUT", w.r("/send/m.room.message/a1"), {"msgtype": "m.text", "body": "later"})["event_id"]
    w.ok("ivan", "POST", "/_matrix/client/v3/logout", {})
    return w


def messages(w: World, who: str, direction: str = "b") -> list[dict[str, Any]]:
    return w.ok(who, "GET", w.r(f"/messages?dir={direction}&limit=100"))["chunk"]


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [ev["content"]["body"] for ev in events if ev["type"] == "m.room.message"]


def test_a_member_reads_everything(world: World) -> None:
    assert bodies(messages(world, "bob")) == ["later", "secret 2", "secret 1", "secret 0"]
    assert world.ok("bob", "GET", world.r(f"/event/{Q(world.before[0])}"))["content"]["body"] == "secret 0"
    assert any(ev["type"] == "m.room.topic" for ev in world.ok("bob", "GET", world.r("/state")))


@pytest.mark.parametrize("who", ["erin", "frank"])
def test_users_who_never_joined_read_no_history(world: World, who: str) -> None:
    for direction in ("b", "f"):
        chunk = messages(world, who, direction)
        assert bodies(chunk) == []
        # at most their own membership event (a rejected invite must disappear from their client)
        assert all(ev["type"] == "m.room.member" and ev["state_key"] == f"@{who}:localhost" for ev in chunk), chunk
    status, body = world.call(who, "GET", world.r(f"/event/{Q(world.before[0])}"))
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    for tail in ("/state", "/state/m.room.topic/", "/members", "/joined_members"):
        status, body = world.call(who, "GET", world.r(tail))
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", (who, tail, status, body)
    # by alias too
    status, body = world.call(who, "GET", f"/_matrix/client/v3/rooms/{Q('#acl:localhost')}/messages?dir=b")
    assert status == 200 and bodies(body["chunk"]) == []


def test_a_user_who_left_reads_what_they_saw_while_joined(world: World) -> None:
    assert bodies(messages(world, "gina")) == ["secret 2", "secret 1", "secret 0"]
    status, _ = world.call("gina", "GET", world.r(f"/event/{Q(world.after)}"))
    assert status == 404
    assert world.ok("gina", "GET", world.r("/state/m.room.topic/")) == {"topic": "secret topic"}


@pytest.mark.parametrize("who", ["carol", "henry"])
def test_invited_and_non_members_are_refused(world: World, who: str) -> None:
    for tail in ("/messages?dir=b", f"/event/{Q(world.before[0])}", "/state", "/members", "/joined_members"):
        status, body = world.call(who, "GET", world.r(tail))
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", (who, tail, status, body)


def test_logged_out_and_guest_tokens_read_nothing(world: World) -> None:
    status, body = world.call("ivan", "GET", world.r("/messages?dir=b"))
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = world.gw.request("POST", "/_matrix/client/v3/register?kind=guest", {})
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


def test_sync_leave_section_shows_only_what_the_user_could_see(world: World) -> None:
    for who, expected in (("erin", []), ("frank", []), ("gina", ["secret 0", "secret 1", "secret 2"])):
        body = world.ok(who, "GET", "/_matrix/client/v3/sync?since=s0&timeout=0")
        left = body["rooms"]["leave"][world.room]["timeline"]["events"]
        assert bodies(left) == expected, (who, left)


async def test_coap_reads_follow_the_same_rules(world: World) -> None:
    ctx = await aiocoap.Context.create_client_context()
    base = f"coap://127.0.0.1:{world.gw.coap_port}/_matrix/client/v3/rooms/{Q(world.room)}"
    try:
        async def get(who: str, tail: str) -> aiocoap.Message:
            uri = f"{base}{tail}{'&' if '?' in tail else '?'}access_token={world.tokens[who]}"
            return await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response

        resp = await get("erin", "/messages?dir=b&limit=100")
        assert resp.code == aiocoap.CONTENT and bodies(cbor2.loads(resp.payload)["chunk"]) == []
        resp = await get("bob", "/messages?dir=b&limit=100")
        assert resp.code == aiocoap.CONTENT and len(bodies(cbor2.loads(resp.payload)["chunk"])) == 4
        for who in ("erin", "frank"):
            resp = await get(who, "/state")
            assert resp.code == aiocoap.FORBIDDEN and cbor2.loads(resp.payload)["errcode"] == "M_FORBIDDEN"
            resp = await get(who, f"/event/{Q(world.before[1])}")
            assert resp.code == aiocoap.NOT_FOUND
    finally:
        await ctx.shutdown()


def test_mqtt_retained_and_live_reach_members_only(world: World) -> None:
    """Rooms behind topics (the broker's default rule): erin rejects an invite to the room of
    acl/t, bob joins it; erin joins the room of open/t. A marker there shows erin's subscription
    is live, so anything of the acl room would have reached her before it."""
    gw = world.gw
    alice = Paho(gw.mqtt_port, "alice", PASSWORD)
    alice.connect()
    alice.publish("acl/t/x", "retained secret", qos=1, retain=True)
    alice.publish("open/t/x", "hello", qos=1)

    def room_of(topic_room: str) -> str:
        status, body = gw.request("GET", f"/_matrix/client/v3/directory/room/{Q(f'#mqtt/{topic_room}:localhost')}")
        assert status == 200, body
        return body["room_id"]

    acl_room, open_room = room_of("acl/t"), room_of("open/t")
    # bob, a household member (issue 16), is in the broker's rooms from the start; erin is a guest
    assert acl_room in world.ok("bob", "GET", "/_matrix/client/v3/joined_rooms", None)["joined_rooms"]
    for who, room, action in (("erin", acl_room, "leave"), ("erin", open_room, "join")):
        world.ok("alice", "POST", f"/_matrix/client/v3/rooms/{Q(room)}/invite", {"user_id": f"@{who}:localhost"})
        world.ok(who, "POST", f"/_matrix/client/v3/rooms/{Q(room)}/{action}", {})
    erin, bob = Paho(gw.mqtt_port, "erin", PASSWORD), Paho(gw.mqtt_port, "bob", PASSWORD)
    try:
        for client in (erin, bob):
            client.connect()
            client.subscribe("acl/#", qos=1)
            client.subscribe("open/#", qos=1)
        assert bob.get().payload == b"retained secret"
        alice.publish("acl/t/x", "live secret", qos=1)
        assert bob.get().payload == b"live secret"
        alice.publish("open/t/x", "marker", qos=1)
        assert erin.get().payload == b"marker"  # nothing of the acl room came before it
    finally:
        for client in (alice, erin, bob):
            client.disconnect()


async def test_coap_observe_follows_the_same_rules(world: World) -> None:
    """Observe (RFC 7641) on /sync and /messages: erin's observed sync shows her no history; bob's
    observed /messages gets the next message as a notification."""
    ctx = await aiocoap.Context.create_client_context()
    base = f"coap://127.0.0.1:{world.gw.coap_port}/_matrix/client/v3"
    try:
        erin = ctx.request(aiocoap.Message(code=aiocoap.GET, observe=0,
                                           uri=f"{base}/sync?since=s0&access_token={world.tokens['erin']}"))
        first = await erin.response
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None
        assert bodies(cbor2.loads(first.payload)["rooms"]["leave"][world.room]["timeline"]["events"]) == []
        erin.observation.cancel()
        bob = ctx.request(aiocoap.Message(code=aiocoap.GET, observe=0, uri=(
            f"{base}/rooms/{Q(world.room)}/messages?dir=b&limit=1&access_token={world.tokens['bob']}")))
        first = await bob.response
        assert first.code == aiocoap.CONTENT and first.opt.observe is not None
        notifications = bob.observation.__aiter__()
        world.ok("alice", "PUT", world.r("/send/m.room.message/obs1"), {"msgtype": "m.text", "body": "observed"})
        note = await asyncio.wait_for(notifications.__anext__(), 20)
        assert bodies(cbor2.loads(note.payload)["chunk"]) == ["observed"]
        bob.observation.cancel()
    finally:
        await ctx.shutdown()
