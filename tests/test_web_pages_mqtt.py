"""The MQTT page and the Status additions in a real browser (Debian's Chromium, Playwright): map a
topic to a room in the page, mosquitto_pub to it, the message lands in that room and the topic
shows in the live tree within 2 s; unmap. Status shows media size, federation peers ("none") and
a [[mqtt_bridge]] uplink to a local mosquitto with its state; the backup button downloads an
archive whose manifest checks out. axe-core (npm, tests/js) finds no serious or critical
accessibility violation on sign-in, Home, Devices, Status and MQTT."""
from __future__ import annotations

import json
import re
import tarfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.test_mqtt_peers import mosquitto_pub
from tests.test_web_pages import CHROMIUM, artifacts, browser, playwright_sync  # noqa: F401 (fixtures)

AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
REMOTE_USER, REMOTE_PASSWORD = "garage", "remote-pw"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), users={REMOTE_USER: REMOTE_PASSWORD}) as broker:
        yield broker


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, remote: Mosquitto) -> Iterator[GatewayProcess]:
    """A hub with alice (admin) and an uplink ([[mqtt_bridge]]) to the local mosquitto; the
    bridge's account exists before the config names it, hence a first start to make accounts."""
    data = tmp_path_factory.mktemp("hub") / "data"
    with GatewayProcess(data) as first:
        first.add_user("alice", PASSWORD, admin=True)
        first.add_user("bridge", PASSWORD)
    with open(data / "gateway.toml", "a") as f:
        f.write(f'\n[[mqtt_bridge]]\nname = "house"\naddress = ["127.0.0.1:{remote.port}"]\nlocal_account = "bridge"\n'
                f'remote_username = "{REMOTE_USER}"\nremote_password = "{REMOTE_PASSWORD}"\nrestart_timeout = 1\n'
                'topic = [{ pattern = "uplinked/#", direction = "out", qos = 1 }]\n')
    gw = GatewayProcess(data)
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.read_log()


def sign_in(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def messages(gw: GatewayProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    q = urllib.parse.quote(room_id, safe="")
    status, body = gw.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=20", token=token)
    assert status == 200, body
    return body["chunk"]


def test_map_a_topic_watch_the_tree_status_and_backup(hub: GatewayProcess, browser: Any, artifacts: Path) -> None:
    expect = playwright_sync.expect
    token = hub.login("alice", PASSWORD)
    status, body = hub.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "webgarden", "name": "Garden"},
                               token=token)
    assert status == 200, body
    garden = body["room_id"]

    context = browser.new_context(accept_downloads=True)  # CSP enforced here
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    sign_in(page, hub.http_url or "")
    page.get_by_role("button", name="MQTT").click()
    expect(page.get_by_role("button", name="MQTT")).to_have_attribute("aria-current", "page")
    mqtt = page.get_by_role("region", name="MQTT")
    rules = mqtt.get_by_role("list", name="Topic rules")
    expect(rules).to_have_text("No rules: topics go to their default rooms.")

    # a bad filter: a clear message, nothing stored
    page.get_by_label("Topic filter").fill("webgarden/#/x")
    page.get_by_label("Room").fill("#webgarden")
    page.get_by_role("button", name="Map topic").click()
    expect(mqtt.get_by_role("alert")).to_contain_text("topic filter")
    assert problems == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"], problems
    problems.clear()
    # map it
    page.get_by_label("Topic filter").fill("webgarden/+/moisture")
    page.get_by_label("Room").fill("#webgarden")
    page.get_by_role("button", name="Map topic").click()
    expect(rules.get_by_role("listitem")).to_have_text([f"webgarden/+/moisture → {garden} Unmap"])
    expect(mqtt.get_by_role("alert")).to_have_text("")

    # the broker applies the rule within a second: publish until the message lands in the room
    deadline = time.monotonic() + 5
    n = 0
    while True:
        n += 1
        sent = time.monotonic()
        mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "webgarden/bed1/moisture", str(40 + n), 1)
        if any(e["content"].get("mqtt", {}).get("topic") == "webgarden/bed1/moisture" for e in messages(hub, token, garden)):
            break
        assert time.monotonic() < deadline, "the mapped room never got the message"
    tree = mqtt.get_by_role("list", name="Topics")
    leaf = tree.locator('li[data-topic="webgarden/bed1/moisture"]')
    expect(leaf.locator(".value")).to_have_text(str(40 + n), timeout=max(100, int(2000 - (time.monotonic() - sent) * 1000)))
    # the tree groups by level: webgarden > bed1 > moisture
    expect(tree.get_by_role("listitem").filter(has=page.locator(".level", has_text=re.compile("^webgarden$")))).to_have_count(1)
    # a new value is there within 2 s of the publish
    sent = time.monotonic()
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "webgarden/bed1/moisture", "<b>dry</b>", 1)
    expect(leaf.locator(".value")).to_have_text("<b>dry</b>", timeout=max(100, int(2000 - (time.monotonic() - sent) * 1000)))
    assert tree.locator("b").count() == 0  # a payload is text, never markup
    page.screenshot(path=str(artifacts / "mqtt.png"), full_page=True)

    page.get_by_role("button", name="Unmap webgarden/+/moisture").click()
    expect(rules).to_have_text("No rules: topics go to their default rooms.")
    assert hub.request("GET", "/_gateway/admin/v1/mqtt/rules", token=token)[1] == {"rules": []}

    # Status: media size, federation peers (none here), the uplink's state; the backup download
    page.get_by_role("button", name="Status").click()
    status_region = page.get_by_role("region", name="Status")
    terms = status_region.get_by_role("term")
    expect(terms).to_contain_text(["Media size", "Federation peers", "MQTT uplinks"])
    expect(status_region.locator("dt:text('Media size') + dd")).to_have_text(re.compile(r"^[0-9.]+ (KB|MB) \(\d+ files\)$"))
    expect(status_region.locator("dt:text('Federation peers') + dd")).to_have_text("none")
    expect(status_region.locator("dt:text('MQTT uplinks') + dd")).to_have_text(
        re.compile(rf"^house: connected \(127\.0\.0\.1:{hub_remote_port(hub)}\), backlog \d+ events$"), timeout=15000)
    with page.expect_download(timeout=30000) as info:
        page.get_by_role("button", name="Download backup").click()
    download = info.value
    assert re.fullmatch(r"matrix-gateway-backup-\d{4}-\d\d-\d\d-\d{6}\.tar\.gz", download.suggested_filename)
    with tarfile.open(download.path(), "r:gz") as tar:
        assert tar.getnames()[0] == "MANIFEST.json"
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        assert manifest["format"] == "matrix-gateway-backup" and manifest["events"] > 0
        for name, entry in manifest["files"].items():
            assert tar.getmember(name).size == entry["size"]
    expect(status_region.get_by_text(re.compile(r"^Saved matrix-gateway-backup-"))).to_be_visible()
    page.screenshot(path=str(artifacts / "status-uplink.png"), full_page=True)
    assert not problems, problems
    context.close()


def hub_remote_port(hub: GatewayProcess) -> int:
    text = (hub.data_dir / "gateway.toml").read_text()
    return int(re.search(r'address = \["127\.0\.0\.1:(\d+)"\]', text).group(1))  # type: ignore[union-attr]


def axe_violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(" "))}))""")
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (cd tests/js && npm ci)")
def test_pages_have_no_serious_accessibility_violations(hub: GatewayProcess, browser: Any, artifacts: Path) -> None:
    """axe-core injected by Playwright: only this context bypasses the CSP (the injected script is
    inline); the pages themselves are the ones served with it."""
    expect = playwright_sync.expect
    mosquitto_pub(hub.mqtt_port, "alice", PASSWORD, "axe/room/temp", '{"t": 21.5}', 1)
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto((hub.http_url or "") + "/")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    found = {"sign-in": axe_violations(page)}
    sign_in(page, hub.http_url or "")
    expect(page.get_by_role("list", name="Places and devices").get_by_role("img").first).to_be_visible(timeout=10000)
    found["home"] = axe_violations(page)
    for name, ready in (("Devices", "Your devices"), ("Status", "Status"), ("MQTT", "Topics")):
        page.get_by_role("button", name=name).click()
        expect(page.get_by_role("button", name=name)).to_have_attribute("aria-current", "page")
        if name == "Status":
            expect(page.get_by_role("term").first).to_be_visible()
        else:
            expect(page.get_by_role("list", name=ready)).to_be_visible()
        found[name.lower()] = axe_violations(page)
    assert not any(found.values()), found
    # keyboard: Tab from the top reaches the nav's buttons and the page's form and buttons
    page.keyboard.press("Escape")
    page.locator("body").focus()
    reached: list[str] = []
    for _ in range(25):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id || document.activeElement.textContent.trim()"))
    assert {"go-home", "go-devices", "go-status", "go-mqtt", "logout", "map-filter", "map-room"} <= set(reached), reached
    assert "Map topic" in reached, reached
    outline = page.evaluate("() => getComputedStyle(document.activeElement, ':focus-visible').outlineStyle")
    assert outline != "none", outline
    context.close()
