"""The HTTP listener at the connection level (issue 20, R2 and R3), with raw sockets against the
CLI-started hub: connections that never finish their headers are closed, one address cannot hold
more than its share of connections, bad header bytes are a 400 and one log line, and running out
of descriptors is logged once, not per accept()."""
from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import GatewayProcess

VERSIONS = "/_matrix/client/versions"
IDLE_TIMEOUT = 1.0
CAP = 5


def hub_with(tmp_path: Path, config: str) -> GatewayProcess:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(config)
    return GatewayProcess(data)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with hub_with(tmp_path_factory.mktemp("conn"),
                  f"http_idle_timeout = {IDLE_TIMEOUT}\nhttp_max_connections_per_address = {CAP}\n") as gw:
        yield gw


def connect(gw: GatewayProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10, source_address=(source, 0))
    return sock


def closed_by_hub_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the hub closed `sock` (EOF), failing if it is still open after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        pytest.fail(f"the hub kept the connection open for {seconds} s")
    return time.monotonic() - started


def get(gw: GatewayProcess, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", VERSIONS)
        return conn.getresponse().status
    finally:
        conn.close()


def test_connections_that_never_finish_their_headers_are_closed(hub: GatewayProcess) -> None:
    silent = connect(hub)  # sends nothing at all
    partial = connect(hub)
    partial.sendall(b"GET /_matrix/cli")  # a request line never finished
    headers = connect(hub)
    headers.sendall(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: hub\r\n")  # headers never ended
    for sock in (silent, partial, headers):
        assert closed_by_hub_within(sock, IDLE_TIMEOUT + 4) <= IDLE_TIMEOUT + 4
        sock.close()
    assert get(hub) == 200


def test_trickling_bytes_do_not_keep_a_connection_open(hub: GatewayProcess) -> None:
    """Slowloris: a byte at a time, never the end of the headers. The deadline runs from accept."""
    sock = connect(hub)
    started = time.monotonic()
    try:
        for byte in b"GET /_matrix/client/versions HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.1)  # the trickle itself: the pace of the attack, not a wait for the hub
    except OSError:  # closed by the hub mid-trickle: a reset or a broken pipe
        pass
    else:
        pytest.fail("the hub let a trickle of header bytes run for 10 s")
    assert time.monotonic() - started < IDLE_TIMEOUT + 4
    sock.close()


def test_a_long_poll_is_not_cut_by_the_idle_timeout(hub: GatewayProcess) -> None:
    """The timeout is for requests that never arrive, not for answers that take a while."""
    hub.add_user("poller", "pw")
    token = hub.login("poller", "pw")
    conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
    try:
        conn.request("GET", "/_matrix/client/v3/sync?timeout=0", headers={"Authorization": f"Bearer {token}"})
        since = json.loads(conn.getresponse().read())["next_batch"]
        started = time.monotonic()
        conn.request("GET", f"/_matrix/client/v3/sync?since={since}&timeout={int(IDLE_TIMEOUT * 2500)}",
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["next_batch"] == since
        assert time.monotonic() - started >= IDLE_TIMEOUT * 2.5
    finally:
        conn.close()


def test_one_address_cannot_hold_more_than_its_connections(hub: GatewayProcess) -> None:
    """The cap counts open connections per address: past it, a new one is told 429 and closed;
    other addresses are served, and the address is served again once its connections close."""
    idle = [connect(hub) for _ in range(CAP)]
    try:
        extra = connect(hub)
        extra.settimeout(10)
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        extra.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429 "), answer
        assert json.loads(body)["errcode"] == "M_LIMIT_EXCEEDED"
        assert get(hub, source="127.0.0.2") == 200  # another host is not affected
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while get(hub) != 200:  # the hub sees the closes at once; allow for the round trips
        assert time.monotonic() < deadline
    log = hub.log_path().read_text()
    assert log.count("already has 5 connections open") == 1


def test_bad_header_bytes_are_a_400_and_one_log_line(hub: GatewayProcess) -> None:
    bad = [b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n", b"GET / HTTP/1.1\r\nHo\xffst: x\r\n\r\n",
           b"GET /\x00 HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40)]
    for raw in bad * 5:
        sock = connect(hub)
        sock.sendall(raw)
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer
    log = hub.log_path().read_text()
    assert "Traceback" not in log
    assert log.count("bad request from") == 1
    assert get(hub) == 200


def test_running_out_of_descriptors_is_logged_once(tmp_path: Path) -> None:
    with hub_with(tmp_path, "http_max_connections_per_address = 0\n") as gw:
        in_use = len(os.listdir(f"/proc/{gw.pid}/fd"))
        resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (in_use + 20, in_use + 20))
        clients = [connect(gw) for _ in range(40)]  # the kernel completes them; accept() runs out
        try:
            deadline = time.monotonic() + 10
            while "out of file descriptors" not in gw.log_path().read_text():
                assert time.monotonic() < deadline, gw.read_log()
                time.sleep(0.05)
            # asyncio retries accept() every second: let it fail a few more times (no event to await)
            time.sleep(2.5)
        finally:
            for sock in clients:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # served again once the descriptors are back
            try:
                if get(gw) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
        log = gw.log_path().read_text()
        assert log.count("out of file descriptors") == 1, log[-3000:]
        assert "Traceback" not in log


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run(["prlimit", "--nofile=256:4096", sys.executable, "-c",
                          "import resource; from gateway.resources import raise_open_files_limit as r; "
                          "print(r(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"],
                         capture_output=True, text=True, timeout=30, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["4096", "4096"]


def test_the_federation_listener_closes_silent_and_half_open_tls_connections(hub: GatewayProcess) -> None:
    """The same listener serves federation (TLS): a connection that never starts its handshake,
    or never sends a request after it, is closed within the idle timeout too."""
    import ssl

    silent = socket.create_connection(("127.0.0.1", hub.federation_port), timeout=10)
    assert closed_by_hub_within(silent, IDLE_TIMEOUT + 4) <= IDLE_TIMEOUT + 4
    silent.close()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", hub.federation_port), timeout=10)
    tls = context.wrap_socket(raw)  # handshake done, then nothing
    tls.sendall(b"GET /_matrix/federation/v1/version HTTP/1.1\r\n")
    started = time.monotonic()
    tls.settimeout(IDLE_TIMEOUT + 4)
    try:
        assert tls.recv(4096) == b""
    except (ssl.SSLError, ConnectionError):
        pass  # closed without a TLS close_notify
    assert time.monotonic() - started <= IDLE_TIMEOUT + 4
    tls.close()


def test_connection_cap_bookkeeping() -> None:
    from matrix_core.client_api.http_listener import ConnectionCap

    cap = ConnectionCap(2)
    assert cap.admit("a") and cap.admit("a") and not cap.admit("a") and cap.admit("b")
    cap.release("a")
    assert cap.admit("a") and not cap.admit("a")
    cap.release("a"), cap.release("a"), cap.release("b")
    assert cap.open == {}
    assert all(ConnectionCap(0).admit("a") for _ in range(100))  # 0: no cap
