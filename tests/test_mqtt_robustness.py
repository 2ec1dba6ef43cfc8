"""The broker under stalls, crashes and misbehaving connections (issue 20: R4, D1, R3, R2, the
session quota), against the hub started with its CLI and real clients (paho, mosquitto) or raw
sockets where the point is bytes or timing a client library would not produce."""
from __future__ import annotations

import os
import signal
import sqlite3
import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from frontends.mqtt.connection import Connection, Limits, PublishReceived, Qos2Released
from frontends.mqtt.session import SessionState
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.ratelimit import RateLimit
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_broker import _connect_v5, _publish_v5, _varint, room_events
from tests.test_mqtt_peers import Paho, RawClient, mosquitto_pub

WAIT = 10.0
V5 = mqtt.MQTTv5


# -- R4: a stalled hub ---------------------------------------------------------------------------


def test_a_stall_of_the_hub_is_not_held_against_its_clients(gateway: GatewayProcess) -> None:
    """The hub is stopped (SIGSTOP) for longer than 1.5 x a client's keepalive while the client
    keeps pinging into its socket: after SIGCONT the client is still connected and its will did
    not fire. (A raw client: paho gives up by itself 2 x keepalive after its last PINGRESP, which
    leaves too thin a window to test a stall reliably.)"""
    port = gateway.mqtt_port
    watcher = Paho(port, "alice", PASSWORD, "stall-watcher", protocol=V5)
    raw = RawClient(port)
    stop = threading.Event()

    def ping() -> None:
        while not stop.wait(0.3):
            try:
                raw.send(b"\xc0\x00")
            except OSError:
                return

    pinger = threading.Thread(target=ping)
    try:
        watcher.connect()
        mosquitto_pub(port, "alice", PASSWORD, "stall/dev/status", "online", 1)
        watcher.subscribe("stall/dev/#", 1)
        will = struct.pack(">H", 16) + b"stall/dev/status" + struct.pack(">H", 4) + b"gone"
        raw.send(_connect_v5("stall-raw", "alice", PASSWORD, keepalive=1, will=will))
        assert raw.read_packet()[:1] == b"\x20"
        pinger.start()
        os.kill(gateway.pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)  # the stall under test (1.5 x keepalive = 1.5 s)
        finally:
            os.kill(gateway.pid, signal.SIGCONT)
        stop.set()
        pinger.join()
        raw.send(_publish_v5("stall/dev/data", b"alive", 7))
        while (packet := raw.read_packet())[:1] == b"\xd0":  # PINGRESPs for the pings of the stall
            pass
        assert packet[:1] == b"\x40" and struct.unpack(">H", packet[2:4])[0] == 7, packet  # PUBACK: still connected
        mosquitto_pub(port, "alice", PASSWORD, "stall/dev/status", "marker", 1)
        assert [watcher.get().payload, watcher.get().payload] == [b"alive", b"marker"]  # the will would come first
    finally:
        stop.set()
        if pinger.is_alive():
            pinger.join()
        raw.close()
        watcher.disconnect()


def test_keepalive_excuses_a_stall_up_to_now() -> None:
    conn = Connection(Limits(), 0.0)
    conn.keepalive = 10
    conn.last_received = 5.0
    assert conn.keepalive_expired(40.0)
    conn.excuse(30.0, 40.0)  # the loop stood still 30 s: that silence was the server's
    assert conn.last_received == 35.0 and not conn.keepalive_expired(40.0)
    conn.excuse(30.0, 41.0)  # never into the future
    assert conn.last_received == 41.0


# -- D1: QoS 2 exactly once across a crash -------------------------------------------------------


def _connect_v311(client_id: str, user: str, password: str, clean: bool = True, keepalive: int = 60) -> bytes:
    def s(x: str) -> bytes:
        return struct.pack(">H", len(x.encode())) + x.encode()
    flags = 0x80 | 0x40 | (0x02 if clean else 0)
    body = s("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + s(client_id) + s(user) + s(password)
    return b"\x10" + _varint(len(body)) + body


def _publish_v311(topic: str, payload: bytes, packet_id: int, qos: int = 2, dup: bool = False) -> bytes:
    body = struct.pack(">H", len(topic.encode())) + topic.encode() + struct.pack(">H", packet_id) + payload
    return bytes([0x30 | qos << 1 | (0x08 if dup else 0)]) + _varint(len(body)) + body


def test_a_qos2_resend_after_a_crash_is_stored_once(tmp_path: Path) -> None:
    """PUBREC comes after the COMMIT that holds both the message and its packet id; the hub is
    killed (SIGKILL) before the client's PUBREL; after the restart the client resumes its session
    and resends the PUBLISH with DUP and the same packet id: PUBREC, PUBREL, PUBCOMP, and the
    room holds the message exactly once. And the other way: killed right after a PUBCOMP, the
    hub takes the id's next message as new (PUBCOMP waits for the id's removal to commit)."""
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        gw.add_user("alice", PASSWORD)
        token = gw.login("alice", PASSWORD)
        mosquitto_pub(gw.mqtt_port, "alice", PASSWORD, "once/dev/x", "room exists", 1)
        raw = RawClient(gw.mqtt_port)
        raw.send(_connect_v311("exactly-once", "alice", PASSWORD, clean=False))
        assert raw.read_packet() == b"\x20\x02\x00\x00"
        raw.send(_publish_v311("once/dev/x", b"only once", 9))
        assert raw.read_packet() == b"\x50\x02\x00\x09"  # PUBREC: durable
        gw.kill()  # before PUBREL
        gw.proc = None
        raw.close()
        gw.start()
        raw = RawClient(gw.mqtt_port)
        raw.send(_connect_v311("exactly-once", "alice", PASSWORD, clean=False))
        assert raw.read_packet() == b"\x20\x02\x01\x00"  # session present
        raw.send(_publish_v311("once/dev/x", b"only once", 9, dup=True))
        assert raw.read_packet() == b"\x50\x02\x00\x09"  # PUBREC for the stored message
        raw.send(b"\x62\x02\x00\x09")  # PUBREL
        assert raw.read_packet() == b"\x70\x02\x00\x09"  # PUBCOMP
        raw.send(_publish_v311("once/dev/x", b"next", 9))  # the id is free again: a new message
        assert raw.read_packet() == b"\x50\x02\x00\x09"
        raw.send(b"\x62\x02\x00\x09")
        assert raw.read_packet() == b"\x70\x02\x00\x09"  # PUBCOMP: the id's release is durable
        gw.kill()  # right after PUBCOMP: the id must not come back from the disk
        gw.proc = None
        raw.close()
        gw.start()
        raw = RawClient(gw.mqtt_port)
        raw.send(_connect_v311("exactly-once", "alice", PASSWORD, clean=False))
        assert raw.read_packet() == b"\x20\x02\x01\x00"
        raw.send(_publish_v311("once/dev/x", b"reused id", 9))  # a new message, not a resend
        assert raw.read_packet() == b"\x50\x02\x00\x09"
        raw.send(b"\x62\x02\x00\x09")
        assert raw.read_packet() == b"\x70\x02\x00\x09"
        raw.close()
        texts = [e["content"]["mqtt"]["payload"]["text"]
                 for e in room_events(gw, token, "#mqtt/once/dev:localhost") if e["type"] == "m.room.message"]
        assert sorted(texts) == ["next", "only once", "reused id", "room exists"], texts
    finally:
        gw.stop()


async def test_a_packet_id_commits_in_the_same_transaction_as_its_event(tmp_path: Path) -> None:
    """The core's send path runs a front end's extra write inside the event's own transaction:
    the event is there for that transaction but not yet committed for anyone else, and a failing
    extra write takes the event down with it."""
    db_path = tmp_path / "db.sqlite"
    hs = Homeserver(HomeserverSettings("hub", db_path, generate_signing_key(), message_rate=RateLimit(0, 0)))
    await hs.start()
    try:
        await hs.db.write(lambda c: account_rows.insert_user(c, "@a:hub", None, False))
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]
        seen: list[tuple[int, int]] = []

        def record(conn: sqlite3.Connection) -> None:
            mine = conn.execute("SELECT count(*) FROM events WHERE type = 'm.room.message'").fetchone()[0]
            with sqlite3.connect(db_path) as other:
                theirs = other.execute("SELECT count(*) FROM events WHERE type = 'm.room.message'").fetchone()[0]
            seen.append((mine, theirs))

        future, outcomes = hs.rooms.send_events_nowait(
            alice, room_id, [("m.room.message", {"body": "1"}, None), ("m.room.message", {"body": "2"}, None)],
            extras=[None, record])
        await future
        assert seen == [(2, 0)]  # inside the events' transaction, before its COMMIT

        def broken(conn: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        with pytest.raises(sqlite3.OperationalError):
            await hs.rooms.send_event(alice, room_id, "m.room.message", {"body": "3"}, also=broken)
        with sqlite3.connect(db_path) as conn:
            bodies = [row[0] for row in conn.execute("SELECT json FROM events WHERE type = 'm.room.message'")]
        assert len(bodies) == 2  # the event whose extra write failed was not stored
    finally:
        await hs.stop()


# -- R3: a refused CONNECT, then a close ---------------------------------------------------------


def _log_since(gw: GatewayProcess, offset: int) -> str:
    return gw.log_path().read_text()[offset:]


def _await_log(gw: GatewayProcess, offset: int, needle: str, count: int = 1) -> str:
    """The log written since *offset* once it holds *needle* *count* times (bounded wait: the
    hub writes it soon; the log file is the only outside view of it)."""
    deadline = time.monotonic() + WAIT
    while (text := _log_since(gw, offset)).count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} not logged {count} times: {text[-2000:]}"
        time.sleep(0.05)
    return text


def test_a_refused_connect_then_a_close_logs_no_traceback(gateway: GatewayProcess) -> None:
    port = gateway.mqtt_port
    offset = len(gateway.log_path().read_text())
    for connect in (_connect_v5("hangs-up-5", "alice", "wrong password"),
                    _connect_v311("hangs-up-3", "alice", "wrong password")):
        raw = RawClient(port)
        raw.send(connect)
        raw.close()  # before the answer: the credentials are still being checked
    _await_log(gateway, offset, "MQTT CONNECT refused for 'alice'", count=2)
    mosquitto_pub(port, "alice", PASSWORD, "hangup/dev/x", "served on", 1)  # handled after the refusals
    text = _log_since(gateway, offset)
    assert "Traceback" not in text and "AssertionError" not in text, text


def test_refuse_after_the_client_hung_up_does_nothing() -> None:
    conn = Connection(Limits(), 0.0)
    conn.receive_data(_connect_v311("c", "u", "p"), 0.0)
    conn.close()
    conn.refuse(0x86)
    assert conn.data_to_send() == b""


# -- R2: connections that never send CONNECT; many from one address -----------------------------


def test_silent_connections_time_out_and_one_address_is_capped(tmp_path: Path) -> None:
    """mqtt_connect_timeout_s = 1, mqtt_max_connections_per_address = 4: four raw sockets that
    send nothing (one drips a CONNECT a byte at a time) are closed after about a second; a fifth
    and sixth from the same address are closed at once; each kind is logged once; afterwards a
    real client from that address connects."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("mqtt_connect_timeout_s = 1\nmqtt_max_connections_per_address = 4\n")
    with GatewayProcess(data) as gw:
        gw.add_user("alice", PASSWORD)
        port = gw.mqtt_port
        opened = time.monotonic()
        silent = [RawClient(port) for _ in range(4)]
        connect = _connect_v311("dripper", "alice", PASSWORD)
        closed = threading.Event()

        def drip() -> None:
            for byte in connect[:-1]:  # never the whole CONNECT
                if closed.wait(0.1):
                    return
                try:
                    silent[0].send(bytes([byte]))
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            for _ in range(2):
                extra = RawClient(port)
                assert extra.recv_until_closed() == b""  # over the cap: closed at once, no answer
                extra.close()
            for client in silent:
                assert client.recv_until_closed() == b""
            took = time.monotonic() - opened
        finally:
            closed.set()
            dripper.join()
            for client in silent:
                client.close()
        assert 1.0 <= took < 1.0 + 2 * 0.5 + 2.0, took  # the timeout, the tick that confirms it, slack
        paho = Paho(port, "alice", PASSWORD, "after-the-cap")
        assert paho.connect()[1] == 0
        paho.disconnect()
        log = gw.log_path().read_text()
    assert log.count("MQTT connection from 127.0.0.1 refused") == 1, log
    assert log.count("no CONNECT within 1 s") == 1, log
    assert "Traceback" not in log


def test_connect_overdue_counts_from_the_opening_not_the_last_byte() -> None:
    conn = Connection(Limits(), 0.0)
    conn.receive_data(b"\x10", 9.0)  # a drip of a CONNECT
    assert not conn.connect_overdue(10.0, 10) and conn.connect_overdue(10.1, 10)
    conn = Connection(Limits(), 0.0)
    conn.receive_data(_connect_v311("c", "u", "p"), 1.0)
    assert not conn.connect_overdue(100.0, 10)  # CONNECT received: the broker is on it


# -- the persistent-session quota ----------------------------------------------------------------


def test_persistent_sessions_per_account_are_bounded(tmp_path: Path) -> None:
    """mqtt_max_sessions_per_account = 2: a third persistent session is refused in CONNACK (5.0:
    0x97 Quota exceeded, 3.1.1: 0x03) and nothing of it is stored; resuming one of the two, clean
    sessions, and another account's sessions are not affected."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("mqtt_max_sessions_per_account = 2\n")
    with GatewayProcess(data) as gw:
        gw.add_user("alice", PASSWORD)
        gw.add_user("bob", PASSWORD)
        port = gw.mqtt_port
        for i in range(2):
            kept = Paho(port, "alice", PASSWORD, f"kept-{i}", protocol=V5, clean=False, session_expiry=3600)
            assert kept.connect()[1] == 0
            kept.subscribe("quota/dev/#", 1)
            kept.disconnect()
        third = Paho(port, "alice", PASSWORD, "third", protocol=V5, clean=False, session_expiry=3600)
        assert third.connect()[1] == 0x97  # Quota exceeded
        third.disconnect()
        old = Paho(port, "alice", PASSWORD, "third-v311", clean=False)
        rc = old.connect()[1]
        assert rc.is_failure and rc.getName() == "Server unavailable", rc  # 3.1.1 code 3: it has no quota code
        old.disconnect()
        resumed = Paho(port, "alice", PASSWORD, "kept-0", protocol=V5, clean=False, session_expiry=3600)
        flags, rc, _ = resumed.connect()
        assert rc == 0 and flags.session_present
        resumed.disconnect()
        clean = Paho(port, "alice", PASSWORD, "clean-one", protocol=V5)
        assert clean.connect()[1] == 0
        clean.disconnect()
        bobs = Paho(port, "bob", PASSWORD, "bobs", protocol=V5, clean=False, session_expiry=3600)
        assert bobs.connect()[1] == 0
        bobs.disconnect()
    with sqlite3.connect(data / "homeserver.db") as conn:
        stored = sorted(row[0] for row in conn.execute("SELECT client_id FROM mqtt_sessions"))
    assert stored == ["@alice:localhost kept-0", "@alice:localhost kept-1", "@bob:localhost bobs"], stored


def test_pubcomp_of_a_persistent_session_waits_for_the_broker() -> None:
    conn = Connection(Limits(), 0.0)
    conn.receive_data(_connect_v311("c", "u", "p", clean=False), 0.0)
    session = SessionState("c", "@u:hub", 4, expiry_interval=0xFFFFFFFF)
    conn.accept(session, False, 0.0)
    conn.data_to_send()
    assert [type(e) for e in conn.receive_data(_publish_v311("a/b", b"x", 3), 1.0)] == [PublishReceived]
    conn.ack_publish(3, 2)
    assert conn.data_to_send() == b"\x50\x02\x00\x03"  # PUBREC
    assert conn.receive_data(b"\x62\x02\x00\x03", 2.0) == [Qos2Released(3)]
    assert conn.receive_data(b"\x62\x02\x00\x03", 2.1) == []  # a repeated PUBREL: still waiting
    assert conn.data_to_send() == b""  # no PUBCOMP before the id's removal is durable
    conn.complete_qos2(3)
    assert conn.data_to_send() == b"\x70\x02\x00\x03"
    conn.complete_qos2(3)
    assert conn.data_to_send() == b""  # once
