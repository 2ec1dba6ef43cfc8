"""Launch a real Home Assistant (PyPI ``homeassistant``) on loopback, for the tests of issue 16.

* :func:`ensure_home_assistant_venv` creates, once and under a file lock, a venv with
  ``homeassistant==2024.3.3`` (the last release for Python 3.11) and what the integrations used
  here need, in ``$MATRIX_GATEWAY_PEERS_DIR/homeassistant-venv`` (default
  ``~/.cache/matrix-gateway-peers``, like tests/support/synapse.py), and returns its ``hass``.
  About 90 s and 400 MB the first time.
* :class:`HomeAssistantProcess` writes a minimal configuration (no ``default_config``: nothing
  that reaches the network or needs the frontend package), runs ``hass -c DIR --skip-pip`` on a
  free loopback port, onboards its owner through the REST API (the access token is what the
  tests use) and configures the MQTT integration through its config flow REST API.

Only loopback traffic; nothing is installed at run time (``--skip-pip``).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.synapse import free_tcp_ports, peers_dir

#: What ``pip install`` gets. homeassistant 2024.3.3 needs Python 3.11 or 3.12; josepy 2 broke its
#: acme import; paho-mqtt 1.6.1 is what its MQTT integration pins; Pillow and janus are the
#: requirements of the integrations onboarding and MQTT depend on (image_upload, file_upload),
#: which `hass --skip-pip` would otherwise lack.
HOME_ASSISTANT_REQUIREMENTS = [
    "homeassistant==2024.3.3", "josepy<2", "paho-mqtt==1.6.1",
    # the pinned requirements of the integrations HA always sets up (bootstrap.DEFAULT_INTEGRATIONS,
    # frontend among them: without it HA starts in recovery mode) and of onboarding, mqtt, and
    # what they depend on; `hass --skip-pip` installs nothing at run time
    "home-assistant-frontend==20240307.0", "Pillow==10.2.0", "janus==1.0.0", "psutil-home-assistant==0.0.1",
    "securetar==2024.2.1", "ifaddr==0.2.0", "SQLAlchemy==2.0.27", "fnv-hash-fast==0.5.0",
]

_READY_MARKER = ".matrix-gateway-ready"
_VENV_INSTALL_TIMEOUT = 1800.0
START_TIMEOUT = 180.0


class HomeAssistantError(RuntimeError):
    """Home Assistant could not be installed, started or configured."""


def _venv_ready(venv: Path) -> bool:
    try:
        data = json.loads((venv / _READY_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return data.get("requirements") == HOME_ASSISTANT_REQUIREMENTS and (venv / "bin" / "hass").exists()


def ensure_home_assistant_venv() -> Path:
    """The ``hass`` of a venv with Home Assistant, built the first time under an exclusive flock
    (a half-built venv, without the marker, is rebuilt)."""
    if not ((3, 11) <= sys.version_info[:2] <= (3, 12)):
        raise HomeAssistantError(f"Home Assistant 2024.3 needs Python 3.11 or 3.12, not {sys.version.split()[0]}")
    base = peers_dir()
    venv = base / "homeassistant-venv"
    if _venv_ready(venv):
        return venv / "bin" / "hass"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "homeassistant-venv.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not _venv_ready(venv):
                if venv.exists():
                    shutil.rmtree(venv)
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
                proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *HOME_ASSISTANT_REQUIREMENTS],
                                      capture_output=True, text=True, timeout=_VENV_INSTALL_TIMEOUT)
                if proc.returncode != 0:
                    raise HomeAssistantError(f"pip install {HOME_ASSISTANT_REQUIREMENTS} failed: {proc.stderr[-2000:]}")
                (venv / _READY_MARKER).write_text(json.dumps({"requirements": HOME_ASSISTANT_REQUIREMENTS}))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return venv / "bin" / "hass"


CONFIGURATION = """\
homeassistant:
  name: matrix-gateway test
  latitude: 52.0
  longitude: 4.0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
"""


class HomeAssistantProcess:
    """One Home Assistant on a free loopback port, with its config dir under `work_dir`."""

    OWNER = "owner"
    OWNER_PASSWORD = "owner password 1"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.config_dir = work_dir / "config"
        self.port = free_tcp_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        self.client_id = f"{self.base}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        hass = ensure_home_assistant_venv()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_dir / "configuration.yaml"
        if not config.exists():
            config.write_text(CONFIGURATION.format(port=self.port))
        log = open(self.work_dir / "hass.log", "ab")
        self.proc = subprocess.Popen([str(hass), "-c", str(self.config_dir), "--skip-pip"], stdout=log,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise HomeAssistantError(f"hass exited with {self.proc.returncode}:\n{self.read_log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/onboarding", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 404):  # up: onboarding done (404) or the API wants a token
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop(10)
                raise HomeAssistantError(f"hass did not answer within {START_TIMEOUT} s:\n{self.read_log()[-4000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def read_log(self) -> str:
        try:
            return (self.work_dir / "hass.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None,
                auth: bool = True) -> tuple[int, Any]:
        headers: dict[str, str] = {}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def onboard(self) -> str:
        """Create the owner (onboarding's first step) and trade its auth code for an access token."""
        status, body = self.request("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "Owner", "username": self.OWNER,
            "password": self.OWNER_PASSWORD, "language": "en"}, auth=False)
        if status != 200:
            raise HomeAssistantError(f"onboarding refused: {status} {body}")
        status, tokens = self.request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": body["auth_code"], "client_id": self.client_id}, auth=False)
        if status != 200:
            raise HomeAssistantError(f"token refused: {status} {tokens}")
        self.token = str(tokens["access_token"])
        # The later steps (core_config sets up weather, radio and TTS integrations that need more
        # packages and the network) are not needed for the API.
        return self.token

    def configure_mqtt(self, port: int, username: str, password: str) -> dict[str, Any]:
        """The MQTT integration's config flow, as its dialog would: broker, port, credentials."""
        status, flow = self.request("POST", "/api/config/config_entries/flow",
                                    {"handler": "mqtt", "show_advanced_options": False})
        if status != 200:
            raise HomeAssistantError(f"MQTT config flow refused: {status} {flow}")
        status, result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {
            "broker": "127.0.0.1", "port": port, "username": username, "password": password})
        if status != 200 or result.get("type") != "create_entry":
            raise HomeAssistantError(f"MQTT broker step refused: {status} {result}")
        return dict(result)

    def mqtt_entry_id(self) -> str:
        status, entries = self.request("GET", "/api/config/config_entries/entry?domain=mqtt")
        if status != 200 or not entries:
            raise HomeAssistantError(f"no MQTT config entry: {status} {entries}")
        return str(entries[0]["entry_id"])

    def reconfigure_mqtt(self, port: int, username: str, password: str, protocol: str = "3.1.1",
                         birth_qos: int = 0) -> None:
        """The MQTT integration's options flow (its "Configure" dialog, advanced mode): another
        account, protocol ("3.1.1" or "5", HA's const.SUPPORTED_PROTOCOLS) and birth QoS. HA
        reloads the integration when the flow ends (its update listener); one HA start serves
        several broker set-ups this way."""
        status, flow = self.request("POST", "/api/config/config_entries/options/flow",
                                    {"handler": self.mqtt_entry_id(), "show_advanced_options": True})
        if status != 200 or flow.get("step_id") != "broker":
            raise HomeAssistantError(f"MQTT options flow refused: {status} {flow}")
        path = f"/api/config/config_entries/options/flow/{flow['flow_id']}"
        basic = {"broker": "127.0.0.1", "port": port, "username": username, "password": password}
        status, form = self.request("POST", path, {**basic, "advanced_options": True})  # shows the advanced form
        if status != 200 or form.get("step_id") != "broker":
            raise HomeAssistantError(f"MQTT advanced options refused: {status} {form}")
        status, form = self.request("POST", path, {**basic, "protocol": protocol})
        if status != 200 or form.get("step_id") != "options":
            raise HomeAssistantError(f"MQTT broker options refused: {status} {form}")
        status, done = self.request("POST", path, {
            "discovery": True, "birth_enable": True, "birth_topic": "homeassistant/status",
            "birth_payload": "online", "birth_qos": birth_qos, "birth_retain": False})
        if status != 200 or done.get("type") != "create_entry":
            raise HomeAssistantError(f"MQTT options refused: {status} {done}")

    def state(self, entity_id: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"/api/states/{entity_id}")
        return body if status == 200 else None

    def wait_state(self, entity_id: str, expected: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """The entity's state once it exists (and equals `expected`, if given); HA's REST API has
        no long poll, so this asks every 0.2 s within a bounded time."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(entity_id)
            if state is not None and (expected is None or state.get("state") == expected):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{entity_id}: {state} (expected {expected}) after {timeout} s")
            time.sleep(0.2)

    def call_service(self, domain: str, service: str, data: dict[str, Any]) -> None:
        status, body = self.request("POST", f"/api/services/{domain}/{service}", data)
        if status != 200:
            raise HomeAssistantError(f"{domain}.{service} refused: {status} {body}")
