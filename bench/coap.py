"""Persisted CoAP POSTs/s with 32 in flight: the gateway beside a trivial aiocoap server (the ceiling).

    .venv/bin/python bench/coap.py [--requests 6000] [--in-flight 32]

One load generator for both: a bare UDP client (asyncio datagrams, confirmable POSTs built by
hand, piggybacked or separate responses, retransmission after 2 s), so the client is not the
bottleneck. The gateway is started through the CLI (GatewayProcess) with the default durability
(sqlite_synchronous = FULL) and its per-user rate limit off (messages_per_second = 0, written to
gateway.toml before the first start); every request is the seed's short-path POST with a CBOR
body and no Content-Format. "Persisted" is checked afterwards by counting the room's events in
the database. The trivial server is aiocoap answering every POST with a small CBOR body, in its
own process. Targets: >= 2,000 persisted events/s and >= 50% of the trivial server.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cbor2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.gateway import GatewayProcess, free_port  # noqa: E402

TRIVIAL_SERVER = r"""
import asyncio, sys
import aiocoap, aiocoap.resource as resource, cbor2

class Echo(resource.Resource, resource.PathCapable):
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=cbor2.dumps({"event_id": "$" + "x" * 43}),
                               content_format=60)

async def main():
    await aiocoap.Context.create_server_context(Echo(), bind=("127.0.0.1", int(sys.argv[1])), transports=["udp6"])
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


def encode_options(path: list[str], query: list[str]) -> bytes:
    """Uri-Path (11) and Uri-Query (15) options, already in order."""
    out = bytearray()
    last = 0
    for number, value in [(11, seg.encode()) for seg in path] + [(15, q.encode()) for q in query]:
        delta, length = number - last, len(value)
        last = number
        head_d, ext_d = (delta, b"") if delta < 13 else (13, bytes([delta - 13]))
        if length < 13:
            head_l, ext_l = length, b""
        elif length < 269:
            head_l, ext_l = 13, bytes([length - 13])
        else:
            head_l, ext_l = 14, struct.pack("!H", length - 269)
        out += bytes([head_d << 4 | head_l]) + ext_d + ext_l + value
    return bytes(out)


class LoadGenerator(asyncio.DatagramProtocol):
    """Keeps `in_flight` confirmable POSTs outstanding until `total` got a 2.xx answer."""

    def __init__(self, options: bytes, payload: bytes, total: int, in_flight: int) -> None:
        self.options, self.payload = options, payload
        self.total, self.in_flight = total, in_flight
        self.sent = 0
        self.ok = 0
        self.errors: dict[int, int] = {}
        self.separate = 0  # answers that came as empty ACK + separate response (slow answers)
        self.pending: dict[bytes, tuple[bytes, float]] = {}  # token -> (datagram, sent at)
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for _ in range(self.in_flight):
            self.send_next()
        asyncio.get_running_loop().create_task(self.retransmit())

    def send_next(self) -> None:
        if self.sent >= self.total:
            return
        self.sent += 1
        self.mid = (self.mid + 1) & 0xFFFF
        token = struct.pack("!I", self.sent)
        # ver 1, CON, TKL 4 | code 0.02 POST | message id
        datagram = bytes([0x44, 0x02]) + struct.pack("!H", self.mid) + token + self.options + b"\xff" + self.payload
        self.pending[token] = (datagram, time.monotonic())
        assert self.transport is not None
        self.transport.sendto(datagram)

    def datagram_received(self, data: bytes, addr: object) -> None:
        mtype = (data[0] >> 4) & 3
        tkl = data[0] & 0x0F
        code = data[1]
        if mtype == 0:  # CON (a separate response): ACK it
            assert self.transport is not None
            self.transport.sendto(bytes([0x60, 0x00]) + data[2:4])
        if code == 0:
            self.separate += 1
            return  # empty ACK: the answer follows separately
        token = data[4:4 + tkl]
        if self.pending.pop(token, None) is None:
            return  # duplicate
        if code >> 5 == 2:
            self.ok += 1
        else:
            self.errors[code] = self.errors.get(code, 0) + 1
        if self.ok + sum(self.errors.values()) >= self.total:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.send_next()

    async def retransmit(self) -> None:
        while not self.done.done():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            assert self.transport is not None
            for token, (datagram, sent_at) in list(self.pending.items()):
                if now - sent_at > 2.0:
                    self.pending[token] = (datagram, now)
                    self.transport.sendto(datagram)


async def run_load(port: int, path: list[str], query: list[str], payload: bytes, total: int,
                   in_flight: int) -> tuple[float, LoadGenerator]:
    loop = asyncio.get_running_loop()
    options = encode_options(path, query)
    started = time.perf_counter()
    transport, gen = await loop.create_datagram_endpoint(
        lambda: LoadGenerator(options, payload, total, in_flight), remote_addr=("127.0.0.1", port))
    try:
        await asyncio.wait_for(gen.done, 300)
    finally:
        transport.close()
    return time.perf_counter() - started, gen


def bench_gateway(total: int, in_flight: int, synchronous: str = "FULL") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / "gateway.toml").write_text(f'messages_per_second = 0\nsqlite_synchronous = "{synchronous}"\n')
        with GatewayProcess(data_dir) as gw:
            gw.add_user("bench", "bench password 1234")
            token = gw.device_token("bench", "sensor")
            status, room = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "b"}, token=token)
            assert status == 200, room
            path = ["_m", "c", "a", "v1", "r", "#b:localhost", "s", "m.room.message"]
            payload = cbor2.dumps({"msgtype": "m.text", "body": "21.5 C", "t": 21.5})
            asyncio.run(run_load(gw.coap_port, path, [f"a={token}"], payload, 300, in_flight))  # warm-up
            elapsed, gen = asyncio.run(run_load(gw.coap_port, path, [f"a={token}"], payload, total, in_flight))
            rss = gw.rss_bytes()
            conn = sqlite3.connect(f"file:{data_dir / 'homeserver.db'}?mode=ro", uri=True)
            stored = conn.execute("SELECT count(*) FROM events WHERE room_id = ? AND type = 'm.room.message'",
                                  (room["room_id"],)).fetchone()[0]
            conn.close()
            assert gw.stop() == 0
    if gen.errors:
        print(f"  gateway errors: { {f'{c >> 5}.{c & 31:02d}': n for c, n in gen.errors.items()} }")
    persisted = stored - 300  # minus the warm-up
    assert persisted == gen.ok, (persisted, gen.ok)
    return {"rate": persisted / elapsed, "ok": gen.ok, "elapsed": elapsed, "rss_mb": rss / 2**20,
            "separate": gen.separate}


def bench_trivial(total: int, in_flight: int) -> dict[str, float]:
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        path = ["_m", "c", "a", "v1", "r", "#b:localhost", "s", "m.room.message"]
        payload = cbor2.dumps({"msgtype": "m.text", "body": "21.5 C", "t": 21.5})
        asyncio.run(run_load(port, path, ["a=0123456789abcdef"], payload, 300, in_flight))
        elapsed, gen = asyncio.run(run_load(port, path, ["a=0123456789abcdef"], payload, total, in_flight))
    finally:
        proc.terminate()
        proc.wait()
    if gen.errors:
        print(f"  trivial errors: { {f'{c >> 5}.{c & 31:02d}': n for c, n in gen.errors.items()} }")
    return {"rate": gen.ok / elapsed, "ok": gen.ok, "elapsed": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"],
                        help="the gateway's sqlite_synchronous (FULL is the default durability)")
    args = parser.parse_args()
    print(f"CoAP POST, CBOR body, {args.in_flight} in flight, {args.requests} requests each "
          f"({os.cpu_count()} CPUs)")
    trivial = bench_trivial(args.requests, args.in_flight)
    print(f"  trivial aiocoap server : {trivial['rate']:7.0f} answers/s ({trivial['ok']} in {trivial['elapsed']:.2f} s)")
    gateway = bench_gateway(args.requests, args.in_flight, args.synchronous)
    print(f"  matrix-gateway         : {gateway['rate']:7.0f} persisted events/s ({gateway['ok']} in "
          f"{gateway['elapsed']:.2f} s; sqlite_synchronous={args.synchronous}; RSS after {gateway['rss_mb']:.1f} MB; "
          f"{gateway['separate']} empty ACK + separate answers)")
    ratio = gateway["rate"] / trivial["rate"]
    print(f"  gateway / trivial      : {ratio:7.0%}")
    verdict = "meets" if gateway["rate"] >= 2000 and ratio >= 0.5 else "MISSES"
    print(f"  target >= 2,000/s and >= 50% of trivial: {verdict}")


if __name__ == "__main__":
    main()
