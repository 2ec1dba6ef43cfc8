"""Simplified Sliding Sync (issue 19) with Element X's engine: matrix-rust-sdk's RoomListService
(native sliding sync) through PyPI's matrix-sdk-python 0.18.0 (UniFFI bindings of matrix-sdk-ffi)
against the CLI-started hub. tests/rust_sdk/prepare.py fetches it (tests/run.sh runs that; see its
docstring for why it is unpacked, not pip-installed, on glibc < 2.38); tests/rust_sdk/client.py
drives it in a subprocess and prints one JSON line per step; each step is its own test here.
Missing, the tests fail: they never skip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

RUST_DIR = Path(__file__).resolve().parent / "rust_sdk"
STEPS = ["room_list_sorted_by_recency", "message_bumps_room_to_top", "invite_appears", "read_receipt_clears_count"]


@pytest.fixture(scope="module")
def rust_run(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not (RUST_DIR / "lib" / ".prepared").exists():
        pytest.fail("matrix-sdk-python is not prepared: run `python tests/rust_sdk/prepare.py` (tests/run.sh does)",
                    pytrace=False)
    users = ("ssrs1", "ssrs2")
    for user in users:
        gateway.add_user(user, PASSWORD)
    assert gateway.http_url is not None
    stderr_path = Path(tmp_path_factory.mktemp("ssrs")) / "stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run([sys.executable, str(RUST_DIR / "client.py"), "--base-url", gateway.http_url,
                               "--user1", users[0], "--user2", users[1], "--password", PASSWORD],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=150)
    steps = {rec["step"]: rec for rec in map(json.loads, proc.stdout.splitlines())}
    return {"steps": steps, "stderr": stderr_path.read_text()[-3000:], "returncode": proc.returncode}


@pytest.mark.parametrize("step", STEPS)
def test_rust_sdk_sliding_sync_step(rust_run: dict[str, Any], step: str) -> None:
    record = rust_run["steps"].get(step)
    assert record is not None, f"step {step} not run (rc {rust_run['returncode']}): {rust_run['stderr']}"
    assert record["ok"], f"{record}\n--- stderr tail ---\n{rust_run['stderr']}"
    if step == "room_list_sorted_by_recency":
        assert record["names"] == ["rust 0", "rust 2", "rust 1"]
    if step == "message_bumps_room_to_top":
        assert record["seconds"] < 1.5
