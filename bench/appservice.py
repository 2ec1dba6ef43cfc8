#!/usr/bin/env python3
"""Application services (issue 17): delivery to an AS, and what an AS costs events it does not want.

    python bench/appservice.py [--messages 2000] [--senders 1,16] [--filter-events 100000]

* delivery: the hub started with the CLI and one registration; a plain aiohttp server is the AS
  (answers every transaction 200 at once) and its bot is joined to one room; S users (each its
  own account and token, one keep-alive connection) send N messages in all into the room over
  HTTP at once. Figures: events/s delivered (first send to last event received), transactions
  (events per PUT), and the delay from each send's answer to its arrival in a transaction,
  p50/p99.
* filter: the cost the committed-event subscriber adds per event for an AS that wants none of
  them (the MQTT path's concern): `AppServices._on_events` over batches of telemetry events in
  rooms none of its users is in, in ns/event, in-process.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from tests.support.gateway import GatewayProcess, free_port  # noqa: E402

PASSWORD = "bench-password-1"
AS_TOKEN, HS_TOKEN = "bench-as-token", "bench-hs-token"


def registration(port: int) -> str:
    return f"""id: bench
url: http://127.0.0.1:{port}
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: benchbot
rate_limited: false
namespaces:
  users: [{{exclusive: true, regex: '@bench_.*:localhost'}}]
"""


async def delivery(messages: int, senders: int) -> dict[str, float]:
    port = free_port()
    arrived: dict[str, float] = {}
    transactions = 0

    async def on_txn(request: web.Request) -> web.Response:
        nonlocal transactions
        body = await request.json()
        transactions += 1
        now = time.monotonic()
        for ev in body["events"]:
            tag = ev.get("content", {}).get("tag")
            if tag:
                arrived.setdefault(tag, now)
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", on_txn)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "bench.yaml").write_text(registration(port))
        (data / "gateway.toml").write_text('app_service_config_files = ["bench.yaml"]\nmessages_per_second = 0\n')
        gw = GatewayProcess(data)
        gw.start()
        try:
            for i in range(senders):
                gw.add_user(f"user{i}", PASSWORD)
            tokens = [gw.login(f"user{i}", PASSWORD) for i in range(senders)]
            status, room = gw.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                                      token=tokens[0])
            room_id = urllib.parse.quote(room["room_id"])
            for token in tokens[1:] + [AS_TOKEN]:
                assert gw.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, token=token)[0] == 200
            sent: dict[str, float] = {}
            per_sender = messages // senders

            async def send(i: int, token: str) -> None:
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
                    for n in range(per_sender):
                        tag = f"{i}-{n}"
                        url = f"{gw.http_url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{tag}"
                        async with session.put(url, json={"msgtype": "m.text", "body": "x", "tag": tag}) as resp:
                            assert resp.status == 200, await resp.text()
                        sent[tag] = time.monotonic()

            transactions = 0
            started = time.monotonic()
            await asyncio.gather(*(send(i, t) for i, t in enumerate(tokens)))
            total = per_sender * senders
            deadline = time.monotonic() + 60
            while len(arrived) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            finished = max(arrived.values())
            delays = sorted(max(0.0, arrived[t] - sent[t]) * 1000 for t in sent if t in arrived)
        finally:
            gw.stop()
            await runner.cleanup()
    return {"senders": senders, "events": total, "received": len(arrived),
            "events_per_s": total / (finished - started), "transactions": transactions,
            "events_per_txn": len(arrived) / max(1, transactions),
            "delay_p50_ms": statistics.median(delays), "delay_p99_ms": delays[int(len(delays) * 0.99) - 1]}


def filter_cost(events: int) -> float:
    """ns per event that AppServices._on_events spends on events no AS wants."""
    from matrix_core.appservice_rules import parse_registration_yaml
    from matrix_core.events import Event
    from matrix_core.homeserver import Homeserver, HomeserverSettings
    from matrix_core.room_versions import DEFAULT_ROOM_VERSION
    from matrix_core.signing import generate_signing_key

    with tempfile.TemporaryDirectory() as tmp:
        hs = Homeserver(HomeserverSettings("localhost", Path(tmp) / "db", generate_signing_key(),
                                           appservices=(parse_registration_yaml(registration(1), "bench"),)))
        service = hs.appservices

        for reg in service.registrations:  # a sender as start() makes it, without its task's I/O
            from matrix_core.service.appservice import _Sender
            sender = _Sender(reg)
            sender.task = object()  # type: ignore[assignment]
            sender.caught_up = True
            service._senders[reg.id] = sender
        batch = [(i, Event({"type": "m.room.message", "room_id": f"!room{i % 50}:localhost",
                            "sender": f"@sensor{i % 200}:localhost", "content": {"body": "21.5"}},
                           f"$e{i}", DEFAULT_ROOM_VERSION)) for i in range(100)]
        rounds = max(1, events // len(batch))
        started = time.perf_counter()
        for _ in range(rounds):
            service._on_events(batch)
        return (time.perf_counter() - started) / (rounds * len(batch)) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--senders", default="1,16")
    parser.add_argument("--filter-events", type=int, default=100_000)
    args = parser.parse_args()
    print(f"filter: {filter_cost(args.filter_events):.0f} ns per event no AS wants (1 AS registered)")
    for senders in (int(s) for s in args.senders.split(",") if s):
        r = asyncio.run(delivery(args.messages, senders))
        print(f"delivery, {r['senders']} sender(s): {r['received']}/{r['events']} events, {r['events_per_s']:.0f} "
              f"events/s delivered, {r['transactions']} transactions ({r['events_per_txn']:.1f} events each), "
              f"delay send->transaction p50 {r['delay_p50_ms']:.1f} ms, p99 {r['delay_p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
