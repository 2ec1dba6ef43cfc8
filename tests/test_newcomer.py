"""A newcomer's first five minutes (issue 18): a port already in use is one line naming the port, its
config key and flag (no traceback, exit status non-zero); coaps without its DTLS library is one
info line, not a warning; `device add` says how to use the token, on stderr, stdout unchanged."""
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import REPO_ROOT, GatewayProcess, gateway_cli

PASSWORD = "a long household password"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the port runs (made once: later starts skip the first run's key making)."""
    return tmp_path_factory.mktemp("ports") / "data"


@pytest.mark.parametrize("attr,key,flag,udp", [
    ("http_port", "http_port", "--http-port", False),
    ("mqtt_port", "mqtt_port", "--mqtt-port", False),
    ("coap_port", "coap_port", "--coap-port", True),
    ("coaps_port", "coaps_port", "--coaps-port", True),
    ("federation_port", "federation_port", "--federation-port", False),
])
def test_a_port_in_use_is_one_line_naming_it(data_dir: Path, attr: str, key: str, flag: str, udp: bool) -> None:
    hub = GatewayProcess(data_dir)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        if not udp:
            other.listen()
        port = other.getsockname()[1]
        setattr(hub, attr, port)
        proc = subprocess.run([sys.executable, "-m", "gateway", *hub.run_args()], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode not in (0, None), proc
    assert "Traceback" not in proc.stderr, proc.stderr
    complaint = [line for line in proc.stderr.splitlines() if line.startswith("matrix-gateway:")]
    assert len(complaint) == 1, proc.stderr
    assert f"port {port} ({key}, {flag}) on 127.0.0.1 is already in use" in complaint[0], complaint
    assert complaint[0].count("port ") == 1, complaint  # only the taken one: the hub closed its own
    assert "ready" not in proc.stdout


@pytest.fixture
def hub_without_dtls(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A hub on a Python where the DTLS library cannot be imported (as without the coaps extra)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "DTLSSocket.py").write_text("raise ImportError('No module named DTLSSocket (test shim)')\n")
    with GatewayProcess(tmp_path / "data", env={"PYTHONPATH": str(shim)}) as gw:
        yield gw


def test_coaps_without_its_library_is_one_info_line(hub_without_dtls: GatewayProcess) -> None:
    log = hub_without_dtls.log_path().read_text()
    coaps_lines = [line for line in log.splitlines() if re.search(r"(?<![_/])\bcoaps\b|DTLS", line)]
    assert len(coaps_lines) == 1, log
    assert " INFO " in coaps_lines[0] and "pip install 'matrix-gateway[coaps]'" in coaps_lines[0], coaps_lines
    assert not [line for line in log.splitlines() if " WARNING " in line and "setup code" not in line], log
    ready = hub_without_dtls.stdout_lines[-1]
    assert f"coap=coap://127.0.0.1:{hub_without_dtls.coap_port}" in ready and "coaps=" not in ready


def test_device_add_explains_the_token_on_stderr(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as hub:
        hub.add_user("alice", PASSWORD)
        out = gateway_cli("device", "add", "alice", "kitchen", "--data-dir", str(hub.data_dir))
        token = out.stdout.strip()
        assert out.stdout == token + "\n"  # scripts read the token alone from stdout, as before
        assert "it is the device's password" in out.stderr
        lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
                 for line in out.stderr.splitlines() if line.startswith("  ")}
        assert set(lines) >= {"MQTT", "CoAP", "HTTP"}
        assert f"?a={token}" in lines["CoAP"] and f"Bearer {token}" in lines["HTTP"]
        # the MQTT example works as printed (the hub's own port, the account, the token)
        pub = subprocess.run(shlex.split(lines["MQTT"]) + ["-q", "1"], capture_output=True, text=True, timeout=20)
        assert pub.returncode == 0, pub.stderr
        # with --psk the key lines stay on stdout, right after the token
        out = gateway_cli("device", "add", "alice", "therm1", "--psk", "--data-dir", str(hub.data_dir))
        assert [line.split("=")[0] for line in out.stdout.splitlines()[1:]] == ["psk_identity", "psk"]
        assert "coaps" in out.stderr
