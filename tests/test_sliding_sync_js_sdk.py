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


@pytest.fixture(scope="module")
def js_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    gateway.add_user("ssjs1", PASSWORD)
    gateway.add_user("ssjs2", PASSWORD)
    stderr_path = Path(tmp_path_factory.mktemp("ssjs")) / "sliding_sync.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run([str(NODE), str(SCRIPT), "--base-url", gateway.http_url, "--user1", "ssjs1",
                               "--user2", "ssjs2", "--password", PASSWORD],
                              cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin"})
    steps = {rec["step"]: rec for rec in map(json.loads, proc.stdout.splitlines())}
    return {"steps": steps, "stderr": stderr_path.read_text()[-3000:], "returncode": proc.returncode}


@pytest.mark.parametrize("step", STEPS)
def test_sliding_sync_step(js_run: dict[str, Any], step: str) -> None:
    record = js_run["steps"].get(step)
    assert record is not None, f"step {step} not run (rc {js_run['returncode']}): {js_run['stderr']}"
    assert record["ok"], f"{record['detail']}\n--- stderr tail ---\n{js_run['stderr']}"
