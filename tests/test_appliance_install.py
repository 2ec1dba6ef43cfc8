"""systemd/install.sh in its --root mode (as CI and image builders run it): a real venv install,
the unit, the system user, a LAN config with auth on, the first admin and device token printed
once; the installed hub then runs and accepts exactly those credentials."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import tomllib
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import free_port

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
STATE = "var/lib/matrix-gateway"


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = Path(tmp_path_factory.mktemp("image")) / "root"
    (root / "boot/firmware").mkdir(parents=True)
    # preconfigured on the SD card's boot partition before first boot
    (root / "boot/firmware/matrix-gateway.toml").write_text('server_name = "hub.local"\nretention_default_days = 90\n')
    proc = install("--root", str(root), "--admin", "ada", "--device", "thermometer")
    assert proc.returncode == 0, proc.stderr
    yield root, proc.stdout


def credentials(stdout: str) -> dict[str, str]:
    found = dict(re.findall(r"^(password|device token|admin account):\s+(\S+)", stdout, re.M))
    assert set(found) == {"password", "device token", "admin account"}, stdout
    return found


def test_files_user_and_config(installed: tuple[Path, str]) -> None:
    root, _ = installed
    unit = (root / "etc/systemd/system/matrix-gateway.service").read_text()
    assert "ExecStart=/opt/matrix-gateway/venv/bin/matrix-gateway run --data-dir /var/lib/matrix-gateway" in unit
    assert os.access(root / "opt/matrix-gateway/venv/bin/matrix-gateway", os.X_OK)
    assert (root / "usr/lib/sysusers.d/matrix-gateway.conf").exists()
    user = [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("matrix-gateway:")]
    assert len(user) == 1 and user[0].endswith(":/var/lib/matrix-gateway:/usr/sbin/nologin")
    uid = int(user[0].split(":")[2])
    state = root / STATE
    assert state.stat().st_uid == uid and state.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_uid == uid for p in state.iterdir())
    config = tomllib.loads((state / "gateway.toml").read_text())
    assert config["bind"] == "0.0.0.0" and config["mdns"] is True and config["enable_registration"] is False
    assert config["server_name"] == "hub.local" and config["retention_default_days"] == 90  # the preseed
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}",
                               "matrix-gateway.service"], capture_output=True, text=True)
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert level <= 2.5


def test_the_installed_hub_accepts_the_printed_credentials(installed: tuple[Path, str]) -> None:
    root, stdout = installed
    creds = credentials(stdout)
    assert creds["admin account"] == "@ada:hub.local"
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(root / "opt/matrix-gateway/venv/bin/matrix-gateway"), "run", "--data-dir", str(root / STATE),
         "--bind", "127.0.0.1", "--http-port", str(port), "--coap-port", str(free_port()), "--coaps-port",
         str(free_port()), "--mqtt-port", str(free_port()), "--federation-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and "ready" in proc.stdout.readline()

        def post(path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), method="POST")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        login = {"type": "m.login.password", "user": "ada", "password": creds["password"]}
        assert post("/_matrix/client/v3/login", login)[0] == 200
        assert post("/_matrix/client/v3/login", {**login, "password": "guess"})[0] == 403
        status, body = post("/_matrix/client/v3/createRoom", {"name": "Kitchen"}, creds["device token"])
        assert status == 200 and body["room_id"].startswith("!")
        assert post("/_matrix/client/v3/createRoom", {"name": "x"})[0] == 401  # authentication is on
        assert post("/_matrix/client/v3/register", {"username": "eve", "password": "x" * 12})[0] in (403, 401)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_reinstall_keeps_the_hub(installed: tuple[Path, str]) -> None:
    root, first = installed
    db_before = (root / STATE / "signing.key").read_bytes()
    again = install("--root", str(root), "--admin", "ada")
    assert again.returncode == 0, again.stderr
    assert "kept the existing hub" in again.stdout and "password:" not in again.stdout
    assert (root / STATE / "signing.key").read_bytes() == db_before


def test_scheduling_for_the_next_boot(tmp_path: Path) -> None:
    proc = install("--root", str(tmp_path), "--at-next-boot", "--server-name", "hub.local")
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "etc/systemd/system/matrix-gateway-install.service"
    assert "After=network-online.target" in unit.read_text() and "--server-name hub.local" in unit.read_text()
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants/matrix-gateway-install.service").is_symlink()
    verify = subprocess.run(["systemd-analyze", "verify", unit.name], cwd=unit.parent, capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    assert not (tmp_path / "opt").exists()  # nothing installed yet


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option --bogus"),
    (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
    (["--preseed", "/nonexistent.toml"], "preseed file /nonexistent.toml not found"),
    (["--admin"], "--admin needs a value"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = install("--root", str(tmp_path / "r"), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_preseed_names_the_key_and_writes_nothing(tmp_path: Path) -> None:
    import sys

    seed = tmp_path / "matrix-gateway.toml"
    seed.write_text('server_name = "hub.local"\nbindd = "0.0.0.0"\n')
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "gateway.ops.firstrun", "--data-dir", str(data), "--preseed",
                           str(seed)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown setting 'bindd'" in proc.stderr
    assert not (data / "gateway.toml").exists() and not (data / "homeserver.db").exists()
