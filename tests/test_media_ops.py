"""Media in the hub's operations (issue 15): `status` counts media, retention removes the media
purged events point at (only the sender's own uploads), `backup`/`restore` carry the files."""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli
from tests.test_media_http import AUTH, call, media_path, upload


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("media-ops")) / "data")
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    gw.add_user("bob", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def file_of(gw: GatewayProcess, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return gw.data_dir / "media" / sha[:2] / sha[2:4] / sha


def send(gw: GatewayProcess, token: str, room: str, txn: str, content: dict) -> str:
    status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{txn}",
                              content, token=token)
    assert status == 200, body
    return body["event_id"]


def test_status_counts_media(hub: GatewayProcess) -> None:
    alice = hub.login("alice", PASSWORD)
    before = json.loads(gateway_cli("status", "--data-dir", str(hub.data_dir), "--json").stdout)
    assert upload(hub, alice, b"s" * 1000, "application/octet-stream")[0] == 200
    assert upload(hub, alice, b"t" * 500, "application/octet-stream")[0] == 200
    info = json.loads(gateway_cli("status", "--data-dir", str(hub.data_dir), "--json").stdout)
    assert info["media_count"] == before["media_count"] + 2
    assert info["media_bytes"] == before["media_bytes"] + 1500
    text = gateway_cli("status", "--data-dir", str(hub.data_dir)).stdout
    assert f"media:      {info['media_count']} files" in text


def test_purge_removes_the_media_of_purged_events(hub: GatewayProcess) -> None:
    alice, bob = hub.login("alice", PASSWORD), hub.login("bob", PASSWORD)
    status, room = hub.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=alice)
    room_id = room["room_id"]
    assert hub.request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", {}, token=bob)[0] == 200
    photo, kept, others = b"photo of the boiler", b"not in any event", b"alice's, posted by bob"
    photo_uri = upload(hub, alice, photo, "image/png", "boiler.png")[1]["content_uri"]
    kept_uri = upload(hub, alice, kept, "text/plain")[1]["content_uri"]
    others_uri = upload(hub, alice, others, "text/plain")[1]["content_uri"]
    send(hub, alice, room_id, "img", {"msgtype": "m.image", "body": "boiler.png", "url": photo_uri,
                                      "info": {"mimetype": "image/png"}})
    send(hub, bob, room_id, "file", {"msgtype": "m.file", "body": "x", "url": others_uri})
    time.sleep(1.1)  # the purge below takes events older than 1 s
    send(hub, alice, room_id, "after", {"msgtype": "m.text", "body": "newest, kept"})
    for data in (photo, kept, others):  # as if uploaded long ago (young files are spared by the sweep)
        old = time.time() - 7200
        os.utime(file_of(hub, data), (old, old))
    proc = gateway_cli("purge", "--data-dir", str(hub.data_dir), "--room", room_id, "--older-than", "1s")
    assert "deleted 2 events" in proc.stdout, proc.stdout
    status, _, raw = call(hub, "GET", f"{AUTH}/download/{media_path(photo_uri)}", token=bob)
    assert status == 404 and json.loads(raw)["errcode"] == "M_NOT_FOUND"
    assert not file_of(hub, photo).exists()
    # media no purged event pointed at, and media a purged event pointed at but its sender did not upload, stay
    for uri, data in ((kept_uri, kept), (others_uri, others)):
        status, _, got = call(hub, "GET", f"{AUTH}/download/{media_path(uri)}", token=bob)
        assert status == 200 and got == data
        assert file_of(hub, data).exists()


def test_backup_and_restore_carry_media(hub: GatewayProcess, tmp_path: Path) -> None:
    alice = hub.login("alice", PASSWORD)
    data = b"\x89PNG snapshot from the doorbell" * 100
    uri = upload(hub, alice, data, "image/png", "door.png")[1]["content_uri"]
    archive = tmp_path / "hub.backup"
    gateway_cli("backup", str(archive), "--data-dir", str(hub.data_dir))
    target = tmp_path / "restored"
    gateway_cli("restore", str(archive), "--data-dir", str(target))
    sha = hashlib.sha256(data).hexdigest()
    assert (target / "media" / sha[:2] / sha[2:4] / sha).read_bytes() == data
    with GatewayProcess(target) as restored:
        token = restored.login("alice", PASSWORD)
        status, headers, got = call(restored, "GET", f"{AUTH}/download/{media_path(uri)}", token=token)
        assert status == 200 and got == data and headers["Content-Disposition"] == "inline; filename=door.png"


def test_a_backup_with_a_damaged_media_file_is_refused(hub: GatewayProcess, tmp_path: Path) -> None:
    import io
    import tarfile

    alice = hub.login("alice", PASSWORD)
    upload(hub, alice, b"to be damaged", "text/plain")
    archive = tmp_path / "hub.backup"
    gateway_cli("backup", str(archive), "--data-dir", str(hub.data_dir))
    bad = tmp_path / "bad.backup"
    with tarfile.open(archive) as tar, tarfile.open(bad, "w:gz") as out:
        for member in tar:
            blob = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("media/"):
                blob = blob[:-1] + bytes([blob[-1] ^ 1])
            info = tarfile.TarInfo(member.name)
            info.size = len(blob)
            out.addfile(info, io.BytesIO(blob))
    proc = gateway_cli("restore", str(bad), "--data-dir", str(tmp_path / "target"), check=False)
    assert proc.returncode != 0 and "does not match its checksum" in proc.stderr
    assert not (tmp_path / "target").exists()
