"""The broker under stalls, crashes and misbehaving connections (issue 20: R4, D1, R3, R2, the
session quota), against the hub started with its CLI and real clients (paho, mosquitto) or raw
sockets where the point is bytes or timing a client library would not produce."""
from __future__ import annotations

import os
import signal
import struct
import threading
import time

import paho.mqtt.client as mqtt

from bridges.mqtt.connection import Connection, Limits
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_broker import _connect_v5, _publish_v5
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
