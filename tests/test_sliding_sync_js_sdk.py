"""Simplified Sliding Sync (issue 19) with matrix-js-sdk 43's `SlidingSync` class on Node 22 against the
CLI-started hub: tests/js/sliding_sync.mjs prints one JSON line per step; each step is its own test here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_matrix_js_sdk import JS_DIR, NODE, node_and_sdk_problem

SCRIPT = JS_DIR / "sliding_sync.mjs"
STEPS = ["list_sorted_by_recency", "new_message_bumps_room_to_top", "invite_appears",
         "room_subscription_with_required_state"]
E2EE_SCRIPT = JS_DIR / "sliding_sync_e2ee.mjs"
E2EE_STEPS = ["start_sliding_and_v2_clients", "encrypted_room", "sliding_client_decrypts",
              "v2_client_decrypts_the_sliding_client"]


def run(gateway: GatewayProcess, script: Path, users: tuple[str, str], work: Path) -> dict[str, Any]:
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    for user in users:
        gateway.add_user(user, PASSWORD)
    stderr_path = work / "stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run([str(NODE), str(script), "--base-url", gateway.http_url, "--user1", users[0],
                               "--user2", users[1], "--password", PASSWORD],
                              cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=150,
                              env={"PATH": "/usr/bin:/bin"})
    steps = {rec["step"]: rec for rec in map(json.loads, proc.stdout.splitlines())}
    return {"steps": steps, "stderr": stderr_path.read_text()[-3000:], "returncode": proc.returncode}


@pytest.fixture(scope="module")
def js_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(gateway, SCRIPT, ("ssjs1", "ssjs2"), Path(tmp_path_factory.mktemp("ssjs")))


@pytest.fixture(scope="module")
def e2ee_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(gateway, E2EE_SCRIPT, ("ssjse1", "ssjse2"), Path(tmp_path_factory.mktemp("ssjse")))


def check(run_result: dict[str, Any], step: str) -> None:
    record = run_result["steps"].get(step)
    assert record is not None, f"step {step} not run (rc {run_result['returncode']}): {run_result['stderr']}"
    assert record["ok"], f"{record['detail']}\n--- stderr tail ---\n{run_result['stderr']}"


@pytest.mark.parametrize("step", STEPS)
def test_sliding_sync_step(js_run: dict[str, Any], step: str) -> None:
    check(js_run, step)


@pytest.mark.parametrize("step", E2EE_STEPS)
def test_sliding_sync_e2ee_step(e2ee_run: dict[str, Any], step: str) -> None:
    """Room keys by the to_device extension, device lists by the e2ee extension: messages decrypt."""
    check(e2ee_run, step)
