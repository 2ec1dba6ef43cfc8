"""Launch a real Synapse homeserver (PyPI ``matrix-synapse``) on loopback.

Used by tests (federation and interop against a real peer) and by benches
(the baseline we compare the gateway with).

* :func:`ensure_synapse_venv` creates, once and under a file lock, a venv with
  ``matrix-synapse`` in ``$MATRIX_GATEWAY_PEERS_DIR/synapse-venv`` (default
  ``~/.cache/matrix-gateway-peers/synapse-venv``) and returns its python.
* :class:`SynapseProcess` generates a config in a work directory, edits it for
  loopback-only operation (plain HTTP client listener, TLS client+federation
  listener with a self-signed certificate, no certificate verification on
  outbound federation, loopback allowed as a federation target, no trusted key
  servers, SQLite, generous rate limits) and runs the homeserver.

Nothing here needs network access once the venv exists, nor any system
service; it works as root.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "SYNAPSE_REQUIREMENT",
    "SynapseError",
    "SynapseProcess",
    "ensure_synapse_venv",
    "free_tcp_ports",
    "peers_dir",
    "synapse_version",
]

#: What ``pip install`` gets.  Unpinned on purpose: pin here if a release
#: breaks us, and say why.  The version actually installed is recorded in
#: ``<venv>/.matrix-gateway-ready`` and returned by :func:`synapse_version`.
SYNAPSE_REQUIREMENT = "matrix-synapse"

_READY_MARKER = ".matrix-gateway-ready"
_VENV_INSTALL_TIMEOUT = 900.0


class SynapseError(RuntimeError):
    """Synapse could not be installed, configured, started or queried."""


# --------------------------------------------------------------------------
# venv
# --------------------------------------------------------------------------


def peers_dir() -> Path:
    """Directory holding cached peer installations (venvs)."""
    env = os.environ.get("MATRIX_GATEWAY_PEERS_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "matrix-gateway-peers"
    return base.expanduser()


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_marker(venv: Path) -> dict[str, Any] | None:
    marker = venv / _READY_MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not _venv_python(venv).exists():
        return None
    return data


def ensure_synapse_venv() -> Path:
    """Return the python of a venv with ``matrix-synapse`` installed.

    Creates it the first time (about 15 s with a warm pip cache). Safe when
    several processes call it at once: creation happens under an exclusive
    ``flock`` on ``<peers dir>/synapse-venv.lock`` and a venv only counts as
    ready once the marker file is written, so a half-built venv left by a
    killed process is rebuilt.
    """
    base = peers_dir()
    venv = base / "synapse-venv"
    if _read_marker(venv) is not None:
        return _venv_python(venv)
    base.mkdir(parents=True, exist_ok=True)
    lock_path = base / "synapse-venv.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if _read_marker(venv) is not None:  # somebody else built it
                return _venv_python(venv)
            if venv.exists():
                shutil.rmtree(venv)
            _build_venv(venv)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return _venv_python(venv)


def _run_checked(cmd: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise SynapseError(f"{what} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise SynapseError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def _build_venv(venv: Path) -> None:
    started = time.monotonic()
    _run_checked([sys.executable, "-m", "venv", str(venv)], "creating the Synapse venv", 120)
    py = str(_venv_python(venv))
    _run_checked(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SYNAPSE_REQUIREMENT],
        f"pip install {SYNAPSE_REQUIREMENT}",
        _VENV_INSTALL_TIMEOUT,
    )
    version = _run_checked(
        [py, "-c", "import importlib.metadata as m; print(m.version('matrix-synapse'))"],
        "reading the Synapse version",
        60,
    ).strip()
    marker = {
        "matrix-synapse": version,
        "requirement": SYNAPSE_REQUIREMENT,
        "python": sys.version.split()[0],
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    tmp = venv / (_READY_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, venv / _READY_MARKER)


def synapse_version() -> str:
    """Version of matrix-synapse in the cached venv (creating it if needed)."""
    py = ensure_synapse_venv()
    data = _read_marker(py.parent.parent)
    assert data is not None
    return str(data["matrix-synapse"])


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct TCP ports that are free on ``host`` right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_self_signed_cert(cert_path: Path, key_path: Path, hostname: str = "localhost") -> None:
    """Write a self-signed certificate for ``hostname`` and 127.0.0.1/::1 (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _generous(per_second: float = 100000, burst: int = 100000) -> dict[str, Any]:
    return {"per_second": per_second, "burst_count": burst}


def _rate_limits() -> dict[str, Any]:
    """``rc_*`` settings that make rate limiting irrelevant for tests/benches.

    Synapse ignores keys it does not know, so settings for newer or older
    versions can sit side by side.
    """
    g = _generous()
    return {
        "rc_message": g,
        "rc_registration": g,
        "rc_registration_token_validity": g,
        "rc_login": {"address": g, "account": g, "failed_attempts": g},
        "rc_admin_redaction": g,
        "rc_joins": {"local": g, "remote": g},
        "rc_joins_per_room": g,
        "rc_invites": {"per_room": g, "per_user": g, "per_issuer": g},
        "rc_third_party_invite": g,
        "rc_3pid_validation": g,
        "rc_media_create": g,
        "rc_presence": {"per_user": g},
        "rc_delayed_event_mgmt": g,
        "rc_room_creation": g,
        "rc_reports": g,
        "rc_key_requests": g,
        "rc_user_directory": g,
        "rc_profile": g,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000,
        },
    }


_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log_file}
    encoding: utf8
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


# Processes still running at interpreter exit are stopped (a test that
# crashed, or dropped its SynapseProcess, before calling stop() must not leave
# a Synapse behind).  Strong references to the Popen objects on purpose.
_LIVE: "set[subprocess.Popen[bytes]]" = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        except Exception:
            pass
    _LIVE.clear()


# --------------------------------------------------------------------------
# the process
# --------------------------------------------------------------------------


class SynapseProcess:
    """A Synapse homeserver on loopback, configured in ``workdir``.

    ::

        with SynapseProcess(tmp_path / "synapse") as hs:
            user_id, token = hs.register_user("alice", "pw")
            hs.api("POST", "/_matrix/client/v3/createRoom", {}, token=token)

    Attributes after :meth:`start`: ``client_url`` (plain HTTP, client API),
    ``federation_url`` (HTTPS, client + federation, or ``None``),
    ``client_port``, ``federation_port``, ``server_name``, ``pid``,
    ``ready_seconds`` (spawn to first answer of ``/_matrix/client/versions``;
    excludes config generation), ``start_seconds`` (all of :meth:`start`
    once the venv exists, including ``--generate-config`` and the certificate),
    ``tls_cert_path``, ``config_path``, ``log_path``, ``version``.
    """

    def __init__(
        self,
        workdir: Path,
        server_name: str | None = None,
        federation: bool = True,
        *,
        extra_config: dict[str, Any] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self._requested_server_name = server_name
        self.federation = federation
        self.extra_config = dict(extra_config or {})
        self.start_timeout = start_timeout

        self.server_name: str | None = None
        self.client_port: int | None = None
        self.federation_port: int | None = None
        self.client_url: str | None = None
        self.federation_url: str | None = None
        self.ready_seconds: float | None = None
        self.registration_shared_secret: str | None = None
        self.version: str | None = None
        self.config_path = self.workdir / "hs.yaml"
        self.log_path = self.workdir / "homeserver.log"
        self.stdout_path = self.workdir / "synapse.stdout"
        self.tls_cert_path = self.workdir / "tls.crt"
        self.tls_key_path = self.workdir / "tls.key"
        self.start_seconds: float | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._python: Path | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "SynapseProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise SynapseError("already started")
        self._python = ensure_synapse_venv()
        t0 = time.monotonic()
        self.version = synapse_version()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_port, fed = free_tcp_ports(2)
        self.federation_port = fed if self.federation else None
        self.server_name = self._requested_server_name or (
            f"localhost:{self.federation_port or self.client_port}"
        )
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.federation_url = (
            f"https://127.0.0.1:{self.federation_port}" if self.federation else None
        )
        self._write_config()
        self._spawn_and_wait()
        self.start_seconds = time.monotonic() - t0

    def _write_config(self) -> None:
        assert self._python is not None and self.server_name is not None
        wd = self.workdir
        if self.config_path.exists():
            self.config_path.unlink()  # regenerate: ports changed
        _run_checked(
            [
                str(self._python),
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                self.server_name,
                "--config-path",
                str(self.config_path),
                "--config-directory",
                str(wd),
                "--data-directory",
                str(wd),
                "--generate-config",
                "--report-stats=no",
            ],
            "synapse --generate-config",
            120,
        )
        cfg = yaml.safe_load(self.config_path.read_text())

        listeners: list[dict[str, Any]] = [
            {
                "port": self.client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        if self.federation:
            make_self_signed_cert(self.tls_cert_path, self.tls_key_path, "localhost")
            cfg["tls_certificate_path"] = str(self.tls_cert_path)
            cfg["tls_private_key_path"] = str(self.tls_key_path)
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                }
            )
        self.registration_shared_secret = cfg.get("registration_shared_secret") or secrets.token_hex(32)
        log_config_path = wd / "log.yaml"
        log_config_path.write_text(_LOG_CONFIG.format(log_file=json.dumps(str(self.log_path))))

        cfg.update(
            {
                "server_name": self.server_name,
                "pid_file": str(wd / "homeserver.pid"),
                "listeners": listeners,
                "database": {
                    "name": "sqlite3",
                    "args": {"database": str(wd / "homeserver.db")},
                },
                "log_config": str(log_config_path),
                "media_store_path": str(wd / "media_store"),
                "signing_key_path": cfg.get("signing_key_path") or str(wd / "signing.key"),
                "report_stats": False,
                "enable_metrics": False,
                "enable_registration": False,
                "registration_shared_secret": self.registration_shared_secret,
                "federation_verify_certificates": False,
                # Loopback is in Synapse's default block list; the allow list
                # wins over it.  federation_ip_range_blacklist (legacy, still
                # honoured in 1.163) makes federation block only 0.0.0.0/::.
                "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
                "federation_ip_range_blacklist": [],
                "trusted_key_servers": [],
                "suppress_key_server_warning": True,
                "serve_server_wellknown": False,
            }
        )
        cfg.update(_rate_limits())
        cfg.update(self.extra_config)
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def _spawn_and_wait(self) -> None:
        assert self._python is not None
        out = open(self.stdout_path, "ab")
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [str(self._python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C in the test runner does not hit
                # it half-way; stop() (or the atexit hook) ends it.
                start_new_session=True,
            )
        finally:
            out.close()
        _LIVE.add(self._proc)
        deadline = t0 + self.start_timeout
        url = f"{self.client_url}/_matrix/client/versions"
        interval = 0.02
        while True:
            rc = self._proc.poll()
            if rc is not None:
                _LIVE.discard(self._proc)
                self._proc = None
                self.returncode = rc
                raise SynapseError(
                    f"Synapse exited with {rc} while starting:\n{self._diagnostics()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SynapseError(
                    f"Synapse not ready after {self.start_timeout:.0f}s:\n{self._diagnostics()}"
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 0.1)
        self.ready_seconds = time.monotonic() - t0

    def _diagnostics(self) -> str:
        parts = []
        for p in (self.stdout_path, self.log_path):
            try:
                parts.append(f"--- {p.name} (tail) ---\n{p.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code.

        Idempotent: later calls return the same code.
        """
        proc = self._proc
        if proc is None:
            return self.returncode
        self._proc = None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _LIVE.discard(proc)
        self.returncode = proc.returncode
        return self.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size of the homeserver process (VmRSS), in bytes."""
        if self._proc is None:
            raise SynapseError("not running")
        with open(f"/proc/{self._proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise SynapseError("VmRSS not found")

    # -- HTTP --------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        ok: bool = True,
    ) -> Any:
        """Call the client listener; return decoded JSON.

        ``path`` is taken as is (quote ids yourself). With ``ok=True`` a non-2xx
        answer raises :class:`SynapseError`; with ``ok=False`` it returns
        ``(status, json)``.
        """
        if self.client_url is None:
            raise SynapseError("not started")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.client_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        if not ok:
            return status, payload
        if not 200 <= status < 300:
            raise SynapseError(f"{method} {path} -> {status}: {payload}")
        return payload

    def register_user(self, localpart: str, password: str, admin: bool = False) -> tuple[str, str]:
        """Create a user via the shared-secret admin API; return (user_id, access_token).

        Same mechanism as ``register_new_matrix_user`` but without spawning a
        process.
        """
        assert self.registration_shared_secret is not None
        nonce = self.api("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(nonce.encode())
        mac.update(b"\x00")
        mac.update(localpart.encode())
        mac.update(b"\x00")
        mac.update(password.encode())
        mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        res = self.api(
            "POST",
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        return res["user_id"], res["access_token"]

    def login(self, localpart: str, password: str, device_id: str | None = None) -> str:
        """Password login on the client API; returns a new access token (new device)."""
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        }
        if device_id:
            body["device_id"] = device_id
        return self.api("POST", "/_matrix/client/v3/login", body)["access_token"]

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    @staticmethod
    def quote(s: str) -> str:
        """Percent-encode a path segment (room ids, user ids, event ids)."""
        return urllib.parse.quote(s, safe="")
