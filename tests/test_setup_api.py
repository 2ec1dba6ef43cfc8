"""First run (issue 18): a hub with no admin prints a one-time setup code; `POST /_gateway/v1/setup`
with it creates the first admin and signs it in; wrong codes are refused and throttled; afterwards
the code is dead. The code's rules and the throttle are tested pure (fake clock), the rest against
the CLI-started hub over raw HTTP (http.client, from chosen loopback source addresses)."""
from __future__ import annotations

import http.client
import json
import re
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from matrix_core import setup_rules
from matrix_core.errors import MatrixError
from tests.support.gateway import GatewayProcess, gateway_cli

SETUP = "/_gateway/v1/setup"
CODE_RE = re.compile(r"First run: open (\S+) and enter setup code (\S+) to create the admin account")
GOOD_PASSWORD = "a long household password"

# ---------------------------------------------------------------------------------------------
# the code and the throttle (pure)
# ---------------------------------------------------------------------------------------------


def test_codes_are_three_groups_of_four_and_typing_slips_are_forgiven() -> None:
    import secrets

    codes = {setup_rules.new_code(secrets.randbelow) for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", code), code
        assert setup_rules.is_code(code)
    kept = setup_rules.digest("K7QX-30PA-W1RT")
    assert setup_rules.matches("k7qx 3opa wlrt", kept)  # case, spaces, O for 0, l for 1
    assert setup_rules.matches("K7QX30PAW1RT", kept)
    assert not setup_rules.matches("K7QX-30PA-W1RA", kept)
    assert not setup_rules.matches("K7QX-30PA-W1RT" * 10, kept)
    assert not setup_rules.is_code("K7QX-30PA") and not setup_rules.is_code("K7QX-30PA-W1R!")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def locked(throttle: setup_rules.SetupThrottle, address: str) -> int | None:
    """retry_after_ms if `address` is locked out now, else None."""
    try:
        throttle.check(address)
    except MatrixError as err:
        assert err.status == 429 and err.errcode == "M_LIMIT_EXCEEDED"
        return int(err.extra["retry_after_ms"])
    return None


def test_wrong_codes_lock_out_exponentially_per_host_and_for_the_hub() -> None:
    clock = Clock()
    t = setup_rules.SetupThrottle(clock=clock)
    for _ in range(4):
        assert locked(t, "192.0.2.1") is None
        t.failed("192.0.2.1")
    assert locked(t, "192.0.2.1") is None
    t.failed("192.0.2.1")  # the 5th: locked out 1 s
    assert locked(t, "192.0.2.1") == 1001
    assert locked(t, "192.0.2.2") is None  # another host is not
    clock.now += 1.001
    waits = []
    for _ in range(5):
        assert locked(t, "192.0.2.1") is None
        t.failed("192.0.2.1")
        waits.append(locked(t, "192.0.2.1"))
        clock.now += waits[-1] / 1000
    assert waits == [2001, 4001, 8001, 16001, 32001]  # doubling
    # Many hosts: the hub-wide count locks everyone out after 20 wrong codes in all.
    for n in range(10):
        t.failed(f"198.51.100.{n}")
    assert locked(t, "203.0.113.9") is not None
    # The lock-out is capped (an hour).
    for _ in range(60):
        t.failed("192.0.2.1")
    assert locked(t, "192.0.2.1") <= 3_600_001


def test_weak_passwords_are_named() -> None:
    assert setup_rules.password_problem("short") == "The password must have at least 8 characters"
    assert setup_rules.password_problem("aaaaaaaaaaaa") is not None
    assert setup_rules.password_problem(GOOD_PASSWORD) is None


# ---------------------------------------------------------------------------------------------
# the hub
# ---------------------------------------------------------------------------------------------


def call(hub: GatewayProcess, method: str, body: Any = None, source: str = "127.0.0.1",
         path: str = SETUP, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=30, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def printed_code(hub: GatewayProcess) -> str:
    """The code from the hub's log (stderr), the last one it printed."""
    found = CODE_RE.findall(hub.log_path().read_text())
    assert found, hub.read_log()
    return found[-1][1]


@pytest.fixture
def fresh_hub(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A hub started for the first time with no account at all."""
    with GatewayProcess(tmp_path / "data") as gw:
        yield gw
        assert "Traceback" not in gw.log_path().read_text()


def test_a_fresh_hub_prints_a_code_and_keeps_it_private(fresh_hub: GatewayProcess) -> None:
    code = printed_code(fresh_hub)
    assert setup_rules.is_code(code)
    address = CODE_RE.search(fresh_hub.log_path().read_text()).group(1)
    assert address == f"http://127.0.0.1:{fresh_hub.http_port}/"
    assert call(fresh_hub, "GET") == (200, {"setup_needed": True})
    stored = fresh_hub.data_dir / "setup-code"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert gateway_cli("setup-code", "--data-dir", str(fresh_hub.data_dir)).stdout.strip() == code


def test_bad_input_is_refused_and_creates_nothing(fresh_hub: GatewayProcess) -> None:
    code = printed_code(fresh_hub)
    status, body = call(fresh_hub, "POST", {"setup_code": "AAAA-BBBB-CCCC", "username": "owner",
                                            "password": GOOD_PASSWORD})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN") and "setup code" in body["error"], body
    status, body = call(fresh_hub, "POST", {"setup_code": code, "username": "owner", "password": "short"})
    assert (status, body["errcode"]) == (400, "M_WEAK_PASSWORD") and "8 characters" in body["error"], body
    for bad in ("Owner!", "", 7, "x" * 65):
        status, body = call(fresh_hub, "POST", {"setup_code": code, "username": bad, "password": GOOD_PASSWORD})
        assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME"), (bad, body)
    status, body = call(fresh_hub, "POST", {"username": "owner", "password": GOOD_PASSWORD})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM"), body
    status, body = call(fresh_hub, "POST", ["not", "an", "object"])
    assert status == 400, body
    assert call(fresh_hub, "GET") == (200, {"setup_needed": True})
    status, body = fresh_hub.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "owner"}, "password": GOOD_PASSWORD})
    assert status == 403, body


def test_wrong_codes_are_throttled_even_the_right_one_then(fresh_hub: GatewayProcess) -> None:
    code = printed_code(fresh_hub)
    attempt = {"setup_code": "AAAA-BBBB-CCCC", "username": "owner", "password": GOOD_PASSWORD}
    answers = [call(fresh_hub, "POST", attempt, source="127.0.0.2") for _ in range(6)]
    assert [status for status, _ in answers] == [403] * 5 + [429], answers
    assert answers[-1][1]["errcode"] == "M_LIMIT_EXCEEDED" and answers[-1][1]["retry_after_ms"] > 0
    # During the lock-out the right code is not even checked.
    status, body = call(fresh_hub, "POST", {**attempt, "setup_code": code}, source="127.0.0.2")
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), body
    assert call(fresh_hub, "GET") == (200, {"setup_needed": True})
    # Another host is not locked out by the first one's guesses.
    status, body = call(fresh_hub, "POST", {**attempt, "setup_code": code}, source="127.0.0.3")
    assert status == 200, body


def test_concurrent_right_codes_make_exactly_one_admin_then_the_code_is_dead(fresh_hub: GatewayProcess) -> None:
    code = printed_code(fresh_hub)
    answers: list[tuple[int, Any]] = []

    def claim(n: int) -> None:
        answers.append(call(fresh_hub, "POST", {"setup_code": code, "username": f"owner{n}",
                                                "password": GOOD_PASSWORD}))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(status for status, _ in answers) == [200] + [403] * 5, answers
    winner = next(body for status, body in answers if status == 200)
    assert set(winner) >= {"user_id", "access_token", "device_id"}
    assert all(body["errcode"] == "M_FORBIDDEN" and "already set up" in body["error"]
               for status, body in answers if status == 403)
    # The page is signed in as a household admin: the admin-only status answers.
    status, body = call(fresh_hub, "GET", path="/_gateway/v1/status", token=winner["access_token"])
    assert status == 200, body
    assert fresh_hub.login(winner["user_id"].split(":")[0][1:], GOOD_PASSWORD)
    assert call(fresh_hub, "GET") == (200, {"setup_needed": False})
    status, body = call(fresh_hub, "POST", {"setup_code": code, "username": "late", "password": GOOD_PASSWORD})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert not (fresh_hub.data_dir / "setup-code").exists()
    proc = gateway_cli("setup-code", "--data-dir", str(fresh_hub.data_dir), check=False)
    assert proc.returncode != 0 and "admin account already" in proc.stderr


def test_the_code_survives_a_restart_and_an_admin_made_by_the_cli_ends_it(tmp_path: Path) -> None:
    hub = GatewayProcess(tmp_path / "data")
    with hub:
        first = printed_code(hub)
    with hub:
        assert printed_code(hub) == first
        hub.add_user("root", GOOD_PASSWORD, admin=True)  # the CLI, while the hub runs
        assert call(hub, "GET") == (200, {"setup_needed": False})
        status, body = call(hub, "POST", {"setup_code": first, "username": "owner", "password": GOOD_PASSWORD})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    before = hub.log_path().read_text().count("setup code")
    with hub:  # an admin exists: no code printed at all
        assert call(hub, "GET") == (200, {"setup_needed": False})
    assert hub.log_path().read_text().count("setup code") == before
    assert not (hub.data_dir / "setup-code").exists()


def test_an_installed_hub_prints_no_setup_code(tmp_path: Path) -> None:
    """systemd/install.sh provisions the first admin (gateway/ops/firstrun.py) before the first start."""
    import subprocess
    import sys

    from tests.support.gateway import REPO_ROOT

    data = tmp_path / "data"
    out = subprocess.run([sys.executable, "-m", "gateway.ops.firstrun", "--data-dir", str(data), "--admin", "admin",
                          "--device", "dev"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "setup code" not in out.stdout + out.stderr
    hub = GatewayProcess(data, extra_args=["--bind", "127.0.0.1"])
    with hub:
        assert call(hub, "GET") == (200, {"setup_needed": False})
    assert "setup code" not in hub.log_path().read_text()
    assert "setup code" not in "".join(hub.stdout_lines)
