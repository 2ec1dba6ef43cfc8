"""First run in a real browser (issue 18): a fresh hub with no admin shows the setup view; a wrong
code shows the hub's message; the code read from the hub's log creates the admin and lands on Home;
a reload then shows sign-in, not setup; wrong passwords there end in the throttle's "wait" message.
Debian's Chromium driven by Playwright (tests/test_web_pages.py has the fixtures)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import GatewayProcess
from tests.test_setup_api import GOOD_PASSWORD, printed_code
from tests.test_web_pages import artifacts, browser, playwright_sync  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def fresh_hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path / "data") as gw:  # no accounts at all: the first run
        yield gw


def test_first_run_with_the_setup_code(fresh_hub: GatewayProcess, browser: object, artifacts: Path) -> None:
    expect = playwright_sync.expect
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" and "403" not in msg.text
            and "429" not in msg.text else None)
    page.goto(fresh_hub.http_url + "/")

    expect(page.get_by_role("heading", name="Set up this hub")).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()
    page.get_by_label("Setup code").fill("AAAA-BBBB-CCCC")
    page.get_by_label("Admin user name").fill("owner")
    page.get_by_label("Admin password (at least 8 characters)").fill(GOOD_PASSWORD)
    page.get_by_label("Admin password again").fill(GOOD_PASSWORD)
    page.get_by_role("button", name="Create admin account").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong setup code")
    page.screenshot(path=str(artifacts / "setup-wrong-code.png"), full_page=True)

    page.get_by_label("Setup code").fill(printed_code(fresh_hub).lower())  # as typed off a screen
    page.get_by_role("button", name="Create admin account").click()
    expect(page.get_by_role("heading", name="Home")).to_be_visible(timeout=10000)
    expect(page.get_by_role("navigation", name="Pages")).to_contain_text(f"@owner:{fresh_hub.server_name}")
    page.screenshot(path=str(artifacts / "setup-done-home.png"), full_page=True)

    # Another browser (no session) now gets sign-in, not setup.
    other = browser.new_context().new_page()
    other.goto(fresh_hub.http_url + "/")
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(other.get_by_role("heading", name="Set up this hub")).to_be_hidden()
    # Wrong passwords: a clear message, then the throttle's.
    other.get_by_label("User name").fill("owner")
    other.get_by_label("Password").fill("not the password")
    other.get_by_role("button", name="Sign in").click()
    expect(other.get_by_role("alert")).to_have_text("Wrong user name or password.")
    for _ in range(12):  # the login throttle (ratelimit.LoginThrottle) refuses the 11th from one host
        with other.expect_response(lambda resp: resp.url.endswith("/login")) as answer:
            other.get_by_role("button", name="Sign in").click()
        if answer.value.status == 429:
            break
    expect(other.get_by_role("alert")).to_contain_text("Too many wrong attempts: wait")
    other.screenshot(path=str(artifacts / "sign-in-throttled.png"), full_page=True)

    # Signed out, a reload of the first page shows sign-in too.
    page.get_by_role("button", name="Sign out").click()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("heading", name="Set up this hub")).to_be_hidden()
    assert not problems, problems
