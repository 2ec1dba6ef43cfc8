"""Real clients and the content repository (issue 15): matrix-js-sdk 43 (Element's engine: uploadContent,
an m.image event, download and thumbnail through the authenticated paths; tests/js/media.mjs) and
matrix-nio (upload, download, thumbnail), against the CLI-started hub."""
from __future__ import annotations

import asyncio
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, DownloadResponse, ThumbnailResponse, UploadResponse
from PIL import Image

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_matrix_js_sdk import JS_DIR, NODE, node_and_sdk_problem

SCRIPT = JS_DIR / "media.mjs"
JS_STEPS = ["versions_v1_11", "media_config", "upload_content", "m_image_event", "download_authenticated",
            "thumbnail_authenticated", "unauthenticated_is_refused"]


def picture() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (250, 120, 0)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def js_steps(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    image = Path(tmp_path_factory.mktemp("js-media")) / "boiler.png"
    image.write_bytes(picture())
    proc = subprocess.run([str(NODE), str(SCRIPT), "--base-url", str(gateway.http_url), "--user1", "alice",
                           "--password1", PASSWORD, "--user2", "bob", "--password2", PASSWORD, "--image", str(image)],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    steps = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        steps[record["step"]] = record
    steps["_stderr"] = proc.stderr[-3000:]
    steps["_returncode"] = proc.returncode
    return steps


@pytest.mark.parametrize("step", JS_STEPS)
def test_matrix_js_sdk_media_step(js_steps: dict[str, Any], step: str) -> None:
    result = js_steps.get(step)
    if result is None:
        pytest.fail(f"no line for {step} (exit {js_steps['_returncode']}): {js_steps['_stderr']}", pytrace=False)
    assert result["ok"], f"{step}: {result['detail']}"


def test_matrix_nio_upload_download_thumbnail(gateway: GatewayProcess) -> None:
    async def run() -> None:
        client = AsyncClient(gateway.http_url, "@bob:localhost")
        try:
            assert (await client.login(PASSWORD)).access_token
            data = picture()
            answer, _ = await client.upload(lambda *_: data, content_type="image/png", filename="nio.png",
                                            filesize=len(data))
            assert isinstance(answer, UploadResponse), answer
            got = await client.download(mxc=answer.content_uri)
            assert isinstance(got, DownloadResponse), got
            assert got.body == data and got.content_type == "image/png" and got.filename == "nio.png"
            named = await client.download(mxc=answer.content_uri, filename="renamed.png")
            assert isinstance(named, DownloadResponse) and named.filename == "renamed.png"
            thumb = await client.thumbnail(*answer.content_uri[len("mxc://"):].split("/"), width=16, height=16)
            assert isinstance(thumb, ThumbnailResponse), thumb
            assert Image.open(io.BytesIO(thumb.body)).size == (16, 12)
        finally:
            await client.close()

    asyncio.run(run())
