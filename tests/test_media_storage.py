"""Media storage (issue 15): a disk that fills mid-upload leaves no partial file and acknowledges
nothing (the hub's data dir on a real tiny tmpfs, tests/support/full_disk.py), and a 50 MB upload
streams to disk without the hub's memory growing by more than 20 MB."""
from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PASSWORD
from tests.support import full_disk
from tests.support.gateway import GatewayProcess

UPLOAD = "/_matrix/media/v3/upload"
TMPFS_BYTES = 8 << 20


def post(gw: GatewayProcess, token: str, data: bytes | Iterator[bytes], length: int | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    req = urllib.request.Request(f"{gw.http_url}{UPLOAD}", data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def stored_files(media_dir: Path) -> list[Path]:
    return [p for p in media_dir.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = Path(tmp_path_factory.mktemp("media-disk")) / "data"
    with GatewayProcess(data_dir) as gw:
        gw.add_user("alice", PASSWORD)
        token = gw.login("alice", PASSWORD)
        (data_dir.parent / "token").write_text(token)
    return data_dir


def test_full_disk_mid_upload_leaves_no_partial_file(prepared: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(prepared, data_dir)
    token = (prepared.parent / "token").read_text()
    gw = GatewayProcess(data_dir)
    gw.wrapper = full_disk.wrapper(data_dir, TMPFS_BYTES)
    gw.start()
    try:
        view = full_disk.seen_from(gw.pid, data_dir)
        status, body = post(gw, token, b"small before", 12)
        assert status == 200, body
        before = stored_files(view / "media")
        full_disk.fill(view, leave=512 << 10)
        status, body = post(gw, token, b"\x07" * (3 << 20), 3 << 20)  # 3 MB into 512 kB free
        assert status == 507, body
        assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED" and "storage is full" in body["error"]
        assert stored_files(view / "media") == before  # no partial file, not even in media/tmp
        full_disk.free(view)
        status, body = post(gw, token, b"\x07" * (3 << 20), 3 << 20)  # space back: stored
        assert status == 200, body
        assert "Traceback" not in gw.read_log()
    finally:
        gw.stop()


def test_a_50_mb_upload_streams(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gw:
        gw.add_user("alice", PASSWORD)
        token = gw.login("alice", PASSWORD)
        post(gw, token, b"warm up", 7)
        baseline = gw.rss_bytes()
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], gw.rss_bytes())

        sampler = threading.Thread(target=sample)
        sampler.start()

        def body() -> Iterator[bytes]:
            block = bytes(range(256)) * 4096  # 1 MiB
            for _ in range(50):
                yield block

        try:
            status, answer = post(gw, token, body())
        finally:
            done.set()
            sampler.join()
        assert status == 200, answer
        grew = peak[0] - baseline
        assert grew < 20 << 20, f"RSS grew by {grew / 2**20:.1f} MB during a 50 MB upload"
        files = [p for p in (gw.data_dir / "media").glob("??/??/*")]
        assert sorted(p.stat().st_size for p in files) == [7, 50 << 20]


# -- the core interface the device front ends call (MQTT/CoAP payloads as media) --------------------

async def test_store_bytes_and_read_bytes(tmp_path: Path) -> None:
    from matrix_core import errors
    from matrix_core.homeserver import Homeserver, HomeserverSettings
    from matrix_core.signing import generate_signing_key

    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key(), max_upload_bytes=1000,
                                       media_quota_per_user_bytes=1500))
    await hs.start()
    try:
        payload = b'{"devices": []}' * 10
        uri = await hs.media.store_bytes("@cam:hub", payload, "application/json", "bridge-devices.json")
        assert uri.startswith("mxc://hub/")
        assert await hs.media.read_bytes(uri) == (payload, "application/json")
        assert await hs.media.read_bytes("mxc://hub/unknown") is None
        assert await hs.media.read_bytes("mxc://hub/../db") is None
        assert await hs.media.read_bytes("not a uri") is None
        with pytest.raises(errors.MatrixError) as too_large:
            await hs.media.store_bytes("@cam:hub", b"x" * 1001, "image/jpeg", None)
        assert too_large.value.errcode == "M_TOO_LARGE" and too_large.value.status == 413
        await hs.media.store_bytes("@cam:hub", b"y" * 1000, "image/jpeg", None)
        with pytest.raises(errors.MatrixError) as quota:
            await hs.media.store_bytes("@cam:hub", b"z" * 500, "image/jpeg", None)
        assert quota.value.errcode == "M_RESOURCE_LIMIT_EXCEEDED"
        assert await hs.media.store_bytes("@other:hub", b"z" * 500, "image/jpeg", None)  # quotas are per user
        assert not list((tmp_path / "media" / "tmp").iterdir())
    finally:
        await hs.stop()


async def test_created_media_that_expired_are_not_found_and_dropped(tmp_path: Path) -> None:
    from matrix_core import errors
    from matrix_core.homeserver import Homeserver, HomeserverSettings
    from matrix_core.signing import generate_signing_key
    from matrix_core.store import media as media_rows

    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))
    await hs.start()
    try:
        stale = media_rows.MediaRow("hub", "stale", "@a:hub", "application/octet-stream", None, 0, None, 1, 2)
        await hs.db.write(lambda conn: media_rows.insert_media(conn, stale))
        with pytest.raises(errors.MatrixError) as missing:
            await hs.media.find("hub", "stale", timeout_ms=10_000)  # expired: at once, no waiting
        assert missing.value.errcode == "M_NOT_FOUND"
        uri, _ = await hs.media.create("@a:hub")
        assert await media_rows.get_media(hs.db, "hub", "stale") is None
        assert await media_rows.get_media(hs.db, "hub", uri.rsplit("/", 1)[1]) is not None
    finally:
        await hs.stop()
