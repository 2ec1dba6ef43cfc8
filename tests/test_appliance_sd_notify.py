"""sd_notify against a real AF_UNIX datagram socket standing in for systemd: READY=1 once the hub
serves, WATCHDOG=1 pings from its event loop, STOPPING=1 on SIGTERM."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from gateway.ops.sd_notify import Notifier, watchdog_interval
from tests.support.gateway import GatewayProcess


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    short_dir = tempfile.mkdtemp(prefix="sdn")  # AF_UNIX paths are limited to 107 bytes
    path = os.path.join(short_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(short_dir)


def receive_until(sock: socket.socket, wanted: str) -> list[str]:
    """Every message received up to and including the first one holding `wanted` (or timeout)."""
    messages: list[str] = []
    while True:
        data = sock.recv(4096).decode()
        messages.append(data)
        if wanted in data.split("\n"):
            return messages


def test_hub_notifies_ready_watchdog_and_stopping(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    gw = GatewayProcess(tmp_path / "data", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    gw.start()
    try:
        first = receive_until(sock, "READY=1")
        assert any("STATUS=serving http=" in m for m in first)
        # the ready line has been printed before READY=1: systemd and the log agree
        assert any("ready" in line for line in gw.stdout_lines)
        started = time.monotonic()
        receive_until(sock, "WATCHDOG=1")
        receive_until(sock, "WATCHDOG=1")
        receive_until(sock, "WATCHDOG=1")
        # three pings at a 0.1 s period (half of 0.2 s): well under the watchdog's patience
        assert time.monotonic() - started < 5
    finally:
        code = gw.stop()
    assert code == 0, gw.read_log()
    assert "STOPPING=1" in "\n".join(receive_until(sock, "STOPPING=1"))


def test_abstract_namespace_socket() -> None:
    name = f"matrix-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.stopping()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready() is False


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
