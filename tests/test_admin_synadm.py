"""A real Synapse admin tool against the hub: synadm (PyPI), non-interactive with a config file.
Its `user list`, `user details`, `room list` and `user deactivate` use the admin API the hub
implements (docs/admin-api.md) and must work unchanged."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

SYNADM = shutil.which("synadm") or str(Path(sys.executable).parent / "synadm")
if not Path(SYNADM).exists():
    pytest.skip("synadm is not installed (pip install synadm: the test extras)", allow_module_level=True)


@pytest.fixture(scope="module")
def synadm(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    token = gateway.login("alice", PASSWORD)
    config = tmp_path_factory.mktemp("synadm") / "synadm.yaml"
    config.write_text(
        f'user: "@alice:localhost"\ntoken: {token}\nprotocol: http\nbase_url: {gateway.http_url}\n'
        "admin_path: /_synapse/admin\nmatrix_path: /_matrix\nformat: json\ntimeout: 30\n"
        "server_discovery: well-known\nhomeserver: localhost\nssl_verify: false\n")

    def run(*args: str) -> Any:
        proc = subprocess.run([SYNADM, "-c", str(config), "--batch", "-o", "json", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" not in proc.stderr, proc.stderr  # synadm logs an error answer as a warning
        return proc.stdout

    return run


def test_synadm_users_rooms_and_deactivation(gateway: GatewayProcess, synadm: Any) -> None:
    gateway.add_user("zed", PASSWORD)
    status, room = gateway.request("POST", "/_matrix/client/v3/createRoom", {"name": "Garden"},
                                   token=gateway.login("alice", PASSWORD))
    assert status == 200

    users = json.loads(synadm("user", "list"))
    assert {"@alice:localhost", "@bob:localhost", "@zed:localhost"} <= {u["name"] for u in users["users"]}
    details = json.loads(synadm("user", "details", "zed"))
    assert details["name"] == "@zed:localhost" and details["deactivated"] is False
    rooms = json.loads(synadm("room", "list"))
    assert room["room_id"] in [r["room_id"] for r in rooms["rooms"]]
    assert next(r for r in rooms["rooms"] if r["room_id"] == room["room_id"])["name"] == "Garden"

    out = synadm("user", "deactivate", "zed")  # prints the details, the rooms, then the result
    assert '"id_server_unbind_result": "success"' in out
    with pytest.raises(RuntimeError):
        gateway.login("zed", PASSWORD)
    listed = json.loads(synadm("user", "list", "--deactivated"))
    assert next(u for u in listed["users"] if u["name"] == "@zed:localhost")["deactivated"] is True
    assert json.loads(synadm("version"))["server_version"].startswith("matrix-gateway")
