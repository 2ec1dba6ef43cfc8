"""Start the gateway as a user would (the `matrix-gateway` CLI) on free loopback ports.

Used by the tests and the benches. Readiness is the CLI's own "ready" line on stdout: no sleeps.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def gateway_cli(*args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS...` the way a user runs `matrix-gateway ARGS...`."""
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, input=input_text, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"matrix-gateway {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class GatewayProcess:
    """One hub process on free ports with its own data dir."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, server_name: str = "localhost",
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.env = dict(env or {})  # extra environment, e.g. NOTIFY_SOCKET as systemd sets it
        self.extra_args = list(extra_args or [])
        self.server_name = server_name
        # A command the hub runs under, e.g. tests/support/full_disk.py's wrapper (a tmpfs data dir).
        self.wrapper: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.http_port = free_port()
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.coaps_port = free_port(socket.SOCK_DGRAM)
        self.mqtt_port = free_port()
        self.federation_port = free_port()
        self.http_url: str | None = None
        self.ready_seconds: float | None = None
        self.stdout_lines: list[str] = []

    def __enter__(self) -> "GatewayProcess":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def run_args(self) -> list[str]:
        return [
            "run", "--data-dir", str(self.data_dir), "--server-name", self.server_name,
            "--http-port", str(self.http_port), "--coap-port", str(self.coap_port),
            "--coaps-port", str(self.coaps_port),
            "--mqtt-port", str(self.mqtt_port), "--federation-port", str(self.federation_port),
            *self.extra_args,
        ]

    def start(self) -> None:
        started = time.monotonic()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "gateway", *self.run_args()], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=open(self.log_path(), "a"), text=True,
        )
        assert self.proc.stdout is not None
        deadline = started + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(f"gateway not ready in {READY_TIMEOUT}s; log: {self.read_log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"gateway exited with {code} before ready; log: {self.read_log()}")
            self.stdout_lines.append(line)
            if "ready" in line:
                break
        self.ready_seconds = time.monotonic() - started
        self.http_url = f"http://127.0.0.1:{self.http_port}"

    def log_path(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def read_log(self) -> str:
        try:
            return self.log_path().read_text()[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def add_user(self, localpart: str, password: str, admin: bool = False, guest: bool = False) -> str:
        args = ["user", "add", localpart, "--password", password, "--data-dir", str(self.data_dir)]
        if admin:
            args.append("--admin")
        if guest:
            args.append("--guest")
        gateway_cli(*args)
        return f"@{localpart}:{self.server_name}"

    def device_token(self, localpart: str, device_id: str) -> str:
        return gateway_cli("device", "add", localpart, device_id, "--data-dir", str(self.data_dir)).stdout.strip()

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                raw: bytes | None = None) -> tuple[int, Any]:
        """A plain HTTP call with urllib (an independent client, not our own code)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"{self.http_url}{path}", data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def login(self, localpart: str, password: str) -> str:
        status, body = self.request("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        })
        if status != 200:
            raise RuntimeError(f"login failed: {status} {body}")
        return body["access_token"]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout is not None:
            self.stdout_lines.extend(self.proc.stdout.readlines())
            self.proc.stdout.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
