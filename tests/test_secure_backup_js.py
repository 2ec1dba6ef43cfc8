"""Element's "secure backup" with matrix-js-sdk 43 and its Rust crypto (initRustCrypto) on Node 22, against the
CLI-started hub: cross-signing bootstrapped (the first upload without a password, MSC3967; replacing it only after
the password), /keys/query showing the signatures, secret storage with a new key backup, resetKeyBackup, and a
Megolm session of an encrypted room backed up to /room_keys/keys (tests/js/secure_backup.mjs, one JSON line per
step; each step is its own test, so a failure names the step and the request the hub answered wrong).

Rust crypto uploads the device's keys (/keys/upload) and reads them back (/keys/query) before it cross-signs: the
steps from bootstrap_cross_signing on need those endpoints (the device-keys part of issue 14). The same script passes
every step against a real Synapse (test_every_step_passes_against_synapse, about 15 s)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.support.synapse import SynapseProcess
from tests.test_matrix_js_sdk import JS_DIR, NODE, node_and_sdk_problem

SCRIPT = JS_DIR / "secure_backup.mjs"
STEPS = [
    "login", "init_rust_crypto", "start_prepared", "bootstrap_cross_signing", "cross_signing_ready",
    "keys_query_shows_signatures", "replace_cross_signing_needs_password", "bootstrap_secret_storage_with_backup",
    "reset_key_backup", "room_keys_backed_up",
]
STEP_TIMEOUT_MS = 20_000  # room_keys_backed_up waits out the SDK's random backup delay (up to 10 s)


def run_script(base_url: str, user: str, work_dir: Path) -> dict[str, Any]:
    """One run of secure_backup.mjs: {"steps": {name: line}, "requests": [...], "stderr": path, "returncode"}."""
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    stderr_path = work_dir / "secure_backup.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run(
            [str(NODE), str(SCRIPT), "--base-url", base_url, "--user", user,
             "--password", PASSWORD, "--step-timeout", str(STEP_TIMEOUT_MS)],
            cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300,
            env={"PATH": "/usr/bin:/bin"})
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
def run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gateway.add_user("backup_user", PASSWORD)
    return run_script(str(gateway.http_url), "backup_user", Path(tmp_path_factory.mktemp("js")))


@pytest.mark.parametrize("step", STEPS)
def test_secure_backup_step(run: dict[str, Any], step: str) -> None:
    result = run["steps"].get(step)
    if result is None:
        tail = Path(run["stderr"]).read_text(errors="replace")[-3000:]
        pytest.fail(f"no line for {step!r} (exit {run['returncode']}); SDK log tail:\n{tail}", pytrace=False)
    if not result["ok"]:
        pytest.fail(f"{step}: {result['detail']}", pytrace=False)


def test_element_start_finds_no_backup_as_404(run: dict[str, Any]) -> None:
    """Element's first GET /room_keys/version is answered 404 M_NOT_FOUND ("no backup yet"), not M_UNRECOGNIZED."""
    assert "GET /_matrix/client/v3/room_keys/version 404 M_NOT_FOUND" in run["requests"], run["requests"]
    assert run["returncode"] == 0


def test_every_step_passes_against_synapse(tmp_path: Path) -> None:
    """The reference: the same script against a real Synapse passes every step, so a step failing against the hub
    is a hub bug, not a script bug."""
    with SynapseProcess(tmp_path / "synapse", federation=False) as synapse:
        synapse.register_user("backup_user", PASSWORD)
        assert synapse.client_url is not None
        result = run_script(synapse.client_url, "backup_user", tmp_path)
    failed = {name: line["detail"] for name, line in result["steps"].items() if not line["ok"]}
    assert not failed, failed
    assert list(result["steps"]) == STEPS, result["steps"].keys()
