"""Backup of a running hub and restore, as a user runs them: the CLI, a real hub, curl-like HTTP.

Bad input (a foreign file, a damaged or truncated backup, a non-empty target, an existing output
file) gets a message naming the problem, a non-zero exit, and nothing is overwritten.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli

SENDS_BEFORE = 20


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str, str]]:
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("bk")) / "data")
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    token = gw.login("alice", PASSWORD)
    status, body = gw.request("POST", "/_matrix/client/v3/createRoom",
                              {"room_alias_name": "kitchen", "name": "Kitchen"}, token)
    assert status == 200, body
    room = body["room_id"]
    for i in range(SENDS_BEFORE):
        assert gw.request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/b{i}",
                          {"msgtype": "m.text", "body": f"reading {i}"}, token)[0] == 200
    yield gw, token, room
    assert gw.stop() == 0, gw.read_log()


def bodies(gw: GatewayProcess, token: str, room: str) -> list[str]:
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000", token=token)
    assert status == 200, body
    return [ev["content"]["body"] for ev in body["chunk"] if ev["type"] == "m.room.message"]


def test_backup_while_writing_then_restore_and_run(hub: tuple[GatewayProcess, str, str], tmp_path: Path) -> None:
    gw, token, room = hub
    stop = threading.Event()
    acked: list[str] = []

    def writer() -> None:  # keeps the hub's writer busy during the snapshot
        i = 0
        while not stop.is_set():
            if gw.request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/w{i}",
                          {"msgtype": "m.text", "body": f"during {i}"}, token)[0] == 200:
                acked.append(f"during {i}")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        out = gateway_cli("backup", str(tmp_path / "hub.backup"), "--data-dir", str(gw.data_dir))
    finally:
        stop.set()
        thread.join()
    assert "backup written" in out.stdout
    archive = tmp_path / "hub.backup"
    assert archive.stat().st_mode & 0o077 == 0  # it holds the private key
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["MANIFEST.json", "homeserver.db", "signing.key", "gateway.toml"]

    target = tmp_path / "restored"
    done = gateway_cli("restore", str(archive), "--data-dir", str(target))
    assert "restored" in done.stdout
    assert (target / "signing.key").read_bytes() == (gw.data_dir / "signing.key").read_bytes()
    assert (target / "gateway.toml").read_text() == (gw.data_dir / "gateway.toml").read_text()
    assert target.stat().st_mode & 0o777 == 0o700
    integrity = subprocess.run(["sqlite3", str(target / "homeserver.db"), "PRAGMA integrity_check"],
                               capture_output=True, text=True, check=True)
    assert integrity.stdout.strip() == "ok"

    with GatewayProcess(target) as copy:
        restored = bodies(copy, copy.login("alice", PASSWORD), room)
    # everything written before the backup, and a consistent prefix of what was written during it
    assert {f"reading {i}" for i in range(SENDS_BEFORE)} <= set(restored)
    during = [b for b in reversed(restored) if b.startswith("during")]
    assert during == acked[:len(during)]


def test_backup_never_overwrites(hub: tuple[GatewayProcess, str, str], tmp_path: Path) -> None:
    gw, _, _ = hub
    existing = tmp_path / "precious"
    existing.write_text("keep me")
    proc = gateway_cli("backup", str(existing), "--data-dir", str(gw.data_dir), check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert existing.read_text() == "keep me"


def test_backup_of_a_dir_without_a_hub(tmp_path: Path) -> None:
    proc = gateway_cli("backup", str(tmp_path / "x.backup"), "--data-dir", str(tmp_path / "nothing"), check=False)
    assert proc.returncode != 0 and "holds no hub" in proc.stderr
    assert not (tmp_path / "x.backup").exists()


@pytest.fixture(scope="module")
def good_backup(hub: tuple[GatewayProcess, str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(tmp_path_factory.mktemp("good")) / "hub.backup"
    gateway_cli("backup", str(out), "--data-dir", str(hub[0].data_dir))
    return out


def rewrite(source: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the archive with members replaced (bytes) or dropped (None), manifest unchanged."""
    with tarfile.open(source) as tar, tarfile.open(dest, "w:gz") as out:
        for member in tar:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                if change[member.name] is None:
                    continue
                data = change[member.name]  # type: ignore[assignment]
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dest


def damaged_db(source: Path) -> bytes:
    with tarfile.open(source) as tar:
        data = bytearray(tar.extractfile("homeserver.db").read())  # type: ignore[union-attr]
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def bad_manifest(source: Path, **fields: object) -> bytes:
    with tarfile.open(source) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    manifest.update(fields)
    return json.dumps(manifest).encode()


@pytest.mark.parametrize("case, expected", [
    ("random bytes", "not a readable matrix-gateway backup"),
    ("foreign tar.gz", "not a matrix-gateway backup"),
    ("truncated", "not a readable matrix-gateway backup"),
    ("damaged database", "does not match its checksum"),
    ("missing key", "missing signing.key"),
    ("newer format", "format version 99"),
    ("plain gzip", "not a readable matrix-gateway backup"),
])
def test_bad_backup_files_are_refused_before_writing(good_backup: Path, tmp_path: Path, case: str,
                                                      expected: str) -> None:
    bad = tmp_path / "bad.backup"
    if case == "random bytes":
        bad.write_bytes(os.urandom(4096))
    elif case == "foreign tar.gz":
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo("etc/passwd")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"root"))
    elif case == "truncated":
        data = good_backup.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif case == "damaged database":
        rewrite(good_backup, bad, {"homeserver.db": damaged_db(good_backup)})
    elif case == "missing key":
        rewrite(good_backup, bad, {"signing.key": None})
    elif case == "newer format":
        rewrite(good_backup, bad, {"MANIFEST.json": bad_manifest(good_backup, version=99)})
    elif case == "plain gzip":
        bad.write_bytes(gzip.compress(b"hello"))
    target = tmp_path / "target"
    proc = gateway_cli("restore", str(bad), "--data-dir", str(target), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.backup"]  # no staging left behind


def test_restore_onto_a_non_empty_dir_overwrites_nothing(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "live"
    target.mkdir()
    (target / "homeserver.db").write_text("someone's hub")
    proc = gateway_cli("restore", str(good_backup), "--data-dir", str(target), check=False)
    assert proc.returncode != 0 and "is not empty" in proc.stderr and "homeserver.db" in proc.stderr
    assert [p.name for p in target.iterdir()] == ["homeserver.db"]
    assert (target / "homeserver.db").read_text() == "someone's hub"


def test_restore_into_an_existing_empty_dir(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    gateway_cli("restore", str(good_backup), "--data-dir", str(target))
    assert sorted(p.name for p in target.iterdir()) == ["gateway.toml", "homeserver.db", "signing.key"]
