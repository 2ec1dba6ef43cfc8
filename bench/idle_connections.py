#!/usr/bin/env python3
"""Resident memory with many idle MQTT connections (issue 20): the hub beside mosquitto.

    python bench/idle_connections.py [--connections 2000] [--only gateway|mosquitto]

Each connection is a raw TCP socket that sends one MQTT 3.1.1 CONNECT with a username and
secret (keepalive 0: never pinged; the hub's secret is a device access token, as a sensor's
would be: a password costs an scrypt each, ~0.13 s here, and mosquitto's its own hash), reads its CONNACK and stays open. The connections come
from 20 loopback source addresses (127.0.0.2 ...), as a house of devices would come from many,
so the hub's per-address cap (mqtt_max_connections_per_address, default 100) is exercised as
deployed, not switched off. Prints RSS before, with all connections open, and after they closed.

Nothing here runs in the test suite: it opens thousands of sockets.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gateway import GatewayProcess, free_port  # noqa: E402

USER, PASSWORD = "idle", "idle connections passphrase"
SOURCES = [f"127.0.0.{i}" for i in range(2, 22)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def connect_packet(client_id: str, secret: str) -> bytes:
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    variable = s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0)  # 3.1.1, user+password+clean, keepalive 0
    payload = s(client_id) + s(USER) + s(secret)
    body = variable + payload
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x10]) + bytes(length) + body


async def open_idle(port: int, count: int, secret: str) -> tuple[list[asyncio.StreamWriter], int]:
    """Open `count` authenticated idle connections; returns them and how many were refused."""
    writers: list[asyncio.StreamWriter] = []
    refused = 0
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        nonlocal refused
        async with sem:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                               local_addr=(SOURCES[i % len(SOURCES)], 0))
                writer.write(connect_packet(f"idle-{i}", secret))
                ack = await asyncio.wait_for(reader.readexactly(4), 20)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                refused += 1
                return
            if ack[0] != 0x20 or ack[3] != 0:
                refused += 1
                writer.close()
                return
            writers.append(writer)

    await asyncio.gather(*(one(i) for i in range(count)))
    return writers, refused


def measure(name: str, pid: int, port: int, count: int, secret: str) -> None:
    before = rss_mb(pid)

    async def run() -> tuple[float, int, int]:
        started = time.monotonic()
        writers, refused = await open_idle(port, count, secret)
        opened_s = time.monotonic() - started
        await asyncio.sleep(2.0)  # let the broker settle (timers, buffers) before reading RSS
        during = rss_mb(pid)
        for w in writers:
            w.close()
        print(f"{name:10} {len(writers):6d} open ({refused} refused) in {opened_s:5.1f} s; "
              f"RSS idle {before:6.1f} MB, with them {during:6.1f} MB "
              f"(+{(during - before) * 1024 / max(1, len(writers)):.1f} KB each)", flush=True)
        return during, len(writers), refused

    asyncio.run(run())
    time.sleep(2.0)
    print(f"{name:10} after they closed: RSS {rss_mb(pid):6.1f} MB", flush=True)


def run_gateway(count: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="idle-gw-")) / "data"
    data.mkdir(parents=True)
    with GatewayProcess(data) as gw:
        gw.add_user(USER, PASSWORD)
        measure("gateway", gw.pid, gw.mqtt_port, count, gw.device_token(USER, "idle"))


def run_mosquitto(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="idle-mosq-"))
    passwords = tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), USER, PASSWORD], check=True)
    tmp.chmod(0o755)  # mosquitto started as root reads it as the `mosquitto` user
    passwords.chmod(0o644)
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 0.0.0.0\nallow_anonymous false\npassword_file {passwords}\n"
                    "max_connections -1\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        measure("mosquitto", proc.pid, port, count, PASSWORD)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--only", choices=["gateway", "mosquitto"])
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the bench's own sockets
    if args.only != "mosquitto":
        run_gateway(args.connections)
    if args.only != "gateway":
        if shutil.which("mosquitto"):
            run_mosquitto(args.connections)
        else:
            print("mosquitto not installed: skipped")


if __name__ == "__main__":
    main()
