"""`matrix-gateway status` and retention (`purge` and the hub's periodic task), run as a user would."""
from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.ops.retention import purge_periodically
from matrix_core.store.database import Database
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli

READINGS = 10


class Hub:
    def __init__(self, gw: GatewayProcess, token: str) -> None:
        self.gw, self.token = gw, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.gw.request(method, f"/_matrix/client/v3{path}", body, self.token)
        assert status == 200, (path, answer)
        return answer

    def room_with_readings(self, alias: str, retention_ms: int | None) -> str:
        room = self.call("POST", "/createRoom", {"room_alias_name": alias, "name": alias.title()})["room_id"]
        if retention_ms is not None:
            self.call("PUT", f"/rooms/{room}/state/m.room.retention/", {"max_lifetime": retention_ms})
        for i in range(READINGS):
            self.call("PUT", f"/rooms/{room}/send/m.room.message/{alias}{i}", {"msgtype": "m.text", "body": f"t={i}"})
        return room

    def readings(self, room: str) -> list[str]:
        chunk = self.call("GET", f"/rooms/{room}/messages?dir=b&limit=100")["chunk"]
        return [ev["content"]["body"] for ev in chunk if ev["type"] == "m.room.message"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("ops")) / "data")
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    yield Hub(gw, gw.login("alice", PASSWORD))
    assert gw.stop() == 0, gw.read_log()


def test_status_of_a_running_hub(hub: Hub) -> None:
    hub.room_with_readings("status", None)
    proc = gateway_cli("status", "--data-dir", str(hub.gw.data_dir), "--json")
    info = json.loads(proc.stdout)
    assert info["running"] is True and info["server_name"] == "localhost"
    assert info["users"] == 1 and info["rooms"] >= 1 and info["events"] >= READINGS
    assert info["schema_versions"]["core"] >= 1
    text = gateway_cli("status", "--data-dir", str(hub.gw.data_dir)).stdout
    assert "running (answered in" in text and "1 users" in text


def test_status_of_a_stopped_hub_exits_3(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gw:
        pass
    proc = gateway_cli("status", "--data-dir", str(gw.data_dir), check=False)
    assert proc.returncode == 3 and "not running" in proc.stdout


def test_status_without_a_hub(tmp_path: Path) -> None:
    proc = gateway_cli("status", "--data-dir", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and "holds no hub" in proc.stderr


def test_purge_keeps_state_and_rooms_without_retention(hub: Hub) -> None:
    purged = hub.room_with_readings("garden", retention_ms=1)
    kept = hub.room_with_readings("attic", retention_ms=None)
    dry = gateway_cli("purge", "--dry-run", "--data-dir", str(hub.gw.data_dir))
    assert f"{purged}: would delete {READINGS - 1} events" in dry.stdout
    assert len(hub.readings(purged)) == READINGS  # a dry run deletes nothing

    done = gateway_cli("purge", "--data-dir", str(hub.gw.data_dir))
    assert f"{purged}: deleted {READINGS - 1} events" in done.stdout
    # the newest reading (the room's forward extremity) stays; the other room is untouched
    assert hub.readings(purged) == [f"t={READINGS - 1}"]
    assert len(hub.readings(kept)) == READINGS
    # room state survives: name, membership, the retention setting; the room still works
    assert hub.call("GET", f"/rooms/{purged}/state/m.room.name/")["name"] == "Garden"
    assert "@alice:localhost" in hub.call("GET", f"/rooms/{purged}/joined_members")["joined"]
    assert hub.call("GET", f"/rooms/{purged}/state/m.room.retention/")["max_lifetime"] == 1
    hub.call("PUT", f"/rooms/{purged}/send/m.room.message/after", {"msgtype": "m.text", "body": "after"})
    assert hub.readings(purged)[0] == "after"
    sync = hub.call("GET", "/sync?timeout=0")
    timeline = sync["rooms"]["join"][purged]["timeline"]["events"]
    assert [ev["content"]["body"] for ev in timeline if ev["type"] == "m.room.message"][-1] == "after"
    state_types = {ev["type"] for ev in sync["rooms"]["join"][purged]["state"]["events"] + timeline}
    assert "m.room.create" in state_types or "m.room.name" in state_types
    integrity = sqlite3.connect(hub.gw.data_dir / "homeserver.db").execute("PRAGMA integrity_check").fetchone()
    assert integrity == ("ok",)


def test_purge_bad_input(hub: Hub) -> None:
    data = str(hub.gw.data_dir)
    bad_age = gateway_cli("purge", "--older-than", "5x", "--data-dir", data, check=False)
    assert bad_age.returncode != 0 and "'5x'" in bad_age.stderr
    no_room = gateway_cli("purge", "--room", "#nowhere:localhost", "--older-than", "1d", "--data-dir", data,
                          check=False)
    assert no_room.returncode != 0 and "no such room" in no_room.stderr
    no_age = gateway_cli("purge", "--room", "#attic:localhost", "--data-dir", data, check=False)
    assert no_age.returncode != 0 and "--older-than" in no_age.stderr


def test_purge_one_room_by_alias(hub: Hub) -> None:
    room = hub.room_with_readings("cellar", retention_ms=None)
    done = gateway_cli("purge", "--room", "#cellar:localhost", "--older-than", "1h", "--dry-run",
                       "--data-dir", str(hub.gw.data_dir))
    # readings are younger than an hour (a second was too short on a loaded machine): nothing to
    # delete, and nothing deleted
    assert "would delete 0 events" in done.stdout and len(hub.readings(room)) == READINGS


class SignallingDb:
    """The real Database, telling the test when the periodic task finished a pass (a write found 0)."""

    def __init__(self, db: Database) -> None:
        self.db, self.pass_done = db, asyncio.Event()

    async def write(self, fn: Any) -> Any:
        result = await self.db.write(fn)
        if result == 0:
            self.pass_done.set()
        return result


async def test_the_hub_purges_periodically(hub: Hub, tmp_path: Path) -> None:
    room = hub.room_with_readings("shed", retention_ms=1)
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(hub.gw.data_dir / "homeserver.db")
    with sqlite3.connect(copy) as out:
        src.backup(out)
    src.close()
    db = Database(copy)
    await db.open()
    try:
        signalling = SignallingDb(db)
        task = asyncio.create_task(purge_periodically(signalling, 0, 0.01, lambda: 2**50))  # type: ignore[arg-type]
        await asyncio.wait_for(signalling.pass_done.wait(), 10)
        task.cancel()
        left = await db.fetchall("SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message'", (room,))
        assert left == [(1,)]
    finally:
        await db.close()
    shutil.rmtree(tmp_path, ignore_errors=True)
