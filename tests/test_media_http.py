"""The content repository over raw HTTP (issue 15): upload, async upload, authenticated download
and thumbnails, config, the frozen unauthenticated paths, headers, limits and bad input, against
the hub started with its CLI (urllib as the client; raw sockets where urllib would fix the path)."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from matrix_core import media_rules
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

UPLOAD = "/_matrix/media/v3/upload"
AUTH = "/_matrix/client/v1/media"
MAX_MB = 2
QUOTA_MB = 3


def call(gw: GatewayProcess, method: str, path: str, data: bytes | None = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"{gw.http_url}{path}", data=data, method=method)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def upload(gw: GatewayProcess, token: str, data: bytes, content_type: str = "application/octet-stream",
           filename: str | None = None) -> tuple[int, Any]:
    path = UPLOAD + (f"?filename={urllib.request.quote(filename)}" if filename else "")
    status, _, body = call(gw, "POST", path, data, token, {"Content-Type": content_type})
    return status, json.loads(body)


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def media_path(mxc: str) -> str:
    server, media_id = media_rules.parse_mxc(mxc)
    return f"{server}/{media_id}"


def media_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "media").glob("??/??/*")]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = Path(tmp_path_factory.mktemp("media")) / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "gateway.toml").write_text(f"max_upload_size_mb = {MAX_MB}\nmedia_quota_per_user_mb = {QUOTA_MB}\n"
                                           'admin_contact = "mailto:owner@example.org"\n')
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    gw.add_user("bob", PASSWORD)
    gw.add_user("carol", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


@pytest.fixture(scope="module")
def alice(hub: GatewayProcess) -> str:
    return hub.login("alice", PASSWORD)


@pytest.fixture(scope="module")
def bob(hub: GatewayProcess) -> str:
    return hub.login("bob", PASSWORD)


# -- pure rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type, name, expected", [
    ("image/png", "cat.png", "inline; filename=cat.png"),
    ("image/jpeg; charset=x", None, "inline"),
    ("text/html", "page.html", "attachment; filename=page.html"),
    ("image/svg+xml", "x.svg", "attachment; filename=x.svg"),
    ("application/octet-stream", "naïve file.bin", "attachment; filename*=utf-8''na%C3%AFve%20file.bin"),
])
def test_content_disposition_inline_only_for_safe_types(content_type: str, name: str | None, expected: str) -> None:
    assert media_rules.content_disposition(content_type, name) == expected


@pytest.mark.parametrize("source, w, h, method, size, box", [
    ((800, 600), 96, 96, "scale", (96, 72), None),
    ((800, 600), 96, 96, "crop", (128, 96), (16, 0, 112, 96)),
    ((40, 30), 96, 96, "scale", (40, 30), None),  # never enlarged
    ((40, 30), 96, 96, "crop", (40, 30), (0, 0, 40, 30)),
])
def test_thumbnail_geometry(source: tuple[int, int], w: int, h: int, method: str, size: tuple[int, int],
                            box: tuple[int, int, int, int] | None) -> None:
    assert media_rules.thumbnail_geometry(source, w, h, method) == (size, box)


@pytest.mark.parametrize("bad", ["..", "a/b", "a\\b", "x\x00y", "x\ny", "a" * 256])
def test_file_names_with_path_tricks_are_refused(bad: str) -> None:
    with pytest.raises(Exception) as exc:
        media_rules.check_filename(bad)
    assert getattr(exc.value, "errcode", None) == "M_INVALID_PARAM"


# -- upload and download ---------------------------------------------------------------------------

def test_upload_then_download_with_spec_headers(hub: GatewayProcess, alice: str, bob: str) -> None:
    data = png(64, 48)
    status, body = upload(hub, alice, data, "image/png", "boiler photo.png")
    assert status == 200, body
    mxc = body["content_uri"]
    assert mxc.startswith("mxc://localhost/")
    # durable before acknowledged: the file is there, named by its sha256
    assert (hub.data_dir / "media" / "ab").parent.is_dir()
    sha = hashlib.sha256(data).hexdigest()
    assert (hub.data_dir / "media" / sha[:2] / sha[2:4] / sha).read_bytes() == data
    # any user of the hub may download it, with the token
    status, headers, got = call(hub, "GET", f"{AUTH}/download/{media_path(mxc)}", token=bob)
    assert status == 200 and got == data
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == "inline; filename*=utf-8''boiler%20photo.png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"] and "default-src 'none'" in headers["Content-Security-Policy"]
    # the file name in the path wins
    status, headers, got = call(hub, "GET", f"{AUTH}/download/{media_path(mxc)}/other.png", token=bob)
    assert status == 200 and headers["Content-Disposition"] == "inline; filename=other.png" and got == data


def test_unsafe_types_are_attachments(hub: GatewayProcess, alice: str) -> None:
    status, body = upload(hub, alice, b"<script>alert(1)</script>", "text/html", "x.html")
    assert status == 200
    status, headers, got = call(hub, "GET", f"{AUTH}/download/{media_path(body['content_uri'])}", token=alice)
    assert status == 200 and got == b"<script>alert(1)</script>"
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_download_needs_a_token_and_the_legacy_paths_are_frozen(hub: GatewayProcess, alice: str) -> None:
    status, body = upload(hub, alice, b"hello", "text/plain")
    path = media_path(body["content_uri"])
    status, _, raw = call(hub, "GET", f"{AUTH}/download/{path}")
    assert status == 401 and json.loads(raw)["errcode"] == "M_MISSING_TOKEN"
    for legacy in (f"/_matrix/media/v3/download/{path}", f"/_matrix/media/v3/thumbnail/{path}?width=32&height=32",
                   f"/_matrix/media/r0/download/{path}"):
        status, _, raw = call(hub, "GET", legacy, token=alice)
        assert status == 404 and json.loads(raw)["errcode"] == "M_NOT_FOUND", legacy
    status, _, raw = call(hub, "POST", UPLOAD, b"x")
    assert status == 401


def test_config_announces_the_upload_limit(hub: GatewayProcess, alice: str) -> None:
    for path in (f"{AUTH}/config", "/_matrix/media/v3/config"):
        status, _, raw = call(hub, "GET", path, token=alice)
        assert status == 200 and json.loads(raw) == {"m.upload.size": MAX_MB << 20}


def test_unknown_media_and_path_tricks_are_not_found(hub: GatewayProcess, alice: str) -> None:
    for path in ("localhost/doesnotexist", "localhost/..%2F..%2Fhomeserver.db", "localhost/a.b",
                 "other.example/abc"):
        status, _, raw = call(hub, "GET", f"{AUTH}/download/{path}", token=alice)
        assert status == 404 and json.loads(raw)["errcode"] == "M_NOT_FOUND", path
    # a file name with a separator in the download path
    status, body = upload(hub, alice, b"abc", "text/plain")
    status, _, raw = call(hub, "GET", f"{AUTH}/download/{media_path(body['content_uri'])}/..%2Fx", token=alice)
    assert status == 400 and json.loads(raw)["errcode"] == "M_INVALID_PARAM"
    status, body = upload(hub, alice, b"abc", "text/plain", "../../etc/passwd")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"


def test_raw_dot_segments_do_not_escape(hub: GatewayProcess, alice: str) -> None:
    """urllib would normalise `..`: a raw socket sends it as is."""
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=10) as sock:
        sock.sendall(f"GET {AUTH}/download/localhost/../../../homeserver.db HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {alice}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n", 1)[0]
    assert b" 404 " in head or b" 400 " in head, answer[:300]
    assert b"SQLite format" not in answer


# -- limits ----------------------------------------------------------------------------------------

def test_oversize_upload_is_413_and_nothing_is_kept(hub: GatewayProcess, bob: str) -> None:
    before = set(media_files(hub.data_dir))
    status, body = upload(hub, bob, b"\0" * ((MAX_MB << 20) + 1))
    assert status == 413 and body["errcode"] == "M_TOO_LARGE"
    assert set(media_files(hub.data_dir)) == before
    assert not list((hub.data_dir / "media" / "tmp").iterdir())


def test_a_body_longer_than_declared_limit_is_cut_off(hub: GatewayProcess, bob: str) -> None:
    """Chunked transfer: no Content-Length to refuse up front, the count stops it."""
    def gen() -> Iterator[bytes]:
        for _ in range(MAX_MB * 4 + 4):
            yield b"\1" * (256 * 1024)

    before = set(media_files(hub.data_dir))
    req = urllib.request.Request(f"{hub.http_url}{UPLOAD}", data=gen(), method="POST",
                                 headers={"Authorization": f"Bearer {bob}", "Transfer-Encoding": "chunked",
                                          "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (ConnectionError, urllib.error.URLError):  # the hub may close while we still send
        status, raw = 413, b'{"errcode": "M_TOO_LARGE"}'
    assert status == 413 and json.loads(raw)["errcode"] == "M_TOO_LARGE"
    assert set(media_files(hub.data_dir)) == before


def test_quota_per_user(hub: GatewayProcess) -> None:
    token = hub.login("carol", PASSWORD)
    one_mb = b"q" * (1 << 20)
    for i in range(QUOTA_MB):
        status, body = upload(hub, token, one_mb[:-1] + bytes([i]))
        assert status == 200, body
    status, body = upload(hub, token, b"one more")
    assert status == 403 and body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED"
    assert body["admin_contact"] == "mailto:owner@example.org"


# -- async upload ----------------------------------------------------------------------------------

def test_async_upload_create_put_and_wait(hub: GatewayProcess, alice: str, bob: str) -> None:
    status, _, raw = call(hub, "POST", "/_matrix/media/v1/create", token=alice)
    assert status == 200
    created = json.loads(raw)
    assert created["unused_expires_at"] > time.time() * 1000
    path = media_path(created["content_uri"])
    # not uploaded yet: 504 M_NOT_YET_UPLOADED after timeout_ms
    status, _, raw = call(hub, "GET", f"{AUTH}/download/{path}?timeout_ms=200", token=bob)
    assert status == 504 and json.loads(raw)["errcode"] == "M_NOT_YET_UPLOADED"
    # someone else may not fill it
    status, _, raw = call(hub, "PUT", f"/_matrix/media/v3/upload/{path}", b"mine", bob, {"Content-Type": "text/plain"})
    assert status == 403 and json.loads(raw)["errcode"] == "M_FORBIDDEN"
    # a download waiting for it gets it as soon as it is uploaded
    result: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: result.update(
        answer=call(hub, "GET", f"{AUTH}/download/{path}?timeout_ms=20000", token=bob)))
    waiter.start()
    time.sleep(0.3)  # let the download start waiting (it would also pass if it came after the upload)
    status, _, raw = call(hub, "PUT", f"/_matrix/media/v3/upload/{path}?filename=late.txt", b"arrived",
                          alice, {"Content-Type": "text/plain"})
    assert status == 200 and json.loads(raw) == {}
    waiter.join(30)
    status, headers, got = result["answer"]
    assert status == 200 and got == b"arrived" and headers["Content-Disposition"] == "inline; filename=late.txt"
    status, _, raw = call(hub, "PUT", f"/_matrix/media/v3/upload/{path}", b"again", alice)
    assert status == 409 and json.loads(raw)["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"


# -- thumbnails ------------------------------------------------------------------------------------

def test_thumbnails_scale_and_crop_and_are_cached(hub: GatewayProcess, alice: str) -> None:
    status, body = upload(hub, alice, jpeg(640, 480), "image/jpeg", "snap.jpg")
    path = media_path(body["content_uri"])
    status, headers, got = call(hub, "GET", f"{AUTH}/thumbnail/{path}?width=96&height=96&method=scale", token=alice)
    assert status == 200, got
    assert headers["Content-Type"] == "image/jpeg" and headers["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(got)).size == (96, 72)
    status, headers, got = call(hub, "GET", f"{AUTH}/thumbnail/{path}?width=96&height=96&method=crop", token=alice)
    assert status == 200 and Image.open(io.BytesIO(got)).size == (96, 96)
    files = set(media_files(hub.data_dir))
    status, _, again = call(hub, "GET", f"{AUTH}/thumbnail/{path}?width=96&height=96&method=crop", token=alice)
    assert status == 200 and again == got and set(media_files(hub.data_dir)) == files  # cached, not made again
    status, _, got = call(hub, "GET", f"{AUTH}/thumbnail/{path}?width=32&height=32&animated=true", token=alice)
    assert status == 200 and max(Image.open(io.BytesIO(got)).size) == 32


def test_png_thumbnail(hub: GatewayProcess, alice: str) -> None:
    status, body = upload(hub, alice, png(300, 100), "image/png")
    status, headers, got = call(hub, "GET", f"{AUTH}/thumbnail/{media_path(body['content_uri'])}?width=60&height=60",
                                token=alice)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(got)).size == (60, 20)


@pytest.mark.parametrize("data, content_type", [
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 100, "image/png"),  # corrupt image
    (b"just text", "text/plain"),  # not an image
    (b"GIF89a", "image/gif"),  # truncated
])
def test_bad_thumbnail_sources_are_a_clear_400(hub: GatewayProcess, alice: str, data: bytes, content_type: str) -> None:
    status, body = upload(hub, alice, data, content_type)
    status, _, raw = call(hub, "GET", f"{AUTH}/thumbnail/{media_path(body['content_uri'])}?width=32&height=32",
                          token=alice)
    assert status == 400 and json.loads(raw)["errcode"] == "M_UNKNOWN", raw
    assert "Traceback" not in hub.read_log()


def test_decompression_bomb_is_refused(hub: GatewayProcess, alice: str) -> None:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpx in a few kB
    status, body = upload(hub, alice, buf.getvalue(), "image/png")
    assert status == 200
    rss = hub.rss_bytes()
    status, _, raw = call(hub, "GET", f"{AUTH}/thumbnail/{media_path(body['content_uri'])}?width=32&height=32",
                          token=alice)
    assert status == 400 and json.loads(raw)["errcode"] == "M_UNKNOWN"
    assert hub.rss_bytes() < rss + (50 << 20)


@pytest.mark.parametrize("query", ["width=0&height=10", "width=x&height=10", "height=10",
                                   "width=10&height=10&method=stretch", "width=10&height=10&animated=maybe"])
def test_thumbnail_parameters_are_checked(hub: GatewayProcess, alice: str, query: str) -> None:
    status, body = upload(hub, alice, png(10, 10), "image/png")
    status, _, raw = call(hub, "GET", f"{AUTH}/thumbnail/{media_path(body['content_uri'])}?{query}", token=alice)
    assert status == 400, raw


def test_preview_url_is_a_clear_unrecognized(hub: GatewayProcess, alice: str) -> None:
    status, _, raw = call(hub, "GET", f"{AUTH}/preview_url?url=http://example.org", token=alice)
    assert status == 404 and json.loads(raw)["errcode"] == "M_UNRECOGNIZED"


def test_media_config_keys_are_checked_and_written() -> None:
    import tomllib

    from gateway.config import ConfigError, GatewayConfig, render, validate

    rendered = tomllib.loads(render(GatewayConfig()))
    assert (rendered["max_upload_size_mb"], rendered["media_quota_per_user_mb"], rendered["media_quota_total_mb"]) \
        == (50, 0, 0)
    assert validate({"max_upload_size_mb": 10, "media_quota_total_mb": 500}, "t") == {
        "max_upload_size_mb": 10, "media_quota_total_mb": 500}
    for bad in ({"max_upload_size_mb": 0}, {"max_upload_size_mb": 5000}, {"media_quota_per_user_mb": -1},
                {"media_quota_total_mb": "1G"}):
        with pytest.raises(ConfigError):
            validate(bad, "t")
