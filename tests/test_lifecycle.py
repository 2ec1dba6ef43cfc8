"""Start-up and shut-down as a user sees them: first run, SIGTERM with writes in flight."""
from __future__ import annotations

import asyncio
import signal
import urllib.parse

import aiohttp

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess


def test_first_run_creates_data_dir_with_private_key(tmp_path) -> None:
    data = tmp_path / "fresh"
    with GatewayProcess(data) as gw:
        assert (data / "gateway.toml").exists()
        assert (data / "homeserver.db").exists()
        key = data / "signing.key"
        assert key.stat().st_mode & 0o077 == 0
        assert key.read_text().startswith("ed25519 ")
        secret = key.read_text().split()[2]
        assert secret not in gw.read_log()
        assert 'bind = "127.0.0.1"' in (data / "gateway.toml").read_text()
        assert "enable_registration = false" in (data / "gateway.toml").read_text()


async def _send_until_stopped(gw: GatewayProcess, token: str, room: str) -> tuple[list[str], int]:
    """Send from 16 clients; SIGTERM the hub after 100 acknowledgements. Returns acknowledged ids."""
    acked: list[str] = []
    failures = 0
    q = urllib.parse.quote(room, safe="")
    stopping = asyncio.Event()

    async def sender(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal failures
        i = 0
        while True:
            i += 1
            url = f"{gw.http_url}/_matrix/client/v3/rooms/{q}/send/m.room.message/s{n}-{i}"
            try:
                async with session.put(url, json={"msgtype": "m.text", "body": f"{n}-{i}"},
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
                    if resp.status == 200:
                        acked.append((await resp.json())["event_id"])
                        if len(acked) == 100:
                            stopping.set()
                    else:
                        failures += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the hub has gone away

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(sender(n, session)) for n in range(16)]
        await stopping.wait()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return acked, failures


def test_sigterm_with_writes_in_flight_exits_0_and_loses_nothing(tmp_path) -> None:
    data = tmp_path / "data"
    (data).mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0\n")  # no rate limit for this load
    gw = GatewayProcess(data)
    gw.start()
    gw.add_user("erin", PASSWORD)
    token = gw.login("erin", PASSWORD)
    status, created = gw.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200
    room = created["room_id"]
    acked, _ = asyncio.run(_send_until_stopped(gw, token, room))
    assert gw.proc.wait(10) == 0, gw.read_log()
    gw.stop()
    assert len(acked) >= 100
    gw.start()
    try:
        token = gw.login("erin", PASSWORD)
        q = urllib.parse.quote(room, safe="")
        status, page = gw.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=1000", token=token)
        assert status == 200
        stored = {ev["event_id"] for ev in page["chunk"]}
        missing = [e for e in acked if e not in stored]
        assert not missing, f"{len(missing)} acknowledged events lost"
    finally:
        assert gw.stop() == 0


def test_commit_window_batches_writes_and_acknowledges_only_after_commit(tmp_path) -> None:
    """With `commit_window_ms` the writer gathers concurrent writes into one commit; every send
    still answers only once its event is stored."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0\ncommit_window_ms = 5\n")
    with GatewayProcess(data) as gw:
        gw.add_user("fay", PASSWORD)
        token = gw.login("fay", PASSWORD)
        status, created = gw.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
        room = urllib.parse.quote(created["room_id"], safe="")

        async def burst() -> list[str]:
            async with aiohttp.ClientSession() as session:
                async def one(i: int) -> str:
                    async with session.put(f"{gw.http_url}/_matrix/client/v3/rooms/{room}/send/m.room.message/w{i}",
                                           json={"body": str(i)}, headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 200
                        return (await r.json())["event_id"]
                return await asyncio.gather(*(one(i) for i in range(24)))

        ids = asyncio.run(burst())
        status, page = gw.request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100", token=token)
        assert set(ids) <= {ev["event_id"] for ev in page["chunk"]}
    from tests.support.gateway import gateway_cli

    (data / "gateway.toml").write_text("commit_window_ms = 5000\n")
    refused = gateway_cli("run", "--data-dir", str(data), check=False)
    assert refused.returncode != 0 and "commit_window_ms must be between 0 and 1000" in refused.stderr
