"""mypy over the homeserver core, the front ends and gateway/ (config, CLI, start-up, ops): the wiring is
checked in CI, so a new error fails the build (config: [tool.mypy] in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys

from tests.support.gateway import REPO_ROOT

CHECKED = ["matrix_core", "frontends", "gateway"]


def test_mypy_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", *CHECKED], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
