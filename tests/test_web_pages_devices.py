"""The Devices page in a real browser (Playwright driving Debian's Chromium): an admin adds a device
with a coaps key, and the token, key and snippets read from the page work with mosquitto_pub,
coap-client and coap-client-openssl (the readings show on Home); the QR code is there with its
text alternative; revoking the device in the page locks its token out at once; a non-admin sees
only their own devices, no admin controls, and the admin API answers them 403."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_web_pages import artifacts, browser, playwright_sync, pytestmark  # noqa: F401 (fixtures)

QR_NAME = "QR code of the new device's settings, with its access token"


def sign_in(browser: Any, gateway: GatewayProcess, user: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.goto(gateway.http_url + "/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return context, page


def run(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)


def test_admin_adds_uses_and_revokes_a_device(gateway: GatewayProcess, browser: Any, artifacts: Path) -> None:
    expect = playwright_sync.expect
    context, page = sign_in(browser, gateway, "alice")
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.get_by_role("button", name="Devices").click()
    accounts = page.get_by_role("group", name="Accounts and their devices")
    expect(accounts.get_by_role("region", name="Account @bob:localhost")).to_contain_text("member · household")
    expect(accounts.get_by_role("region", name="Account @alice:localhost")).to_contain_text("admin · household")

    page.get_by_label("Account", exact=True).select_option("@alice:localhost")
    page.get_by_label("Device ID").fill("porch1")
    page.get_by_label("Display name").fill("Porch <b>sensor</b>")
    page.get_by_label("coaps pre-shared key").check()
    page.get_by_role("button", name="Add device").click()
    token_box = page.get_by_label("New device's access token")
    expect(token_box).not_to_be_empty()
    token = token_box.text_content() or ""
    key = page.get_by_label("New device's coaps key").text_content() or ""
    assert len(token) == 16 and len(key) == 16

    qr = page.get_by_role("img", name=QR_NAME)
    expect(qr).to_be_visible()
    src = qr.get_attribute("src") or ""
    assert src.startswith("data:image/svg+xml;base64,") and b"<svg" in base64.b64decode(src.split(",", 1)[1])
    # the CSP let it load and it decoded (an SVG without its xmlns would not)
    page.wait_for_function("() => { const i = document.getElementById('device-qr');"
                           " return i.complete && i.naturalWidth > 0; }", timeout=5000)

    mqtt_line = page.get_by_label("MQTT with mosquitto_pub").text_content() or ""
    coap_line = page.get_by_label("CoAP with coap-client").text_content() or ""
    coaps_line = page.get_by_label("coaps (DTLS").text_content() or ""
    micropython = page.get_by_label("MicroPython").text_content() or ""
    assert f"-p {gateway.mqtt_port} " in mqtt_line and token in mqtt_line
    assert f"coap://127.0.0.1:{gateway.coap_port}/_m/c/a/v1/r/" in coap_line and f"?a={token}" in coap_line
    assert f"-k '{key}'" in coaps_line and f"coaps://127.0.0.1:{gateway.coaps_port}/" in coaps_line
    assert "from umqtt.simple import MQTTClient" in micropython and token in micropython
    # the display name went in as text, and the new device is listed under its account
    alice_devices = accounts.get_by_role("region", name="Account @alice:localhost")
    expect(alice_devices.get_by_role("row").filter(has_text="porch1")).to_contain_text("Porch <b>sensor</b>")
    page.screenshot(path=str(artifacts / "devices-added.png"), full_page=True)

    # the snippets, pasted as they are (coap-client is libcoap's coap-client-notls here)
    sent = run(mqtt_line)
    assert sent.returncode == 0, sent.stderr
    sent = run(coap_line.replace("coap-client ", "coap-client-notls ", 1).replace("21.5", "22.25") + " -o /dev/null")
    assert sent.returncode == 0 and not sent.stderr.strip(), sent.stderr
    sent = run(coaps_line.replace("21.5", "23.75") + " -o /dev/null")
    assert sent.returncode == 0 and "4.01" not in sent.stderr, sent.stderr

    page.get_by_role("button", name="Home").click()
    room = page.get_by_role("list", name="Places and devices").get_by_role("listitem").filter(
        has=page.get_by_role("heading", name="MQTT home/porch1"))
    expect(room.locator(".reading")).to_have_text("temp 23.75", timeout=10000)  # all three arrived, in order
    expect(room.get_by_role("img")).to_have_attribute(
        "aria-label", "temp: latest 23.75, range 21.5 to 23.75 over the last hour")

    # revoke it in the page: confirmation, then the list updates and the token is refused
    page.get_by_role("button", name="Devices").click()
    expect(page.get_by_label("New device's access token")).to_be_hidden()  # shown once only
    revoke = page.get_by_role("button", name="Revoke porch1 of @alice:localhost")
    page.once("dialog", lambda dialog: dialog.accept())
    revoke.click()
    expect(revoke).to_have_count(0)
    expect(page.get_by_role("status")).to_have_text("Revoked porch1 of @alice:localhost.")
    refused = run(mqtt_line)
    assert refused.returncode != 0 and "bad user name or password" in refused.stderr, refused
    refused = run(coap_line.replace("coap-client ", "coap-client-notls ", 1) + " -o /dev/null")
    assert "4.01" in refused.stderr, refused
    page.screenshot(path=str(artifacts / "devices-revoked.png"), full_page=True)
    assert not problems, problems
    context.close()


def test_a_cancelled_revoke_keeps_the_device(gateway: GatewayProcess, browser: Any) -> None:
    token = gateway.device_token("bob", "bobplug")
    context, page = sign_in(browser, gateway, "alice")
    page.get_by_role("button", name="Devices").click()
    revoke = page.get_by_role("button", name="Revoke bobplug of @bob:localhost")
    page.once("dialog", lambda dialog: dialog.dismiss())
    revoke.click()
    playwright_sync.expect(revoke).to_have_count(1)
    status, _ = gateway.request("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 200
    context.close()


def test_non_admin_sees_only_their_devices(gateway: GatewayProcess, browser: Any, artifacts: Path) -> None:
    expect = playwright_sync.expect
    gateway.device_token("bob", "bobsensor")
    context, page = sign_in(browser, gateway, "bob")
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.get_by_role("button", name="Devices").click()
    own = page.get_by_role("list", name="Your devices")
    expect(own).to_contain_text("bobsensor")
    expect(own).not_to_contain_text("porch1")
    expect(page.get_by_role("heading", name="Accounts and their devices")).to_be_hidden()
    expect(page.get_by_role("button", name="Add device")).to_be_hidden()
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    assert page.get_by_role("region", name="Devices").get_by_text("@alice:localhost").count() == 0
    page.screenshot(path=str(artifacts / "devices-non-admin.png"), full_page=True)
    status = page.evaluate("""async () => {
        const resp = await fetch('/_synapse/admin/v2/users',
                                 {headers: {Authorization: 'Bearer ' + localStorage.getItem('hub.token')}});
        return [resp.status, (await resp.json()).errcode];
    }""")
    assert status == [403, "M_FORBIDDEN"]
    assert not [p for p in problems if "403" not in p], problems  # only the direct call above
    context.close()
