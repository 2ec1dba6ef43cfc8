"""The hub's own pages in a real browser: Debian's Chromium driven by Playwright (no browser
download). Sign in through the page, see a room's reading sent with mosquitto_pub appear as
text and in the plot within 2 s; a strict CSP, no inline script, escaped room names, and a
first load under 300 KB compressed."""
from __future__ import annotations

import gzip
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_mqtt_peers import mosquitto_pub

CHROMIUM = "/usr/bin/chromium"
playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")

XSS_NAME = "<img src=x onerror=alert(1)>"


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def page_files(base_url: str) -> list[tuple[str, str]]:
    """Every file the page loads at first: index.html's stylesheet, icon and script, and each ES
    module those import (followed through `import ... from "./x.js"`), with its expected type."""
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    html = fetch(base_url + "/")[2].decode()
    todo = re.findall(r'(?:href|src)="(/web/[^"]+)"', html)
    found: list[tuple[str, str]] = [("/", "text/html")]
    while todo:
        path = todo.pop()
        if any(path == seen for seen, _ in found):
            continue
        found.append((path, kinds[path[path.rindex("."):]]))
        if path.endswith(".js"):
            text = fetch(base_url + path)[2].decode()
            todo += ["/web/" + name for name in re.findall(r'^import\b[^;]*?from\s+"\./([^"]+)"', text, re.M)]
    return found


def test_static_files_headers_and_size(gateway: GatewayProcess) -> None:
    total = 0
    files = page_files(gateway.http_url or "")
    names = {path.rsplit("/", 1)[-1] for path, _ in files}
    assert {"app.js", "common.js", "home.js", "devices.js", "status.js", "mqtt.js", "app.css", "icon.svg"} <= names, names
    for path, kind in files:
        status, headers, body = fetch(gateway.http_url + path, **{"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["Content-Type"].startswith(kind)
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Encoding"] == "gzip" and headers["ETag"]
        text = gzip.decompress(body).decode()
        if kind == "text/html":
            assert "<script>" not in text and "onclick" not in text and "style=" not in text
        total += len(body)
        req = urllib.request.Request(gateway.http_url + path, headers={"If-None-Match": headers["ETag"]})
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(req, timeout=10)
        assert not_modified.value.code == 304
    assert total <= 300 * 1024, total
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(gateway.http_url + "/web/nothing.js")
    assert missing.value.code == 404


def test_sign_in_and_watch_a_reading_arrive(gateway: GatewayProcess, browser: object, artifacts: Path) -> None:
    token = gateway.login("alice", PASSWORD)
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom", {"name": XSS_NAME}, token=token)
    assert status == 200, body
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "house/webkitchen/temp", '{"t": 20.5}', 1)

    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda resp: problems.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)
    page.on("dialog", lambda dialog: (problems.append("dialog: " + dialog.message), dialog.dismiss()))
    loaded: list[str] = []
    page.on("requestfinished", lambda req: loaded.append(req.url))
    response = page.goto(gateway.http_url + "/")
    assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]

    expect = playwright_sync.expect
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    rooms = page.get_by_role("list", name="Places and devices")
    kitchen = rooms.get_by_role("listitem").filter(has=page.get_by_role("heading", name="MQTT house/webkitchen"))
    expect(kitchen.locator(".reading")).to_have_text("t 20.5", timeout=10000)
    expect(kitchen.locator("svg[data-latest='20.5']")).to_have_count(1, timeout=5000)
    # the room named like markup is shown as text, not run
    expect(rooms.get_by_role("heading", name=XSS_NAME)).to_have_count(1)
    assert rooms.locator("img").count() == 0

    sent = time.monotonic()
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "house/webkitchen/temp", '{"t": 23.75}', 1)
    expect(kitchen.locator(".reading")).to_have_text("t 23.75", timeout=2000)
    plot = kitchen.get_by_role("img")
    expect(plot).to_have_attribute("data-latest", "23.75", timeout=max(100, int(2000 - (time.monotonic() - sent) * 1000)))
    expect(plot).to_have_attribute("aria-label", "t: latest 23.75, range 20.5 to 23.75 over the last hour")
    page.screenshot(path=str(artifacts / "home.png"), full_page=True)

    page.get_by_label("Week").check()
    expect(plot.first).to_have_attribute("aria-label", "t: latest 23.75, range 20.5 to 23.75 over the last week")
    assert not problems, problems

    # the first load, as the browser made it, compressed
    first = [u for u in loaded if u.startswith(gateway.http_url) and "/_matrix/" not in u and "/_gateway/" not in u]
    size = sum(len(fetch(u, **{"Accept-Encoding": "gzip"})[2]) for u in first)
    assert 0 < size <= 300 * 1024, (first, size)

    # add a device; its token works for mosquitto_pub, and the reading shows on Home
    page.get_by_role("button", name="Devices").click()
    page.get_by_label("Device ID").fill("websensor")
    page.get_by_label("Display name").fill("Porch")
    page.get_by_role("button", name="Add device").click()
    device_token = page.get_by_label("New device's access token")
    expect(device_token).not_to_be_empty()
    expect(page.get_by_role("list", name="Your devices")).to_contain_text("websensor (Porch)")
    mosquitto_pub(gateway.mqtt_port, "alice", device_token.text_content() or "", "house/porch/temp", '{"t": 7}', 1)
    page.get_by_role("button", name="Home").click()
    porch = rooms.get_by_role("listitem").filter(has=page.get_by_role("heading", name="MQTT house/porch"))
    expect(porch.locator(".reading")).to_have_text("t 7")

    page.get_by_role("button", name="Status").click()
    status = page.get_by_role("region", name="Status")
    expect(status.get_by_role("definition").nth(3)).to_have_text(re.compile(r"^[0-9.]+ (KB|MB)$"))  # database size
    expect(status.get_by_role("term").nth(4)).to_have_text("Events per minute")
    page.screenshot(path=str(artifacts / "status.png"), full_page=True)
    page.get_by_role("button", name="Home").click()
    expect(rooms).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    context.close()


def test_wrong_password_is_a_clear_message(gateway: GatewayProcess, browser: object) -> None:
    page = browser.new_page()
    page.goto(gateway.http_url + "/")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Status").click()  # bob is no admin
    playwright_sync.expect(page.get_by_role("region", name="Status").get_by_role("status")).to_have_text(
        "Only hub admins see the hub's status.")
    page.close()
