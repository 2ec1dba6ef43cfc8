"""Relations, threads, event context and bundled aggregations over HTTP (urllib against the hub
started through the CLI): each endpoint with its pagination and errors, the server's relation
rules, redactions, history visibility, and an existing database's relations found by migration."""
from __future__ import annotations

import json
import sqlite3
import urllib.parse
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    gateway.add_user("carol", PASSWORD)
    return {name: gateway.login(name, PASSWORD) for name in ("alice", "bob", "carol")}


def make_room(gw: GatewayProcess, tokens: dict[str, str], *members: str, preset: str = "public_chat") -> str:
    status, body = gw.request("POST", f"{V3}/createRoom", {"preset": preset}, token=tokens["alice"])
    assert status == 200, body
    for name in members:
        assert gw.request("POST", f"{V3}/join/{Q(body['room_id'])}", {}, token=tokens[name])[0] == 200
    return body["room_id"]


def send(gw: GatewayProcess, token: str, room: str, content: dict[str, Any], etype: str = "m.room.message",
         expect: int = 200) -> Any:
    status, body = gw.request("POST", f"{V3}/rooms/{Q(room)}/send/{etype}", content, token=token)
    assert status == expect, body
    return body["event_id"] if status == 200 else body


def text(body: str, **relates: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if relates:
        content["m.relates_to"] = relates
    return content


def thread(root: str, body: str) -> dict[str, Any]:
    return text(body, rel_type="m.thread", event_id=root)


def edit(original: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": f"* {body}", "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original}}


def reaction(target: str, key: str = "👍") -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}


def relations(gw: GatewayProcess, token: str, room: str, parent: str, suffix: str = "", **query: Any) -> tuple[int, Any]:
    qs = f"?{urllib.parse.urlencode(query)}" if query else ""
    return gw.request("GET", f"{V1}/rooms/{Q(room)}/relations/{Q(parent)}{suffix}{qs}", token=token)


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [ev["event_id"] for ev in events]


def get_event(gw: GatewayProcess, token: str, room: str, event_id: str) -> dict[str, Any]:
    status, body = gw.request("GET", f"{V3}/rooms/{Q(room)}/event/{Q(event_id)}", token=token)
    assert status == 200, body
    return body


def bundle(event: dict[str, Any]) -> dict[str, Any]:
    return event.get("unsigned", {}).get("m.relations", {})


def messages(gw: GatewayProcess, token: str, room: str, **query: Any) -> dict[str, Any]:
    status, body = gw.request("GET", f"{V3}/rooms/{Q(room)}/messages?{urllib.parse.urlencode(query)}", token=token)
    assert status == 200, body
    return body


def sync(gw: GatewayProcess, token: str, since: str | None = None, limit: int | None = None) -> dict[str, Any]:
    query: dict[str, str] = {"timeout": "0"}
    if since:
        query["since"] = since
    if limit is not None:
        query["filter"] = json.dumps({"room": {"timeline": {"limit": limit}}})
    status, body = gw.request("GET", f"{V3}/sync?{urllib.parse.urlencode(query)}", token=token)
    assert status == 200, body
    return body


# -- /relations ---------------------------------------------------------------------------------------

def test_relations_lists_children_by_type_and_pages_both_ways(gateway: GatewayProcess,
                                                               tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    root = send(gateway, alice, room, text("root"))
    t1 = send(gateway, bob, room, thread(root, "t1"))
    e1 = send(gateway, alice, room, edit(root, "root, edited"))
    r1 = send(gateway, bob, room, reaction(root), "m.reaction")
    ref = send(gateway, bob, room, {"m.relates_to": {"rel_type": "m.reference", "event_id": root}}, "org.example.ref")
    before_t2 = sync(gateway, bob)["next_batch"]
    t2 = send(gateway, alice, room, thread(root, "t2"))
    send(gateway, alice, room, text("unrelated"))
    newest_first = [t2, ref, r1, e1, t1]

    status, body = relations(gateway, bob, room, root)
    assert status == 200 and ids(body["chunk"]) == newest_first
    assert "next_batch" not in body and "prev_batch" not in body and "recursion_depth" not in body
    assert ids(relations(gateway, bob, room, root, "/m.thread")[1]["chunk"]) == [t2, t1]
    assert ids(relations(gateway, bob, room, root, "/m.annotation/m.reaction")[1]["chunk"]) == [r1]
    assert relations(gateway, bob, room, root, "/m.annotation/m.room.message")[1]["chunk"] == []
    assert relations(gateway, bob, room, t2)[1] == {"chunk": []}

    # backwards in pages of two, following next_batch; prev_batch repeats the page's `from`
    seen: list[str] = []
    query: dict[str, Any] = {"limit": 2}
    while True:
        status, page = relations(gateway, bob, room, root, **query)
        assert status == 200 and len(page["chunk"]) <= 2
        assert page.get("prev_batch") == query.get("from")
        seen += ids(page["chunk"])
        if "next_batch" not in page:
            break
        query["from"] = page["next_batch"]
    assert seen == newest_first
    # forwards: oldest first, the same way
    seen, query = [], {"limit": 3, "dir": "f"}
    while True:
        page = relations(gateway, bob, room, root, **query)[1]
        seen += ids(page["chunk"])
        if "next_batch" not in page:
            break
        query["from"] = page["next_batch"]
    assert seen == list(reversed(newest_first))
    # a /sync next_batch works as `to`: only what came after it
    assert ids(relations(gateway, bob, room, root, to=before_t2)[1]["chunk"]) == [t2]
    assert ids(relations(gateway, bob, room, root, dir="f", to=before_t2)[1]["chunk"]) == [t1, e1, r1, ref]


def test_recurse_follows_children_of_children(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    root = send(gateway, alice, room, text("root"))
    reply = send(gateway, bob, room, thread(root, "in thread"))
    liked = send(gateway, alice, room, reaction(reply), "m.reaction")
    direct = relations(gateway, bob, room, root, recurse="false")[1]
    assert ids(direct["chunk"]) == [reply] and direct["recursion_depth"] == 1
    deep = relations(gateway, bob, room, root, recurse="true")[1]
    assert ids(deep["chunk"]) == [liked, reply] and deep["recursion_depth"] >= 3
    # a filter applies at every level: the reaction hangs off a thread event, not a reaction
    assert ids(relations(gateway, bob, room, root, "/m.annotation", recurse="true")[1]["chunk"]) == []
    assert ids(relations(gateway, bob, room, root, "/m.thread", recurse="true")[1]["chunk"]) == [reply]


def test_relations_errors(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, carol = tokens["alice"], tokens["carol"]
    room = make_room(gateway, tokens, preset="private_chat")
    other = make_room(gateway, tokens)
    root = send(gateway, alice, room, text("root"))
    elsewhere = send(gateway, alice, other, text("elsewhere"))
    for token, room_id, event_id in ((alice, room, "$nope"), (alice, room, elsewhere), (alice, room, "not-an-id"),
                                     (carol, room, root)):  # carol is not in the room: the parent is not visible
        status, body = relations(gateway, token, room_id, event_id)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), (event_id, body)
    for query in ({"dir": "x"}, {"recurse": "yes"}, {"from": "bogus"}, {"to": "s1_x"}, {"limit": "ten"}):
        status, body = relations(gateway, alice, room, root, **query)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), (query, body)
    status, body = gateway.request("GET", f"{V1}/rooms/{Q(room)}/relations/{Q(root)}")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


# -- bundled aggregations -----------------------------------------------------------------------------

def test_bundles_in_messages_event_context_and_sync(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    first_sync = sync(gateway, bob)
    filler = [send(gateway, bob, room, text(f"before {i}")) for i in range(2)]
    root = send(gateway, alice, room, text("root"))
    first_edit = send(gateway, alice, room, edit(root, "v2"))
    latest_edit = send(gateway, alice, room, edit(root, "v3"))
    send(gateway, bob, room, edit(root, "not yours"))  # someone else's edit: not valid, never bundled
    t1 = send(gateway, bob, room, thread(root, "t1"))
    t2 = send(gateway, alice, room, thread(root, "t2"))
    t2_edit = send(gateway, alice, room, edit(t2, "t2, edited"))
    ref = send(gateway, bob, room, {"m.relates_to": {"rel_type": "m.reference", "event_id": root}}, "org.example.ref")
    send(gateway, bob, room, reaction(root), "m.reaction")

    def check(event: dict[str, Any], user: str) -> None:
        assert event["content"] == text("root"), "the original's content is not replaced (v1.7)"
        rel = bundle(event)
        assert set(rel) == {"m.thread", "m.replace", "m.reference"}, "reactions are not aggregated"
        assert rel["m.replace"]["event_id"] == latest_edit and rel["m.replace"]["content"]["m.new_content"]
        assert rel["m.thread"]["count"] == 2 and rel["m.thread"]["current_user_participated"] is True
        latest = rel["m.thread"]["latest_event"]
        assert latest["event_id"] == t2 and latest["sender"] == "@alice:localhost"
        assert bundle(latest)["m.replace"]["event_id"] == t2_edit, "the latest event carries its own bundle"
        assert rel["m.reference"] == {"chunk": [{"event_id": ref}]}

    check(get_event(gateway, bob, room, root), "bob")
    page = messages(gateway, bob, room, dir="b", limit=50)["chunk"]
    check(next(ev for ev in page if ev["event_id"] == root), "bob")
    assert not bundle(next(ev for ev in page if ev["event_id"] == first_edit))
    status, context = gateway.request("GET", f"{V3}/rooms/{Q(room)}/context/{Q(t1)}?limit=10", token=bob)
    assert status == 200
    check(next(ev for ev in context["events_before"] if ev["event_id"] == root), "bob")

    # /sync: an initial sync and a limited incremental one bundle; the thread events stay in the
    # main timeline (no thread filter)
    initial = sync(gateway, bob)["rooms"]["join"][room]["timeline"]
    assert t1 in ids(initial["events"]) and t2 in ids(initial["events"])
    # an incremental sync that is not limited holds the children too: the client aggregates (spec)
    whole = sync(gateway, bob, since=first_sync["next_batch"], limit=20)["rooms"]["join"][room]["timeline"]
    assert whole["limited"] is False and ids(whole["events"])[:3] == [*filler, root]
    assert not bundle(whole["events"][2])
    timeline = sync(gateway, bob, since=first_sync["next_batch"], limit=9)["rooms"]["join"][room]["timeline"]
    assert timeline["limited"] is True
    check(next(ev for ev in timeline["events"] if ev["event_id"] == root), "bob")
    assert t1 in ids(timeline["events"])


def test_redactions_keep_children_of_a_parent_but_drop_redacted_children(gateway: GatewayProcess,
                                                                          tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    root = send(gateway, alice, room, text("root"))
    t1 = send(gateway, bob, room, thread(root, "t1"))
    t2 = send(gateway, bob, room, thread(root, "t2"))
    the_edit = send(gateway, alice, room, edit(root, "v2"))
    like = send(gateway, bob, room, reaction(root), "m.reaction")

    def redact(token: str, event_id: str) -> None:
        status, body = gateway.request("POST", f"{V3}/rooms/{Q(room)}/redact/{Q(event_id)}", {}, token=token)
        assert status == 200, body

    # a redacted child no longer relates: not listed, not counted, and the reaction may be sent again
    redact(bob, t2)
    redact(bob, like)
    assert ids(relations(gateway, alice, room, root)[1]["chunk"]) == [the_edit, t1]
    rel = bundle(get_event(gateway, alice, room, root))
    assert rel["m.thread"]["count"] == 1 and rel["m.thread"]["latest_event"]["event_id"] == t1
    send(gateway, bob, room, reaction(root), "m.reaction")
    # a redacted parent keeps its children; its edit is no longer bundled
    redact(alice, root)
    redacted = get_event(gateway, alice, room, root)
    assert redacted["content"] == {}
    assert set(bundle(redacted)) == {"m.thread"}
    assert t1 in ids(relations(gateway, alice, room, root)[1]["chunk"])


def test_server_rules_for_sending_relations(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    other = make_room(gateway, tokens)
    root = send(gateway, alice, room, text("root"))
    reply = send(gateway, bob, room, thread(root, "t1"))
    elsewhere = send(gateway, alice, other, text("elsewhere"))
    count = len(messages(gateway, alice, room, limit=100)["chunk"])

    body = send(gateway, bob, room, thread(reply, "nested"), expect=400)
    assert body["errcode"] == "M_UNKNOWN", "a thread cannot start from an event in a relation"
    for target in ("$unknown", elsewhere):
        assert send(gateway, bob, room, reaction(target), "m.reaction", expect=400)["errcode"] == "M_UNKNOWN"
    # a second identical reaction is refused; another key, or another user, is fine
    path = f"{V3}/rooms/{Q(room)}/send/m.reaction/like-1"
    first = gateway.request("PUT", path, reaction(root), token=bob)
    assert first[0] == 200
    assert gateway.request("PUT", path, reaction(root), token=bob) == first, "a retried PUT is not a duplicate"
    assert send(gateway, bob, room, reaction(root), "m.reaction", expect=400)["errcode"] == "M_DUPLICATE_ANNOTATION"
    send(gateway, bob, room, reaction(root, "🎉"), "m.reaction")
    send(gateway, alice, room, reaction(root), "m.reaction")
    # a reply (no rel_type) to a thread event is not a relation: allowed
    send(gateway, alice, room, {"msgtype": "m.text", "body": "r", "m.relates_to": {"m.in_reply_to": {"event_id": reply}}})
    assert len(messages(gateway, alice, room, limit=100)["chunk"]) == count + 4, "nothing stored for refusals"


# -- /threads -----------------------------------------------------------------------------------------

def test_threads_by_latest_activity_with_pages_and_participation(gateway: GatewayProcess,
                                                                 tokens: dict[str, str]) -> None:
    alice, bob, carol = tokens["alice"], tokens["bob"], tokens["carol"]
    room = make_room(gateway, tokens, "bob", "carol")
    a = send(gateway, alice, room, text("A"))
    b = send(gateway, alice, room, text("B"))
    c = send(gateway, bob, room, text("C"))
    send(gateway, alice, room, text("no thread"))
    send(gateway, bob, room, thread(a, "a1"))
    send(gateway, carol, room, thread(c, "c1"))
    b1 = send(gateway, bob, room, thread(b, "b1"))
    url = f"{V1}/rooms/{Q(room)}/threads"

    status, body = gateway.request("GET", url, token=alice)
    assert status == 200 and ids(body["chunk"]) == [b, c, a] and "next_batch" not in body
    first = body["chunk"][0]
    assert bundle(first)["m.thread"]["latest_event"]["event_id"] == b1 and bundle(first)["m.thread"]["count"] == 1
    status, page1 = gateway.request("GET", f"{url}?limit=2", token=alice)
    assert ids(page1["chunk"]) == [b, c]
    status, page2 = gateway.request("GET", f"{url}?limit=2&from={page1['next_batch']}", token=alice)
    assert ids(page2["chunk"]) == [a] and "next_batch" not in page2
    # participated: the root's sender or a replier
    assert ids(gateway.request("GET", f"{url}?include=participated", token=carol)[1]["chunk"]) == [c]
    assert ids(gateway.request("GET", f"{url}?include=participated", token=bob)[1]["chunk"]) == [b, c, a]
    # new activity moves a thread to the front
    send(gateway, carol, room, thread(a, "a2"))
    assert ids(gateway.request("GET", url, token=bob)[1]["chunk"]) == [a, b, c]

    for query in ("include=mine", "from=zzz", "limit=x"):
        status, err = gateway.request("GET", f"{url}?{query}", token=alice)
        assert (status, err["errcode"]) == (400, "M_INVALID_PARAM"), query
    outsider_room = make_room(gateway, tokens, preset="private_chat")
    status, err = gateway.request("GET", f"{V1}/rooms/{Q(outsider_room)}/threads", token=carol)
    assert (status, err["errcode"]) == (403, "M_FORBIDDEN")


# -- /context -----------------------------------------------------------------------------------------

def test_context_around_an_event(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    sent = [send(gateway, alice, room, text(f"m{i}")) for i in range(10)]
    url = f"{V3}/rooms/{Q(room)}/context/{Q(sent[5])}"

    status, body = gateway.request("GET", f"{url}?limit=4", token=bob)
    assert status == 200
    assert body["event"]["event_id"] == sent[5]
    assert ids(body["events_before"]) == [sent[4], sent[3]], "reverse-chronological"
    assert ids(body["events_after"]) == [sent[6], sent[7]], "chronological"
    state_types = {(ev["type"], ev.get("state_key")) for ev in body["state"]}
    assert {("m.room.create", ""), ("m.room.member", "@alice:localhost"), ("m.room.member", "@bob:localhost")} \
        <= state_types
    # the tokens continue with /messages from either end
    assert ids(messages(gateway, bob, room, dir="b", limit=1, **{"from": body["start"]})["chunk"]) == [sent[2]]
    assert ids(messages(gateway, bob, room, dir="f", limit=1, **{"from": body["end"]})["chunk"]) == [sent[8]]
    # lazy-loading members: only the senders of the events returned
    lazy = json.dumps({"lazy_load_members": True})
    status, body = gateway.request("GET", f"{url}?limit=2&filter={Q(lazy)}", token=bob)
    members = {ev["state_key"] for ev in body["state"] if ev["type"] == "m.room.member"}
    assert status == 200 and members == {"@alice:localhost"}
    # limit 0: the event alone; the default: 10 around it
    status, body = gateway.request("GET", f"{url}?limit=0", token=bob)
    assert (body["events_before"], body["events_after"], body["event"]["event_id"]) == ([], [], sent[5])
    status, body = gateway.request("GET", url, token=bob)
    assert len(body["events_before"]) == 5 and ids(body["events_after"]) == sent[6:]

    for bad, code, errcode in ((f"{V3}/rooms/{Q(room)}/context/{Q('$nope')}", 404, "M_NOT_FOUND"),
                               (f"{url}?limit=-x", 400, "M_INVALID_PARAM"),
                               (f"{url}?filter={Q('{not json')}", 400, "M_BAD_JSON")):
        status, err = gateway.request("GET", bad, token=bob)
        assert (status, err["errcode"]) == (code, errcode), bad


# -- history visibility -------------------------------------------------------------------------------

def test_a_user_who_left_does_not_see_later_thread_replies(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    alice, bob, carol = tokens["alice"], tokens["bob"], tokens["carol"]
    room = make_room(gateway, tokens, "bob")
    root = send(gateway, alice, room, text("root"))
    t1 = send(gateway, alice, room, thread(root, "while bob is here"))
    assert gateway.request("POST", f"{V3}/rooms/{Q(room)}/leave", {}, token=bob)[0] == 200
    t2 = send(gateway, alice, room, thread(root, "after bob left"))
    send(gateway, alice, room, edit(root, "edited after bob left"))

    seen_by_bob = next(ev for ev in messages(gateway, bob, room, limit=50)["chunk"] if ev["event_id"] == root)
    rel = bundle(seen_by_bob)
    assert rel["m.thread"]["count"] == 1 and rel["m.thread"]["latest_event"]["event_id"] == t1
    assert "m.replace" not in rel
    assert ids(relations(gateway, bob, room, root)[1]["chunk"]) == [t1]
    assert bundle(get_event(gateway, alice, room, root))["m.thread"]["count"] == 2
    assert ids(relations(gateway, alice, room, root, "/m.thread")[1]["chunk"]) == [t2, t1]
    # never joined a private room: nothing of it (404 for the parent, 403 for the room's threads)
    private = make_room(gateway, tokens, preset="private_chat")
    secret = send(gateway, alice, private, text("secret"))
    send(gateway, alice, private, thread(secret, "secret reply"))
    assert relations(gateway, carol, private, secret)[0] == 404
    assert gateway.request("GET", f"{V3}/rooms/{Q(private)}/context/{Q(secret)}", token=carol)[0] == 403


# -- an existing database -----------------------------------------------------------------------------

def test_an_upgraded_database_indexes_the_relations_it_already_holds(tmp_path) -> None:
    """Relations stored before the index existed are found after the upgrade (its migration)."""
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("dana", PASSWORD)
        token = gw.login("dana", PASSWORD)
        status, created = gw.request("POST", f"{V3}/createRoom", {}, token=token)
        room = created["room_id"]
        root = send(gw, token, room, text("root"))
        reply = send(gw, token, room, thread(root, "reply"))
        newer = send(gw, token, room, edit(root, "v2"))
        assert gw.stop() == 0
        db = sqlite3.connect(tmp_path / "data" / "homeserver.db")
        with db:  # back to a database from before the relations component
            db.execute("DROP TABLE event_relations")
            db.execute("DELETE FROM schema_versions WHERE component = 'relations'")
        db.close()
        gw.start()
        rel = bundle(get_event(gw, token, room, root))
        assert rel["m.thread"]["latest_event"]["event_id"] == reply and rel["m.replace"]["event_id"] == newer
        assert ids(relations(gw, token, room, root)[1]["chunk"]) == [newer, reply]
    finally:
        gw.stop()


def test_purged_events_leave_the_relations_index(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    """Retention (`matrix-gateway purge`) deletes the index rows of the events it deletes."""
    from tests.support.gateway import gateway_cli

    alice, bob = tokens["alice"], tokens["bob"]
    room = make_room(gateway, tokens, "bob")
    status, _ = gateway.request("PUT", f"{V3}/rooms/{Q(room)}/state/m.room.retention/", {"max_lifetime": 1},
                                token=alice)
    assert status == 200
    root = send(gateway, alice, room, text("old reading"))
    send(gateway, bob, room, thread(root, "old reply"))
    send(gateway, alice, room, text("newest"))

    def rows() -> int:
        db = sqlite3.connect(gateway.data_dir / "homeserver.db")
        try:
            return int(db.execute("SELECT COUNT(*) FROM event_relations WHERE room_id = ?", (room,)).fetchone()[0])
        finally:
            db.close()

    assert rows() == 1
    gateway_cli("purge", "--data-dir", str(gateway.data_dir))  # by the room's max_lifetime: 1 ms
    assert rows() == 0
    assert gateway.request("GET", f"{V1}/rooms/{Q(room)}/threads", token=alice)[1] == {"chunk": []}
