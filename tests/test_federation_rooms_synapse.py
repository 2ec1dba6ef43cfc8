"""Rooms replicated with a real Synapse (PyPI matrix-synapse) over loopback federation.

Both directions: a Synapse user joins a hub room by alias; a hub user is invited to and joins
Synapse rooms of versions 10, 11 and 12; messages flow both ways; a 200-message burst arrives
whole; a hub that was down while Synapse sent catches up after its restart. Waiting is done with
/sync long-polls (each side wakes when the event lands), bounded by a deadline.
"""
from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.synapse import SynapseProcess

FLAGS = ["--no-federation-tls-verify", "--federation-allow-loopback"]
HUB_PW = "hub password"
SYN_PW = "synapse password"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    with SynapseProcess(tmp_path_factory.mktemp("synapse") / "hs") as hs:
        hs.register_user("sam", SYN_PW)
        yield hs


def start_hub(data_dir: Path) -> GatewayProcess:
    gw = GatewayProcess(data_dir, extra_args=FLAGS)
    gw.server_name = f"localhost:{gw.federation_port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    # The server name goes into the config too, so the CLI's `user add` makes @user:<that name>.
    (data_dir / "gateway.toml").write_text(f'server_name = "{gw.server_name}"\nmessages_per_second = 0\n')
    gw.start()
    return gw


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_hub(Path(tmp_path_factory.mktemp("hub")) / "data")
    gw.add_user("hubby", HUB_PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def hub_token(hub: GatewayProcess) -> str:
    return hub.login("hubby", HUB_PW)


@pytest.fixture(scope="module")
def sam_token(synapse: SynapseProcess) -> str:
    return synapse.login("sam", SYN_PW)


def hub_api(hub: GatewayProcess, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, answer = hub.request(method, path, body, token=token)
    assert status == 200, (method, path, status, answer, hub.read_log()[-3000:])
    return answer


def wait_with_sync(poll: Callable[[str | None, int], tuple[str, Any]], found: Callable[[Any], bool],
                   deadline_s: float = 60.0) -> Any:
    """Long-poll /sync until `found(response)`; each call wakes as soon as something arrives."""
    since = None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        since, response = poll(since, 10_000)
        if found(response):
            return response
    raise AssertionError("timed out waiting for the event to arrive")


def hub_sync(hub: GatewayProcess, token: str) -> Callable[[str | None, int], tuple[str, Any]]:
    def poll(since: str | None, timeout: int) -> tuple[str, Any]:
        path = f"/_matrix/client/v3/sync?timeout={timeout}" + (f"&since={since}" if since else "")
        answer = hub_api(hub, "GET", path, token=token)
        return answer["next_batch"], answer
    return poll


def synapse_sync(synapse: SynapseProcess, token: str) -> Callable[[str | None, int], tuple[str, Any]]:
    def poll(since: str | None, timeout: int) -> tuple[str, Any]:
        path = f"/_matrix/client/v3/sync?timeout={timeout}" + (f"&since={since}" if since else "")
        answer = synapse.api("GET", path, token=token, timeout=timeout / 1000 + 30)
        return answer["next_batch"], answer
    return poll


def timeline_bodies(sync: Any, room_id: str, section: str = "join") -> list[str]:
    room = sync.get("rooms", {}).get(section, {}).get(room_id, {})
    return [ev.get("content", {}).get("body") for ev in room.get("timeline", {}).get("events", [])]


def all_messages(api: Callable[..., Any], room_id: str, token: str) -> list[str]:
    answer = api("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=1000", token=token)
    return [ev["content"].get("body") for ev in answer["chunk"] if ev["type"] == "m.room.message"]


def test_synapse_user_joins_hub_room_by_alias_and_messages_flow_both_ways(
        hub: GatewayProcess, synapse: SynapseProcess, hub_token: str, sam_token: str) -> None:
    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "garden", "preset": "public_chat", "name": "Garden"}, token=hub_token)
    room_id = created["room_id"]
    alias = f"#garden:{hub.server_name}"
    joined = synapse.api("POST", f"/_matrix/client/v3/join/{q(alias)}", {}, token=sam_token)
    assert joined["room_id"] == room_id

    # The hub sees sam's join (it was placed through send_join).
    state = hub_api(hub, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", token=hub_token)
    assert synapse.user_id("sam") in state["joined"]

    hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/h1",
            {"msgtype": "m.text", "body": "hello from the hub"}, token=hub_token)
    wait_with_sync(synapse_sync(synapse, sam_token),
                   lambda s: "hello from the hub" in timeline_bodies(s, room_id))

    synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/s1",
                {"msgtype": "m.text", "body": "hello from synapse"}, token=sam_token)
    wait_with_sync(hub_sync(hub, hub_token), lambda s: "hello from synapse" in timeline_bodies(s, room_id))


@pytest.mark.parametrize("version", ["10", "11", "12"])
def test_hub_user_invited_to_synapse_room_joins_and_messages_flow(
        hub: GatewayProcess, synapse: SynapseProcess, hub_token: str, sam_token: str, version: str) -> None:
    created = synapse.api("POST", "/_matrix/client/v3/createRoom",
                          {"room_version": version, "preset": "private_chat", "name": f"v{version}"},
                          token=sam_token)
    room_id = created["room_id"]
    hubby = f"@hubby:{hub.server_name}"
    synapse.api("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite", {"user_id": hubby}, token=sam_token)
    wait_with_sync(hub_sync(hub, hub_token), lambda s: room_id in s.get("rooms", {}).get("invite", {}))

    # Both join endpoints (Element uses /rooms/{roomId}/join; it answered 404 "Unknown room" for
    # a room the hub only knows from the invite): one per room version.
    path = f"/_matrix/client/v3/rooms/{q(room_id)}/join" if version == "12" else f"/_matrix/client/v3/join/{q(room_id)}"
    joined = hub_api(hub, "POST", path, {}, token=hub_token)
    assert joined["room_id"] == room_id
    assert room_id in hub_api(hub, "GET", "/_matrix/client/v3/joined_rooms", token=hub_token)["joined_rooms"]
    members = synapse.api("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", token=sam_token)
    assert hubby in members["joined"]

    synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/v{version}",
                {"msgtype": "m.text", "body": f"sam says v{version}"}, token=sam_token)
    wait_with_sync(hub_sync(hub, hub_token), lambda s: f"sam says v{version}" in timeline_bodies(s, room_id))
    hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/v{version}",
            {"msgtype": "m.text", "body": f"hubby says v{version}"}, token=hub_token)
    wait_with_sync(synapse_sync(synapse, sam_token),
                   lambda s: f"hubby says v{version}" in timeline_bodies(s, room_id))


def test_burst_of_200_from_the_hub_all_arrive(hub: GatewayProcess, synapse: SynapseProcess, hub_token: str,
                                              sam_token: str) -> None:
    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "burst", "preset": "public_chat"}, token=hub_token)
    room_id = created["room_id"]
    synapse.api("POST", f"/_matrix/client/v3/join/{q('#burst:' + hub.server_name)}", {}, token=sam_token)
    for i in range(200):
        hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/b{i}",
                {"msgtype": "m.text", "body": f"burst {i}"}, token=hub_token)
    expected = {f"burst {i}" for i in range(200)}
    deadline = time.monotonic() + 90
    seen: set[str] = set()
    poll = synapse_sync(synapse, sam_token)
    since = None
    while time.monotonic() < deadline and not expected <= seen:
        since, _ = poll(since, 10_000)
        seen = set(all_messages(lambda *a, **k: synapse.api(*a, **k), room_id, sam_token))
    assert expected <= seen, f"{len(expected - seen)} of 200 missing"


def test_hub_down_while_synapse_sends_catches_up(tmp_path: Path, synapse: SynapseProcess, sam_token: str) -> None:
    hub = start_hub(tmp_path / "data")
    try:
        hub.add_user("otto", HUB_PW)
        token = hub.login("otto", HUB_PW)
        created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                          {"room_alias_name": "outage", "preset": "public_chat"}, token=token)
        room_id = created["room_id"]
        synapse.api("POST", f"/_matrix/client/v3/join/{q('#outage:' + hub.server_name)}", {}, token=sam_token)
        assert hub.stop() == 0
        for i in range(5):
            synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/o{i}",
                        {"msgtype": "m.text", "body": f"while down {i}"}, token=sam_token)
        hub.start()
        token = hub.login("otto", HUB_PW)
        wanted = {f"while down {i}" for i in range(5)}
        poll = hub_sync(hub, token)
        deadline = time.monotonic() + 90
        since = None
        while time.monotonic() < deadline:
            since, _ = poll(since, 10_000)
            if wanted <= set(all_messages(lambda *a, **k: hub_api(hub, *a, **k), room_id, token)):
                break
        assert wanted <= set(all_messages(lambda *a, **k: hub_api(hub, *a, **k), room_id, token))
    finally:
        hub.stop()


def test_hub_invites_synapse_user_who_joins_and_hub_declines_an_invite(
        hub: GatewayProcess, synapse: SynapseProcess, hub_token: str, sam_token: str) -> None:
    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=hub_token)
    room_id = created["room_id"]
    sam = synapse.user_id("sam")
    hub_api(hub, "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite", {"user_id": sam}, token=hub_token)
    wait_with_sync(synapse_sync(synapse, sam_token), lambda s: room_id in s.get("rooms", {}).get("invite", {}))
    joined = synapse.api("POST", f"/_matrix/client/v3/join/{q(room_id)}", {}, token=sam_token)
    assert joined["room_id"] == room_id
    members = hub_api(hub, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", token=hub_token)
    assert sam in members["joined"]

    # The other way: Synapse invites hubby, who declines; Synapse sees the leave.
    other = synapse.api("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=sam_token)
    hubby = f"@hubby:{hub.server_name}"
    synapse.api("POST", f"/_matrix/client/v3/rooms/{q(other['room_id'])}/invite", {"user_id": hubby},
                token=sam_token)
    wait_with_sync(hub_sync(hub, hub_token), lambda s: other["room_id"] in s.get("rooms", {}).get("invite", {}))
    hub_api(hub, "POST", f"/_matrix/client/v3/rooms/{q(other['room_id'])}/leave", {}, token=hub_token)
    state = synapse.api("GET", f"/_matrix/client/v3/rooms/{q(other['room_id'])}/state/m.room.member/{q(hubby)}",
                        token=sam_token)
    assert state["membership"] == "leave"
    synced = hub_api(hub, "GET", "/_matrix/client/v3/sync", token=hub_token)
    assert other["room_id"] not in synced["rooms"]["invite"]


def test_create_room_invites_a_synapse_user_as_a_direct_chat(
        hub: GatewayProcess, synapse: SynapseProcess, hub_token: str, sam_token: str) -> None:
    """createRoom's `invite` list reaches users on other servers (their server countersigns the
    invite), with is_direct set on the invite as the spec asks for `is_direct: true`."""
    sam = synapse.user_id("sam")
    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"preset": "trusted_private_chat", "is_direct": True, "invite": [sam]}, token=hub_token)
    room_id = created["room_id"]
    synced = wait_with_sync(synapse_sync(synapse, sam_token),
                            lambda s: room_id in s.get("rooms", {}).get("invite", {}))
    invite_state = synced["rooms"]["invite"][room_id]["invite_state"]["events"]
    mine = [e for e in invite_state if e["type"] == "m.room.member" and e["state_key"] == sam]
    assert mine and mine[0]["content"]["membership"] == "invite"
    assert mine[0]["content"].get("is_direct") is True
    member = hub_api(hub, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q(sam)}",
                     token=hub_token)
    assert member == {"membership": "invite", "is_direct": True}


def test_history_from_before_the_join_is_backfilled(hub: GatewayProcess, synapse: SynapseProcess,
                                                    hub_token: str, sam_token: str) -> None:
    created = synapse.api("POST", "/_matrix/client/v3/createRoom",
                          {"preset": "public_chat", "room_alias_name": "archive"}, token=sam_token)
    room_id = created["room_id"]
    for i in range(15):
        synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/old{i}",
                    {"msgtype": "m.text", "body": f"old {i}"}, token=sam_token)
    alias = f"#archive:{synapse.server_name}"
    joined = hub_api(hub, "POST", f"/_matrix/client/v3/join/{q(alias)}", {}, token=hub_token)
    assert joined["room_id"] == room_id
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = hub_api(hub, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=10"
                       + (f"&from={token}" if token else ""), token=hub_token)
        seen += [ev["content"].get("body") for ev in page["chunk"] if ev["type"] == "m.room.message"]
        if "end" not in page:
            break
        token = page["end"]
    assert [f"old {i}" for i in reversed(range(15))] == [b for b in seen if b and b.startswith("old ")]


def test_remote_profiles_are_queried_over_federation(hub: GatewayProcess, synapse: SynapseProcess,
                                                     hub_token: str, sam_token: str) -> None:
    synapse.api("PUT", f"/_matrix/client/v3/profile/{q(synapse.user_id('sam'))}/displayname",
                {"displayname": "Sam the Synapse user"}, token=sam_token)
    profile = hub_api(hub, "GET", f"/_matrix/client/v3/profile/{q(synapse.user_id('sam'))}", token=hub_token)
    assert profile["displayname"] == "Sam the Synapse user"
    hub_api(hub, "PUT", f"/_matrix/client/v3/profile/{q('@hubby:' + hub.server_name)}/displayname",
            {"displayname": "Hubby"}, token=hub_token)
    theirs = synapse.api("GET", f"/_matrix/client/v3/profile/{q('@hubby:' + hub.server_name)}", token=sam_token)
    assert theirs["displayname"] == "Hubby"


async def test_federated_events_reach_coap_observers(hub: GatewayProcess, synapse: SynapseProcess,
                                                     hub_token: str, sam_token: str) -> None:
    import aiocoap
    import cbor2

    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "sensors", "preset": "public_chat"}, token=hub_token)
    room_id = created["room_id"]
    synapse.api("POST", f"/_matrix/client/v3/join/{q('#sensors:' + hub.server_name)}", {}, token=sam_token)
    ctx = await aiocoap.Context.create_client_context()
    try:
        request = ctx.request(aiocoap.Message(
            code=aiocoap.GET, observe=0,
            uri=f"coap://127.0.0.1:{hub.coap_port}/_m/c/v3/sy?a={hub_token}&fi=%7B%7D"))
        first = await request.response
        assert first.code == aiocoap.CONTENT
        synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/coap1",
                    {"msgtype": "m.text", "body": "from synapse to a sensor"}, token=sam_token)
        deadline = time.monotonic() + 60
        async for note in request.observation:
            body = cbor2.loads(note.payload)
            events = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
            if any(ev.get("content", {}).get("body") == "from synapse to a sensor" for ev in events):
                break
            assert time.monotonic() < deadline, "no notification with the federated event"
        request.observation.cancel()
    finally:
        await ctx.shutdown()


def test_relations_from_synapse_are_indexed_and_bundled(hub: GatewayProcess, synapse: SynapseProcess,
                                                        hub_token: str, sam_token: str) -> None:
    """A thread reply and a reaction sent on Synapse arrive over federation into the hub's
    relations index: the hub's /relations lists them and its events carry the thread summary."""
    created = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "threads", "preset": "public_chat"}, token=hub_token)
    room_id = created["room_id"]
    synapse.api("POST", f"/_matrix/client/v3/join/{q('#threads:' + hub.server_name)}", {}, token=sam_token)
    root = hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/root",
                   {"msgtype": "m.text", "body": "thread root"}, token=hub_token)["event_id"]
    wait_with_sync(synapse_sync(synapse, sam_token), lambda s: "thread root" in timeline_bodies(s, room_id))
    reply = synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/rel1",
                        {"msgtype": "m.text", "body": "reply from synapse",
                         "m.relates_to": {"rel_type": "m.thread", "event_id": root}}, token=sam_token)["event_id"]
    like = synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.reaction/rel2",
                       {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
                       token=sam_token)["event_id"]
    wait_with_sync(hub_sync(hub, hub_token),
                   lambda s: like in [ev["event_id"] for ev in s.get("rooms", {}).get("join", {}).get(room_id, {})
                                      .get("timeline", {}).get("events", [])])
    children = hub_api(hub, "GET", f"/_matrix/client/v1/rooms/{q(room_id)}/relations/{q(root)}", token=hub_token)
    assert [ev["event_id"] for ev in children["chunk"]] == [like, reply]
    event = hub_api(hub, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(root)}", token=hub_token)
    summary = event["unsigned"]["m.relations"]["m.thread"]
    assert summary["latest_event"]["event_id"] == reply and summary["count"] == 1
    assert summary["current_user_participated"] is True  # hubby sent the root
