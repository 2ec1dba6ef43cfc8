"""matrix-commander (PyPI ``matrix-commander``, a real command-line Matrix client built on matrix-nio) and the
content repository (issue 15): it logs in non-interactively (``--login password``, credentials and store in
files we name), sends a JPEG with ``-i`` and a PDF with ``-f`` to a room of the CLI-started hub; a second
client (alice, raw HTTP) sees an ``m.image`` and an ``m.file`` event and downloads both through the
authenticated ``GET /_matrix/client/v1/media/download/...``.

matrix-commander always uploads encrypted attachments (``encrypt=True``: the event carries ``file`` with
the AES key, IV and the ciphertext's sha256 instead of ``url``), so "byte-identical" is checked twice: the
download's sha256 is the one in the event (the stored ciphertext is exactly what was uploaded) and it
decrypts (matrix-nio's ``decrypt_attachment``, which checks that hash too) to the original file.

matrix-commander 8.0.6 rejects a room id without a ``:server`` part (room version 12 ids have none) and
appends one, so the room is addressed by its alias, as a user of that client would."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
from nio.crypto.attachments import decrypt_attachment
from PIL import Image
from unpaddedbase64 import decode_base64

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_media_http import call, media_path

MATRIX_COMMANDER = Path(sys.executable).parent / "matrix-commander"
ALIAS_NAME = "doorbell"
DOWNLOAD = "/_matrix/client/v1/media/download"


def snapshot_jpeg() -> bytes:
    """A small doorbell-camera-like JPEG with a size that shows whether w and h are swapped."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 220)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def commander(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run matrix-commander with its credentials and store under `work` (and HOME there: nothing of the
    user's own configuration is read or written)."""
    if not MATRIX_COMMANDER.exists():
        pytest.fail(f"{MATRIX_COMMANDER} is missing: install the test extras (tests/run.sh)", pytrace=False)
    env = dict(os.environ, HOME=str(work), XDG_CONFIG_HOME=str(work / ".config"),
               XDG_DATA_HOME=str(work / ".local" / "share"), XDG_CACHE_HOME=str(work / ".cache"))
    return subprocess.run([str(MATRIX_COMMANDER), "-c", str(work / "credentials.json"), "-s", str(work / "store"),
                           *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
                          cwd=work)


def room_messages(gw: GatewayProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    status, page = gw.request("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages"
                                     "?dir=b&limit=50", token=token)
    assert status == 200, page
    return [event for event in page["chunk"] if event["type"] == "m.room.message"]


def download_and_decrypt(gw: GatewayProcess, token: str, encrypted_file: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """The authenticated download of an EncryptedFile: its headers and the decrypted bytes, after checking the
    downloaded ciphertext's sha256 is the one the sender put in the event."""
    status, headers, body = call(gw, "GET", f"{DOWNLOAD}/{media_path(encrypted_file['url'])}", token=token)
    assert status == 200, body[:300]
    assert hashlib.sha256(body).digest() == decode_base64(encrypted_file["hashes"]["sha256"])
    plain = decrypt_attachment(body, encrypted_file["key"]["k"], encrypted_file["hashes"]["sha256"],
                               encrypted_file["iv"])
    return headers, plain


@pytest.fixture(scope="module")
def sent(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """bob's matrix-commander logs in and sends a JPEG (-i) and a PDF (-f) to alice's room #doorbell."""
    work = Path(tmp_path_factory.mktemp("matrix-commander"))
    alice = gateway.login("alice", PASSWORD)
    status, room = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                   {"preset": "public_chat", "room_alias_name": ALIAS_NAME}, token=alice)
    assert status == 200, room
    alias = f"#{ALIAS_NAME}:{gateway.server_name}"
    bob = gateway.login("bob", PASSWORD)
    status, joined = gateway.request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(alias)}", {}, token=bob)
    assert status == 200, joined

    image = work / "snapshot.jpg"
    image.write_bytes(snapshot_jpeg())
    document = work / "boiler-manual.pdf"
    document.write_bytes(b"%PDF-1.4\n% boiler manual\n" + os.urandom(5000) + b"\n%%EOF\n")

    login = commander(work, "--login", "password", "--homeserver", gateway.http_url, "--user-login",
                      f"@bob:{gateway.server_name}", "--password", PASSWORD, "--device", "matrix-commander",
                      "--room-default", alias)
    assert login.returncode == 0, login.stderr[-3000:]
    assert (work / "credentials.json").exists(), login.stderr[-3000:]
    runs = [commander(work, "-r", alias, "-i", str(image)), commander(work, "-r", alias, "-f", str(document))]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        # (matrix-nio's own log may warn that an earlier event's encrypted `file` form lacks `url`)
        assert " was sent: " in run.stderr and "ERROR" not in run.stderr, run.stderr[-3000:]
        assert "WARNING: matrix-commander" not in run.stderr, run.stderr[-3000:]
    messages = room_messages(gateway, alice, room["room_id"])
    yield {"alice": alice, "image": image.read_bytes(), "document": document.read_bytes(),
           "messages": {event["content"].get("msgtype"): event for event in messages},
           "bob": f"@bob:{gateway.server_name}"}


def test_matrix_commander_image_is_an_m_image_with_right_info(sent: dict[str, Any]) -> None:
    event = sent["messages"].get("m.image")
    assert event is not None, sent["messages"]
    assert event["sender"] == sent["bob"]
    content = event["content"]
    assert content["body"] == "snapshot.jpg"
    info = content["info"]
    assert info["mimetype"] == "image/jpeg"
    assert info["size"] == len(sent["image"])
    assert (info["w"], info["h"]) == (64, 48)
    assert content["file"]["url"].startswith("mxc://localhost/")


def test_matrix_commander_image_downloads_byte_identical(gateway: GatewayProcess, sent: dict[str, Any]) -> None:
    encrypted = sent["messages"]["m.image"]["content"]["file"]
    headers, plain = download_and_decrypt(gateway, sent["alice"], encrypted)
    assert plain == sent["image"]
    assert Image.open(io.BytesIO(plain)).size == (64, 48)
    # an encrypted upload is opaque: served as the octet-stream it was uploaded as, as an attachment
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment")


def test_matrix_commander_file_is_an_m_file_that_downloads_byte_identical(gateway: GatewayProcess,
                                                                          sent: dict[str, Any]) -> None:
    event = sent["messages"].get("m.file")
    assert event is not None, sent["messages"]
    content = event["content"]
    assert content["body"] == "boiler-manual.pdf"
    assert content["info"] == {"size": len(sent["document"]), "mimetype": "application/pdf"}
    _, plain = download_and_decrypt(gateway, sent["alice"], content["file"])
    assert plain == sent["document"]


def test_matrix_commander_media_needs_a_token(gateway: GatewayProcess, sent: dict[str, Any]) -> None:
    mxc = sent["messages"]["m.file"]["content"]["file"]["url"]
    status, _, body = call(gateway, "GET", f"{DOWNLOAD}/{media_path(mxc)}")
    assert status == 401 and json.loads(body)["errcode"] == "M_MISSING_TOKEN", body[:300]
    # media uploaded after the freeze is not served on the old unauthenticated path either
    status, _, body = call(gateway, "GET", f"/_matrix/media/v3/download/{media_path(mxc)}")
    assert status == 404 and json.loads(body)["errcode"] == "M_NOT_FOUND", body[:300]
