"""End-to-end encryption with Element Web's engine: matrix-js-sdk 43 with its Rust crypto (initRustCrypto, the
@matrix-org/matrix-sdk-crypto-wasm the SDK depends on) on Node 22, against the CLI-started hub (issue 14).

tests/js/e2ee.mjs logs in two users with in-memory crypto stores, makes an encrypted room, and checks with real
Olm/Megolm that each decrypts the other's message, that a third device of user1 logged in later decrypts new
messages, and that once that device is deleted user2's client sends it no room key (the hub told it through
device_lists). One test per step, so a failure names the step and the requests the hub answered wrong.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_matrix_js_sdk import JS_DIR, NODE, node_and_sdk_problem

SCRIPT = JS_DIR / "e2ee.mjs"
STEP_TIMEOUT_MS = 20_000
RUN_TIMEOUT_S = 300

STEPS = ["start_with_rust_crypto", "encrypted_room", "each_decrypts_the_other", "third_device_reads_new_messages",
         "deleted_device_gets_no_keys", "no_unknown_endpoints"]


@pytest.fixture(scope="module")
def e2ee_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = node_and_sdk_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    stderr_path = Path(tmp_path_factory.mktemp("e2ee")) / "e2ee.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run(
            [str(NODE), str(SCRIPT), "--base-url", str(gateway.http_url), "--user1", "alice", "--password1", PASSWORD,
             "--user2", "bob", "--password2", PASSWORD, "--step-timeout", str(STEP_TIMEOUT_MS)],
            cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=RUN_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin"})
    steps: dict[str, Any] = {}
    requests: list[Any] = []
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "requests" in record:
            requests = record["requests"]
        else:
            steps[record["step"]] = record
    return {"steps": steps, "requests": requests, "returncode": proc.returncode, "stderr": stderr_path}


@pytest.mark.parametrize("step", STEPS)
def test_e2ee_step(e2ee_run: dict[str, Any], step: str) -> None:
    result = e2ee_run["steps"].get(step)
    if result is None:
        tail = Path(e2ee_run["stderr"]).read_text(errors="replace")[-3000:]
        pytest.fail(f"no line for {step!r} (exit {e2ee_run['returncode']}); SDK log tail:\n{tail}", pytrace=False)
    if not result["ok"]:
        pytest.fail(f"{step}: {result['detail']}", pytrace=False)


def test_script_ran_to_the_end(e2ee_run: dict[str, Any]) -> None:
    assert e2ee_run["returncode"] == 0
    assert list(e2ee_run["steps"]) == STEPS, e2ee_run["steps"].keys()
    paths = {r["path"].rsplit("/v3/", 1)[-1].split("/")[0] + "/" + r["path"].rsplit("/v3/", 1)[-1].split("/")[1]
             for r in e2ee_run["requests"] if "/v3/keys/" in r["path"]}
    assert {"keys/upload", "keys/query", "keys/claim"} <= paths, paths  # the crypto really went through the hub
