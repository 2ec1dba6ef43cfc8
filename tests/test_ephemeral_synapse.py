"""Typing and read receipts over federation with a real Synapse (PyPI matrix-synapse), both ways:
`m.typing` and `m.receipt` EDUs from the hub reach a Synapse user's /sync, and Synapse's reach
the hub user's /sync. One module-scoped Synapse and hub sharing one room; waits are /sync
long-polls (each wakes when the EDU lands), bounded by a deadline."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.synapse import SynapseProcess
from tests.test_federation_rooms_synapse import (HUB_PW, SYN_PW, hub_api, hub_sync, q, start_hub, synapse_sync,
                                                 wait_with_sync)


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    with SynapseProcess(tmp_path_factory.mktemp("synapse") / "hs") as hs:
        hs.register_user("sam", SYN_PW)
        yield hs


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_hub(Path(tmp_path_factory.mktemp("hub")) / "data")
    gw.add_user("hubby", HUB_PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def shared(hub: GatewayProcess, synapse: SynapseProcess) -> dict[str, str]:
    """A hub room sam (on Synapse) joined: the room id and both users' tokens."""
    hub_token = hub.login("hubby", HUB_PW)
    sam_token = synapse.login("sam", SYN_PW)
    room_id = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "porch", "preset": "public_chat"}, token=hub_token)["room_id"]
    synapse.api("POST", f"/_matrix/client/v3/join/{q('#porch:' + hub.server_name)}", {}, token=sam_token)
    return {"room": room_id, "hub": hub_token, "sam": sam_token}


def ephemeral(sync: Any, room_id: str, kind: str) -> list[dict[str, Any]]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [ev["content"] for ev in room.get("ephemeral", {}).get("events", []) if ev.get("type") == kind]


def typers(sync: Any, room_id: str) -> set[str]:
    return {user for content in ephemeral(sync, room_id, "m.typing") for user in content.get("user_ids", [])}


def readers(sync: Any, room_id: str, event_id: str) -> set[str]:
    return {user for content in ephemeral(sync, room_id, "m.receipt")
            for user in content.get(event_id, {}).get("m.read", {})}


def test_synapse_user_typing_shows_in_hub_sync(hub: GatewayProcess, synapse: SynapseProcess,
                                               shared: dict[str, str]) -> None:
    room, sam = shared["room"], synapse.user_id("sam")
    synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(sam)}", {"typing": True, "timeout": 30_000},
                token=shared["sam"])
    wait_with_sync(hub_sync(hub, shared["hub"]), lambda s: sam in typers(s, room))
    synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(sam)}", {"typing": False},
                token=shared["sam"])
    # From an initial sync (the current typers) on: sam was typing, so this waits for the stop.
    wait_with_sync(hub_sync(hub, shared["hub"]), lambda s: sam not in typers(s, room))


def test_hub_user_typing_shows_in_synapse_sync(hub: GatewayProcess, synapse: SynapseProcess,
                                               shared: dict[str, str]) -> None:
    room, hubby = shared["room"], f"@hubby:{hub.server_name}"
    hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(hubby)}", {"typing": True, "timeout": 30_000},
            token=shared["hub"])
    wait_with_sync(synapse_sync(synapse, shared["sam"]), lambda s: hubby in typers(s, room))
    hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(hubby)}", {"typing": False},
            token=shared["hub"])
    wait_with_sync(synapse_sync(synapse, shared["sam"]), lambda s: hubby not in typers(s, room))


def test_hub_user_read_receipt_shows_in_synapse_sync(hub: GatewayProcess, synapse: SynapseProcess,
                                                     shared: dict[str, str]) -> None:
    room, hubby = shared["room"], f"@hubby:{hub.server_name}"
    event_id = synapse.api("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/r1",
                           {"msgtype": "m.text", "body": "read this, hub"}, token=shared["sam"])["event_id"]
    wait_with_sync(hub_sync(hub, shared["hub"]),
                   lambda s: any(ev.get("event_id") == event_id for ev in
                                 s.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])))
    # A private receipt first: it must never leave the hub; then the public one.
    hub_api(hub, "POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read.private/{q(event_id)}", {},
            token=shared["hub"])
    hub_api(hub, "POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {},
            token=shared["hub"])
    found = wait_with_sync(synapse_sync(synapse, shared["sam"]), lambda s: hubby in readers(s, room, event_id))
    assert all("m.read.private" not in content.get(event_id, {}) for content in ephemeral(found, room, "m.receipt"))


def test_synapse_user_read_receipt_shows_in_hub_sync(hub: GatewayProcess, synapse: SynapseProcess,
                                                     shared: dict[str, str]) -> None:
    room, sam = shared["room"], synapse.user_id("sam")
    event_id = hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/h1",
                       {"msgtype": "m.text", "body": "read this, synapse"}, token=shared["hub"])["event_id"]
    wait_with_sync(synapse_sync(synapse, shared["sam"]),
                   lambda s: any(ev.get("event_id") == event_id for ev in
                                 s.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])))
    synapse.api("POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {}, token=shared["sam"])
    wait_with_sync(hub_sync(hub, shared["hub"]), lambda s: sam in readers(s, room, event_id))
    # The hub kept it: an initial sync shows it too.
    assert sam in readers(hub_api(hub, "GET", "/_matrix/client/v3/sync", token=shared["hub"]), room, event_id)
