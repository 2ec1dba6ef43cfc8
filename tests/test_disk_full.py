"""A full disk (issue 20, D2): every protocol answers with a clear storage error, the log says it
once a minute, nothing acknowledged is lost or half-written, writes resume when space is back,
and a hub that cannot start on a full disk exits at once with one line.

The end-to-end tests run the hub with its data dir on a real, tiny tmpfs mounted in the hub's own
mount namespace (tests/support/full_disk.py: works as root and, through a user namespace, as an
ordinary user) and fill it for real. The store's own tests fill the database with SQLite's
`max_page_count`, the same SQLITE_FULL through the same code path, in milliseconds.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import aiocoap
import cbor2
import paho.mqtt.client as mqtt
import pytest

from frontends.mqtt.full_disk import HoldBack
from gateway.config import ConfigError, load_config
from gateway.ops.disk import LowSpace
from matrix_core import errors
from matrix_core.store import disk_space
from matrix_core.store.database import Database
from tests.conftest import PASSWORD
from tests.support import full_disk
from tests.support.gateway import REPO_ROOT, GatewayProcess, gateway_cli
from tests.test_coap_e2e import coap_client
from tests.test_mqtt_peers import Paho, mosquitto_pub

TMPFS_BYTES = 4 << 20
MAX_SENDS = 60  # writes tried after filling before the WAL's slack is used up and one is refused
ADMIN = "mailto:owner@example.org"

# ---------------------------------------------------------------------------------------------
# pure parts: which errors mean a full disk, the log's rate, the low-space warning, MQTT hold-back
# ---------------------------------------------------------------------------------------------


def _sqlite_error(code: int, message: str) -> sqlite3.Error:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize("exc, room, full", [
    (_sqlite_error(13, "database or disk is full"), False, True),  # SQLITE_FULL
    (sqlite3.OperationalError("database or disk is full"), False, True),  # no code: by its message
    (_sqlite_error(4874, "disk I/O error"), True, False),  # SQLITE_IOERR_SHMSIZE with room: a real I/O error
    (_sqlite_error(4874, "disk I/O error"), False, True),  # ... on a full disk
    (_sqlite_error(14, "unable to open database file"), False, True),  # SQLITE_CANTOPEN, no inode left
    (_sqlite_error(14, "unable to open database file"), True, False),
    (_sqlite_error(1, "no such table: x"), False, False),
    (_sqlite_error(19, "UNIQUE constraint failed"), False, False),
    (OSError(errno.ENOSPC, "No space left on device"), True, True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True, True),
    (OSError(errno.EACCES, "Permission denied"), False, False),
    (errors.storage_full(), True, True),
    (ValueError("x"), False, False),
])
def test_which_errors_mean_a_full_disk(exc: BaseException, room: bool, full: bool) -> None:
    assert disk_space.means_full(exc, lambda: not room) is full


def test_storage_full_is_507_resource_limit_exceeded() -> None:
    err = errors.storage_full()
    assert isinstance(err, errors.MatrixError) and err.status == 507
    body = err.to_json()
    assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED" and "full" in body["error"]
    assert body["retry_after_ms"] == errors.STORAGE_RETRY_MS and body["admin_contact"] == ""
    assert errors.storage_full("mailto:admin@example.org").to_json()["admin_contact"] == "mailto:admin@example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_full_disk_log_says_it_once_a_minute_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    storage = disk_space.FullDiskLog(tmp_path / "db", clock=clock)
    caplog.set_level(logging.INFO, logger="matrix_core.store.disk_space")
    for _ in range(5000):  # a fleet's writes for 50 s
        storage.refused(1)
        clock.now += 0.01
    assert storage.full and len(caplog.records) == 1
    assert "disk full" in caplog.records[0].message and "HTTP 507" in caplog.records[0].message
    clock.now += 10.5  # a minute after the first line
    storage.tick()
    assert len(caplog.records) == 2 and "4999 writes refused" in caplog.records[1].message
    storage.stored()  # space is back, but within the minute: said at the next tick that may
    storage.tick()
    assert len(caplog.records) == 2 and not storage.full
    clock.now += 60.0
    storage.tick()
    storage.tick()
    assert len(caplog.records) == 3 and "space is back" in caplog.records[2].message
    assert "5000 were refused" in caplog.records[2].message
    clock.now += 3600.0
    storage.tick()  # nothing new: nothing said
    assert len(caplog.records) == 3 and storage.refused_total == 5000


def test_low_space_warning_at_most_hourly() -> None:
    low = LowSpace(100)
    assert not low.should_warn(200_000_000, 0.0) and not low.should_warn(None, 0.0)
    assert low.should_warn(99_000_000, 10.0)
    assert not low.should_warn(1_000, 20.0) and not low.should_warn(1_000, 3609.0)
    assert low.should_warn(1_000, 3610.0)
    assert not LowSpace(0).should_warn(0, 0.0)  # 0 turns the warning off


def test_mqtt_hold_back_lasts_while_full_and_not_longer() -> None:
    hold = HoldBack(60.0, limit=3)
    client = ("@a:hub", "sensor")
    assert not hold.holds(client, 0.0, disk_full=True)
    hold.refused(client, 0.0)
    assert hold.holds(client, 30.0, disk_full=True)
    assert not hold.holds(("@b:hub", "sensor"), 30.0, disk_full=True)
    assert not hold.holds(client, 31.0, disk_full=False) and len(hold) == 0  # a write succeeded: let in
    hold.refused(client, 100.0)
    assert not hold.holds(client, 160.0, disk_full=True)  # expired: let in to try once more
    for i in range(10):
        hold.refused(("@a:hub", f"c{i}"), 200.0 + i)
    assert len(hold) <= 3


def test_disk_warn_free_mb_is_a_checked_setting(tmp_path: Path) -> None:
    assert load_config(tmp_path, None, {}, create=True).disk_warn_free_mb == 100
    assert "disk_warn_free_mb = 100" in (tmp_path / "gateway.toml").read_text()
    (tmp_path / "gateway.toml").write_text("disk_warn_free_mb = -1\n")
    with pytest.raises(ConfigError, match="disk_warn_free_mb"):
        load_config(tmp_path, None, {}, create=False)


# ---------------------------------------------------------------------------------------------
# the store: SQLITE_FULL through max_page_count
# ---------------------------------------------------------------------------------------------


def _pair(n: int, size: int) -> Any:
    """One write of two rows: both are stored or neither."""
    def write(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO readings (n, body) VALUES (?, ?)", (n, b"r" * size))
        conn.execute("INSERT INTO readings (n, body) VALUES (?, ?)", (-n, b"r" * size))
        return n
    return write


async def test_store_refuses_whole_writes_when_full_and_keeps_working(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = Database(tmp_path / "db.sqlite")
    await db.open()
    try:
        await db.write(lambda c: c.execute("CREATE TABLE readings (n INTEGER, body BLOB)"))
        row = await db.fetchone("PRAGMA page_count")
        assert row is not None
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count = {row[0] + 12}"))
        acked: list[int] = []
        refused = 0
        for n in range(1, 200):
            try:
                acked.append(await db.write(_pair(n, 3000)))
            except errors.StorageFull as exc:
                assert exc.status == 507 and exc.errcode == "M_RESOURCE_LIMIT_EXCEEDED"
                refused += 1
                if refused == 3:
                    break
        assert acked and refused == 3 and db.storage.full
        # writes queued together while full: all refused, none half-stored
        outcomes = await asyncio.gather(*(db.submit(_pair(1000 + i, 3000)) for i in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(o, errors.StorageFull) for o in outcomes), outcomes
        stored = sorted(n for (n,) in await db.fetchall("SELECT n FROM readings"))
        assert stored == sorted(acked + [-n for n in acked])  # every acknowledged pair, nothing else
        assert (await db.fetchone("PRAGMA integrity_check")) == ("ok",)

        await db.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))  # space is back
        assert await db.write(_pair(5000, 3000)) == 5000
        assert not db.storage.full
        assert sorted(await db.fetchall("SELECT n FROM readings WHERE abs(n) = 5000")) == [(-5000,), (5000,)]
        assert db.storage.refused_total == 8
    finally:
        await db.close()
    lines = [r for r in caplog.records if r.name == "matrix_core.store.disk_space"]
    assert [r.levelname for r in lines] == ["ERROR", "WARNING"], [r.message for r in lines]  # full; at close: back
    assert "8 were refused" in lines[1].message
    assert not [r for r in caplog.records if r.name != "matrix_core.store.disk_space" and r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------------------------
# the hub on a real full filesystem
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with alice, a device token for CoAP and a room #disk (copied per test)."""
    data_dir = Path(tmp_path_factory.mktemp("disk")) / "data"
    with GatewayProcess(data_dir) as gw:
        gw.add_user("alice", PASSWORD)
        token = gw.device_token("alice", "sensor")
        status, body = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "disk"}, token=token)
        assert status == 200, body
        (data_dir.parent / "facts.json").write_text(json.dumps({"token": token, "room": body["room_id"]}))
    config = data_dir / "gateway.toml"
    config.write_text(config.read_text().replace('admin_contact = ""', f'admin_contact = "{ADMIN}"'))
    return data_dir


def _copy(prepared: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path / "data"
    shutil.copytree(prepared, data_dir)
    return data_dir, json.loads((prepared.parent / "facts.json").read_text())


@pytest.fixture
def hub_on_tmpfs(prepared: Path, tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path, dict[str, str]]]:
    data_dir, facts = _copy(prepared, tmp_path)
    gw = GatewayProcess(data_dir)
    gw.wrapper = full_disk.wrapper(data_dir, TMPFS_BYTES)
    gw.start()
    try:
        yield gw, full_disk.seen_from(gw.pid, data_dir), facts
    finally:
        gw.stop()


def _send(gw: GatewayProcess, token: str, room: str, txn: str, body: str = "reading") -> tuple[int, Any]:
    return gw.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{txn}",
                      {"msgtype": "m.text", "body": body}, token=token)


def _bodies(gw: GatewayProcess, token: str, room: str) -> list[str]:
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?dir=b&limit=500",
                              token=token)
    assert status == 200, body
    return [ev["content"].get("body", "") for ev in body["chunk"] if ev["type"] == "m.room.message"]


async def _coap_post(uri: str, payload: dict[str, Any]) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        return await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=cbor2.dumps(payload))).response
    finally:
        await ctx.shutdown()


def test_full_disk_answers_on_every_protocol_logs_once_and_recovers(
        hub_on_tmpfs: tuple[GatewayProcess, Path, dict[str, str]]) -> None:
    gw, view, facts = hub_on_tmpfs
    token, room = facts["token"], facts["room"]
    coap_send = f"coap://127.0.0.1:{gw.coap_port}/_m/c/a/v1/r/%23disk:localhost/s/m.room.message?a={token}"
    v5 = Paho(gw.mqtt_port, "alice", PASSWORD, "disk-v5", protocol=mqtt.MQTTv5)
    v3 = Paho(gw.mqtt_port, "alice", PASSWORD, "disk-v311")
    v3.client.reconnect_delay_set(1, 1)
    sub5 = Paho(gw.mqtt_port, "alice", PASSWORD, "disk-sub5", protocol=mqtt.MQTTv5, clean=False, session_expiry=300)
    late5 = Paho(gw.mqtt_port, "alice", PASSWORD, "disk-late5", protocol=mqtt.MQTTv5, session_expiry=300)
    acks5: list[int] = []
    v5.client.on_publish = lambda c, u, mid, rc, props: acks5.append(rc.value)
    try:
        assert v5.connect()[1] == 0 and v3.connect()[1] == 0 and sub5.connect()[1] == 0
        v5.publish("disk/sensor/t", b"before", qos=1)  # the MQTT room exists before the disk fills
        assert acks5 == [0]
        acked = ["before-0"]
        assert _send(gw, token, room, "b0", "before-0")[0] == 200

        full_disk.fill(view)
        assert full_disk.free_bytes(view) == 0
        # HTTP: the WAL's slack takes a few more writes, then 507 with a clear errcode
        for i in range(MAX_SENDS):
            status, body = _send(gw, token, room, f"f{i}", f"full-{i}" + "x" * 4000)
            if status != 200:
                break
            acked.append(f"full-{i}" + "x" * 4000)
        assert status == 507, (status, body)
        assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED" and body["retry_after_ms"] == 60_000, body
        assert body["admin_contact"] == ADMIN and "storage is full" in body["error"], body
        assert _send(gw, token, room, "f-again", "refused")[0] == 507

        # CoAP: 5.03 Service Unavailable, a CBOR diagnostic and Max-Age (aiocoap, libcoap)
        resp = asyncio.run(_coap_post(coap_send, {"msgtype": "m.text", "body": "coap-refused"}))
        assert resp.code == aiocoap.SERVICE_UNAVAILABLE and resp.opt.max_age == 60, (resp.code, resp.payload)
        assert cbor2.loads(resp.payload)["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED"
        _, err = coap_client("-m", "post", "-f", "-", coap_send, payload=cbor2.dumps({"body": "coap-refused"}))
        assert err.startswith("5.03 ") and "M_RESOURCE_LIMIT_EXCEEDED" in err, err

        # MQTT 5: PUBACK 0x97 Quota exceeded, and the connection stays
        v5.publish("disk/sensor/t", b"v5-refused", qos=1)
        assert acks5 == [0, 0x97]
        # MQTT 5, persistent sessions: what cannot be saved is refused, not half-granted
        assert [code.value for code in sub5.subscribe("disk/other/#", 1)] == [0x97]
        assert late5.connect()[1] == 0x97
        # MQTT 3.1.1: no PUBACK for what was not stored: closed once, then CONNACK 0x03 while full
        kept = v3.client.publish("disk/sensor/t", b"v311-kept", qos=1)
        assert v3.disconnects.get(timeout=10) is not None
        assert not kept.is_published()
        refused = v3.connack.get(timeout=10)[1]  # paho reconnects by itself
        assert refused.is_failure and refused.getName() == "Server unavailable", refused
        proc = mosquitto_pub(gw.mqtt_port, "alice", PASSWORD, "disk/sensor/t", "mosq", 1, "-i", "disk-v311",
                             check=False)
        assert proc.returncode != 0 and b"unavailable" in proc.stderr.lower(), proc.stderr

        db = view / "homeserver.db"
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        full_disk.free(view)  # space is back: the next write succeeds, and then everything does
        assert _send(gw, token, room, "after", "after")[0] == 200
        acked.append("after")
        kept.wait_for_publish(10)  # paho got in again and resent it
        assert kept.is_published()
        later = [v3.connack.get_nowait()[1] for _ in range(v3.connack.qsize())]  # refused until space was back
        assert later[-1] == 0 and all(rc.getName() == "Server unavailable" for rc in later[:-1]), later
        v5.publish("disk/sensor/t", b"v5-after", qos=1)
        assert acks5 == [0, 0x97, 0]
        assert [code.value for code in sub5.subscribe("disk/other/#", 1)] == [1]
        resp = asyncio.run(_coap_post(coap_send, {"msgtype": "m.text", "body": "coap-after"}))
        assert resp.code == aiocoap.CHANGED
        acked.append("coap-after")
    finally:
        for client in (v5, v3, sub5, late5):
            client.disconnect()

    bodies = _bodies(gw, token, room)
    assert set(acked) <= set(bodies) and not {"refused", "coap-refused"} & set(bodies)
    status, body = gw.request("GET", "/_matrix/client/v3/directory/room/%23mqtt%2Fdisk%2Fsensor%3Alocalhost")
    assert status == 200, body
    mqtt_bodies = [b.split(": ", 1)[1] for b in _bodies(gw, token, body["room_id"])]
    assert sorted(mqtt_bodies) == ["before", "v311-kept", "v5-after"], mqtt_bodies
    with sqlite3.connect(view / "homeserver.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert gw.stop() == 0
    log = gw.log_path().read_text()
    assert "Traceback" not in log, log[-3000:]
    full_lines = [line for line in log.splitlines() if "disk full" in line or "disk still full" in line]
    assert len(full_lines) == 1 and f"disk holding {gw.data_dir}" in full_lines[0], full_lines
    assert " ERROR " not in log.replace(full_lines[0], ""), log[-3000:]
    assert len([line for line in log.splitlines() if "low disk space" in line]) == 1  # 4 MB < 100 MB
    assert "disk space is back" in log


def _run_to_exit(gw: GatewayProcess) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([*gw.wrapper, sys.executable, "-m", "gateway", *gw.run_args()], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)
    return proc, time.monotonic() - started


@pytest.mark.parametrize("leave, files, where", [
    (0, -1, "opening the database (no byte free)"),
    (-1, 2, "writing hub.address (no inode free)"),
])
def test_start_on_a_full_disk_exits_75_with_one_line(prepared: Path, tmp_path: Path, leave: int, files: int,
                                                      where: str) -> None:
    data_dir, _ = _copy(prepared, tmp_path)
    gw = GatewayProcess(data_dir)
    gw.wrapper = full_disk.wrapper(data_dir, TMPFS_BYTES, leave, files)
    proc, seconds = _run_to_exit(gw)
    assert proc.returncode == 75, (where, proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert seconds < 10 and "ready" not in proc.stdout, (seconds, proc.stdout)
    lines = proc.stderr.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: cannot start: no space left on the disk holding "
                                                       f"{data_dir}"), (where, proc.stderr[-3000:])


def test_status_shows_free_space_and_warns_below_the_threshold(prepared: Path, tmp_path: Path) -> None:
    data_dir, _ = _copy(prepared, tmp_path)
    info = json.loads(gateway_cli("status", "--data-dir", str(data_dir), "--json", check=False).stdout)
    assert isinstance(info["disk_free_bytes"], int) and info["disk_free_bytes"] > 0
    assert info["disk_warn_free_mb"] == 100
    config = data_dir / "gateway.toml"
    config.write_text(config.read_text().replace("disk_warn_free_mb = 100", "disk_warn_free_mb = 1000000000"))
    proc = gateway_cli("status", "--data-dir", str(data_dir), check=False)
    assert proc.returncode == 3  # not running, but the figures are shown
    disk = [line for line in proc.stdout.splitlines() if line.startswith("disk:")]
    assert len(disk) == 1 and "MB free" in disk[0] and "WARNING: below disk_warn_free_mb = 1000000000" in disk[0]
    assert json.loads(gateway_cli("status", "--data-dir", str(data_dir), "--json", check=False).stdout)["disk_low"]
    config.write_text(config.read_text().replace("disk_warn_free_mb = 1000000000", "disk_warn_free_mb = 0"))
    proc = gateway_cli("status", "--data-dir", str(data_dir), check=False)
    assert "WARNING" not in proc.stdout


def test_systemd_keeps_restarting_a_hub_that_cannot_start() -> None:
    """Exit 75 on a full disk is retried until space is back: no start limit that gives up."""
    lines = (REPO_ROOT / "systemd" / "matrix-gateway.service").read_text().splitlines()
    assert "Restart=on-failure" in lines and "StartLimitIntervalSec=0" in lines
    assert not [line for line in lines if line.startswith(("RestartPreventExitStatus=", "SuccessExitStatus="))]
