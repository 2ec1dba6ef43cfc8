"""SD-card friendliness against the CLI hub with real peers: MQTT QoS 0 publishes may wait
(mqtt_qos0_commit_ms) to share a commit, without losing order, durability of acknowledged
publishes or anything on SIGTERM, and without throttling a flood; the bulk event index
(store/event_index.py) serves history and event lookups on both sides of an indexed edge."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from matrix_core.store.database import Database
from matrix_core.store.event_index import TAIL
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli
from tests.test_mqtt_peers import MosquittoSub, Paho, mosquitto_pub

WINDOW_MS = 10_000  # the longest allowed, longer than any wait here: QoS 0 commits only when something makes it


def _hub(tmp_path: Path, window_ms: int) -> GatewayProcess:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(f"messages_per_second = 0\nmqtt_qos0_commit_ms = {window_ms}\n")
    gw = GatewayProcess(data)
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    return gw


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = _hub(tmp_path, WINDOW_MS)
    yield gw
    gw.stop()


def _bodies(gw: GatewayProcess, room_alias: str, limit: int = 1000) -> list[str]:
    """Room messages' MQTT payload texts, oldest first, paging back through /messages."""
    token = gw.login("alice", PASSWORD)
    room = urllib.parse.quote(room_alias, safe="")
    out: list[str] = []
    frm = ""
    while True:
        status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={limit}{frm}",
                                  token=token)
        assert status == 200, body
        out += [e["content"]["mqtt"]["payload"].get("text", "") for e in body["chunk"]
                if e["type"] == "m.room.message"]
        if "end" not in body:
            return out[::-1]
        frm = f"&from={body['end']}"


def _stored_count(gw: GatewayProcess) -> int:
    conn = sqlite3.connect(f"file:{gw.data_dir / 'homeserver.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM events WHERE type = 'm.room.message'").fetchone()[0]
    finally:
        conn.close()


def test_qos0_waits_to_share_a_commit_and_a_qos1_publish_commits_it_in_order(hub: GatewayProcess) -> None:
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sd/box/t", "first", 1)  # creates the room
    pub = Paho(port, "alice", PASSWORD, "sd-pub")
    pub.connect()
    try:
        for i in range(5):
            pub.publish("sd/box/t", f"q0-{i}", 0)
        # Sent and read by the hub, but waiting for its commit: not on disk yet.
        assert _stored_count(hub) == 1
        pub.publish("sd/box/t", "q1", 1)  # PUBACK after a commit that takes the QoS 0 ones along
    finally:
        pub.disconnect()
    assert _stored_count(hub) == 7
    assert _bodies(hub, "#mqtt/sd/box:localhost") == ["first"] + [f"q0-{i}" for i in range(5)] + ["q1"]


def test_qos0_reaches_live_subscribers_before_its_commit_and_only_once(hub: GatewayProcess) -> None:
    """The window saves SD-card writes without delaying automations: mosquitto_sub gets a QoS 0
    message while it still waits for its commit (the window is 10 s, longer than paho's wait),
    and not a second time when a QoS 1 publish commits it; the room has it after that commit."""
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sd/live/t", "first", 1)
    sub = MosquittoSub(port, "alice", PASSWORD, "sd/live/#", 3)
    pub = Paho(port, "alice", PASSWORD, "sd-live")
    pub.connect()
    watcher = Paho(port, "alice", PASSWORD, "sd-live-watch")
    watcher.connect()
    try:
        watcher.subscribe("sd/live/t")
        pub.publish("sd/live/t", "motion", 0)
        assert watcher.get().payload == b"motion"  # delivered...
        assert _stored_count(hub) == 1  # ...while it waits for its commit
        pub.publish("sd/live/t", "q1", 1)  # commits "motion" too
        assert watcher.get().payload == b"q1"
        assert watcher.nothing_within(0.5)  # no second "motion" after the commit
    finally:
        pub.disconnect()
        watcher.disconnect()
    mosquitto_pub(port, "alice", PASSWORD, "sd/live/t", "end", 1)
    assert sub.wait() == ["sd/live/t motion", "sd/live/t q1", "sd/live/t end"]
    assert _bodies(hub, "#mqtt/sd/live:localhost") == ["first", "motion", "q1", "end"]


def test_qos0_and_qos1_publishes_of_one_client_reach_a_subscriber_in_the_order_sent(hub: GatewayProcess) -> None:
    """QoS 0 publishes delivered before their commit, mixed with QoS 1 ones delivered after
    theirs (the broker delivers early only while none of the client's QoS 1/2 publishes is
    still being stored): mosquitto_sub gets them all in the order paho sent them."""
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sd/order/t", "first", 1)
    sub = MosquittoSub(port, "alice", PASSWORD, "sd/order/t", 41)
    pub = Paho(port, "alice", PASSWORD, "sd-order")
    pub.connect()
    try:
        for i in range(20):  # no wait for PUBACKs: QoS 0 ones follow QoS 1 ones still in flight
            pub.client.publish("sd/order/t", f"a{i}", 1)
            pub.client.publish("sd/order/t", f"b{i}", 0)
        pub.publish("sd/order/t", "last", 1)
    finally:
        pub.disconnect()
    want = [f"sd/order/t {x}{i}" for i in range(20) for x in "ab"] + ["sd/order/t last"]
    assert sub.wait() == want


def test_sigterm_commits_waiting_qos0_publishes(hub: GatewayProcess) -> None:
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sd/stop/t", "first", 1)
    pub = Paho(port, "alice", PASSWORD, "sd-stop")
    pub.connect()
    pub.publish("sd/stop/t", "waiting", 0)
    pub.subscribe("sd/stop/other")  # its SUBACK: the hub has read the publish before it
    assert _stored_count(hub) == 1
    assert hub.stop() == 0, hub.read_log()
    pub.disconnect()
    hub.start()
    assert _bodies(hub, "#mqtt/sd/stop:localhost") == ["first", "waiting"]


def test_a_qos0_flood_is_not_throttled_by_the_window(hub: GatewayProcess) -> None:
    """More QoS 0 publishes than mqtt_receive_maximum from one client: the client is held back
    only until they commit, not for the window (a minute here: the test would time out)."""
    port = hub.mqtt_port
    mosquitto_pub(port, "alice", PASSWORD, "sd/flood/t", "first", 1)
    pub = Paho(port, "alice", PASSWORD, "sd-flood")
    pub.connect()
    try:
        for i in range(2000):
            pub.client.publish("sd/flood/t", f"m{i}", 0)
        # Read only after the 2,000 before it: held back a window per 256 of them, this would
        # miss paho's wait (10 s) by far.
        pub.publish("sd/flood/t", "marker", 1)
    finally:
        pub.disconnect()
    assert _bodies(hub, "#mqtt/sd/flood:localhost") == ["first"] + [f"m{i}" for i in range(2000)] + ["marker"]


def test_history_and_event_lookups_across_the_indexed_edge(tmp_path: Path) -> None:
    """More than TAIL events: the oldest are in the bulk index, the newest in the edge; paging
    /messages and fetching single events work on both sides, also after a restart."""
    gw = _hub(tmp_path, 0)
    try:
        port = gw.mqtt_port
        count = TAIL + 300
        lines = "".join(f"r{i}\n" for i in range(count))
        proc = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", "alice", "-P", PASSWORD,
                               "-t", "sd/many/t", "-q", "1", "-l"], input=lines.encode(), capture_output=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        want = [f"r{i}" for i in range(count)]
        assert _bodies(gw, "#mqtt/sd/many:localhost", limit=97) == want
        _wait_for_the_index(gw, TAIL)
        assert gw.stop() == 0
        conn = sqlite3.connect(gw.data_dir / "homeserver.db")
        lo, hi = conn.execute("SELECT lo, hi FROM event_index_span").fetchone()
        (top,) = conn.execute("SELECT MAX(stream_ordering) FROM events").fetchone()
        first_id, first_pos = conn.execute(
            "SELECT event_id, stream_ordering FROM events WHERE type = 'm.room.message' ORDER BY stream_ordering "
            "LIMIT 1").fetchone()
        last_id, last_pos = conn.execute("SELECT event_id, stream_ordering FROM events ORDER BY stream_ordering DESC "
                                         "LIMIT 1").fetchone()
        conn.close()
        assert lo <= first_pos <= hi < last_pos <= top  # one on each side of the edge
        gw.start()
        token = gw.login("alice", PASSWORD)
        room = urllib.parse.quote("#mqtt/sd/many:localhost", safe="")
        for event_id, text in ((first_id, "r0"), (last_id, f"r{count - 1}")):
            status, event = gw.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}", token=token)
            assert status == 200 and event["content"]["mqtt"]["payload"]["text"] == text, event
        assert _bodies(gw, "#mqtt/sd/many:localhost", limit=500) == want
    finally:
        gw.stop()


def _wait_for_the_index(gw: GatewayProcess, positions: int) -> None:
    """The hub indexes once traffic pauses (event_index.Compactor.QUIET); nothing to await from
    outside, so the span is polled, with a deadline."""
    deadline = time.monotonic() + 20
    while True:
        conn = sqlite3.connect(f"file:{gw.data_dir / 'homeserver.db'}?mode=ro", uri=True)
        try:
            (hi,) = conn.execute("SELECT hi FROM event_index_span").fetchone()
        finally:
            conn.close()
        if hi >= positions:
            return
        assert time.monotonic() < deadline, f"nothing indexed yet (hi = {hi})"
        time.sleep(0.1)


@pytest.mark.parametrize("value", ["-1", "10001", '"soon"'])
def test_a_bad_qos0_commit_window_is_refused_by_name(tmp_path: Path, value: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(f"mqtt_qos0_commit_ms = {value}\n")
    proc = gateway_cli("run", "--data-dir", str(data), check=False)
    assert proc.returncode != 0 and "mqtt_qos0_commit_ms" in proc.stderr, proc.stderr
    assert not (data / "homeserver.db").exists()


def test_database_delay_is_cut_short_by_an_undelayed_write_and_by_close(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        db = Database(tmp_path / "db.sqlite")
        await db.open()
        await db.write(lambda c: c.execute("CREATE TABLE t (v TEXT)"))
        waiting = db.submit(lambda c: c.execute("INSERT INTO t VALUES ('delayed')"), delay=3600)
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('now')"))
        assert waiting.done()  # committed with the write that could not wait
        last = db.submit(lambda c: c.execute("INSERT INTO t VALUES ('at close')"), delay=3600)
        await db.close()
        assert last.done() and last.exception() is None
        conn = sqlite3.connect(tmp_path / "db.sqlite")
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY rowid")]

    assert asyncio.run(main()) == ["delayed", "now", "at close"]
