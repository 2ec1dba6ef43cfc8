"""Shared fixtures: a running gateway started through the CLI, and accounts on it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import os

import pytest
from hypothesis import settings

from tests.support.gateway import GatewayProcess

# Property tests: no per-example deadline (the machine is shared with live hubs under load), and
# in CI a fixed seed so a run is reproducible.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One hub per test module, with users alice and bob; stopped (SIGTERM, exit 0) at the end."""
    data_dir = Path(tmp_path_factory.mktemp("hub")) / "data"
    gw = GatewayProcess(data_dir)
    gw.start()
    gw.add_user("alice", PASSWORD, admin=True)
    gw.add_user("bob", PASSWORD)
    yield gw
    assert gw.stop() == 0, gw.read_log()


# The slow real-peer groups: a real Synapse (its own venv, seconds to start), Home Assistant (a
# 570 MB venv), the browser, the client SDKs that start a runtime per step (matrix-js-sdk on Node,
# matrix-rust-sdk), the CLI clients (matrix-commander, synadm) and the appliance install (a venv
# built per test). They run in CI too, as their own pytest run after the default suite
# (tests/run.sh), so the default suite stays within its 15 minutes.
SLOW_PEER_FILES = frozenset({
    "test_home_assistant.py",
    "test_matrix_js_sdk.py", "test_e2ee_js_sdk.py", "test_secure_backup_js.py", "test_sliding_sync_js_sdk.py",
    "test_sliding_sync_rust_sdk.py",
    "test_media_matrix_commander.py", "test_admin_synadm.py",
    "test_appliance_install.py",
})
SLOW_PEER_PREFIXES = ("test_web_pages",)  # the browser: test_web_pages.py, test_web_pages_<page>.py


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if ("synapse" in name or name in SLOW_PEER_FILES or name.startswith(SLOW_PEER_PREFIXES)
                or "synapse" in item.name):
            item.add_marker(pytest.mark.slow_peers)
