"""RSS of the hub holding CoAP observations, before and after a few room messages (issue 20, R1).

    .venv/bin/python bench/coap_observe.py [--devices 125] [--per-device 16] [--messages 5]
                                           [--body 0] [--silent]

The hub is started through the CLI (GatewayProcess) with its defaults (16 observations per
client, 2,000 in the hub). Each device is a bare UDP client (asyncio datagrams, CON requests built
by hand) with its own access token (a password login) and socket; it registers `--per-device`
observations with distinct CoAP tokens, half on /sync and half on the room's /messages, and ACKs
every confirmable notification. A room message is sent over HTTP; the next one goes once every
observer has its notification. `--silent`: the devices stop ACKing once registered (a device gone
without a word, or an attacker), and each message gets a fixed 5 s instead. `--devices 1
--per-device 10000`: the report's attack, one token opening 10,000 observations.
Prints RSS (VmRSS of the hub process) before any observation, with all registered, after each
message, and the observations the hub answered with Observe / without / ended (4.29).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap.numbers.types import Type

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "bench password"


def datagram(mtype: Type, mid: int, code: Any, token: bytes = b"", **options: Any) -> bytes:
    msg = aiocoap.Message(code=code, **options)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg.encode()


class Device(asyncio.DatagramProtocol):
    def __init__(self, name: int, silent: bool) -> None:
        self.name = name
        self.silent = silent
        self.registered = False
        self.first: dict[bytes, aiocoap.Message] = {}
        self.notes = 0
        self.ended = 0
        self.changed = asyncio.Event()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = aiocoap.Message.decode(data)
        if msg.mtype == Type.CON and not (self.silent and self.registered):
            self.transport.sendto(datagram(Type.ACK, msg.mid, aiocoap.EMPTY))
        if msg.code == aiocoap.EMPTY:
            return
        if msg.token not in self.first:
            self.first[msg.token] = msg
        elif msg.code == aiocoap.TOO_MANY_REQUESTS:
            self.ended += 1
        else:
            self.notes += 1
        self.changed.set()


async def wait_until(devices: list[Device], done: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for d in devices:
            d.changed.clear()
        waiters = [asyncio.ensure_future(d.changed.wait()) for d in devices]
        await asyncio.wait(waiters, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
    return True


async def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="coap-observe-")) / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "gateway.toml").write_text("messages_per_second = 0\n")
    gw = GatewayProcess(data_dir)
    gw.start()
    try:
        gw.add_user("alice", PASSWORD, admin=True)
        owner = gw.login("alice", PASSWORD)
        status, body = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "bench"}, token=owner)
        assert status == 200, body
        room_id = body["room_id"]
        tokens = [gw.login("alice", PASSWORD) for _ in range(args.devices)]
        rss0 = gw.rss_bytes()
        print(f"hub RSS before observations: {rss0 / 1e6:.1f} MB")
        loop = asyncio.get_running_loop()
        devices: list[Device] = []
        for i, token in enumerate(tokens):
            _, device = await loop.create_datagram_endpoint(lambda i=i: Device(i, args.silent),
                                                            remote_addr=("127.0.0.1", gw.coap_port))
            devices.append(device)
        started = time.monotonic()
        window = 16  # registrations in flight (per device, one device at a time: no burst is lost)
        for device, token in zip(devices, tokens):
            for base in range(0, args.per_device, window):
                batch = {}
                for n in range(base, min(base + window, args.per_device)):
                    if n % 2 == 0:
                        path, query = ("_m", "c", "v3", "sy"), (f"a={token}", "fi={}")
                    else:
                        path, query = ("_m", "c", "v3", "r", "#bench:localhost", "m"), (f"a={token}", "l=1")
                    batch[n.to_bytes(4, "big")] = datagram(Type.CON, n & 0xFFFF, aiocoap.GET, n.to_bytes(4, "big"),
                                                           observe=0, uri_path=path, uri_query=query)
                for attempt in range(4):  # CoAP's own retransmission, for a datagram a full buffer dropped
                    for tok, data in batch.items():
                        if tok not in device.first:
                            device.transport.sendto(data)
                    if await wait_until([device], lambda d=device, b=batch: all(t in d.first for t in b), 3):
                        break
        total = args.devices * args.per_device
        await wait_until(devices, lambda: sum(len(d.first) for d in devices) >= total, 120)
        with_observe = sum(1 for d in devices for m in d.first.values() if m.opt.observe is not None)
        without = sum(1 for d in devices for m in d.first.values()
                      if m.opt.observe is None and m.code == aiocoap.CONTENT)
        for d in devices:
            d.registered = True
        rss1 = gw.rss_bytes()
        print(f"{total} registrations in {time.monotonic() - started:.1f} s: {with_observe} with Observe, "
              f"{without} answered without; hub RSS {rss1 / 1e6:.1f} MB "
              f"(+{(rss1 - rss0) / 1e6:.1f} MB, {(rss1 - rss0) / max(1, total) / 1e3:.1f} KB per registration)")
        held = with_observe - sum(d.ended for d in devices)  # those a cap ended already said so
        print(f"held by the hub: {held}")
        for j in range(args.messages):
            before = sum(d.notes for d in devices)
            t0 = time.monotonic()
            status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b{j}",
                                      {"msgtype": "m.text", "body": f"reading {j} " + "x" * args.body}, token=owner)
            assert status == 200, body
            if args.silent:
                await asyncio.sleep(5)
            else:
                await wait_until(devices, lambda: sum(d.notes for d in devices) - before >= held, 60)
            got = sum(d.notes for d in devices) - before
            print(f"message {j + 1}: {got} notifications in {time.monotonic() - t0:.2f} s; "
                  f"hub RSS {gw.rss_bytes() / 1e6:.1f} MB")
        ended = sum(d.ended for d in devices)
        print(f"ended by the per-client cap (4.29): {ended}; hub RSS at the end {gw.rss_bytes() / 1e6:.1f} MB")
    finally:
        gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=125)
    parser.add_argument("--per-device", type=int, default=16)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--body", type=int, default=0, help="extra bytes in each message body")
    parser.add_argument("--silent", action="store_true", help="devices stop ACKing once registered")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
