"""Shared fixtures: a running gateway started through the CLI, and accounts on it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import GatewayProcess

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
