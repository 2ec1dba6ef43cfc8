"""The MQTT TLS listener's certificate: the operator's PEM files, or a self-signed pair in the data
dir made on first use (`DATA_DIR/mqtt.crt`, `mqtt.key` mode 0600).

The pair is made the way the federation listener makes its own (matrix_core/federation/tls.py),
in a short-lived child process, so `cryptography` (~9 MB resident) never loads into the hub.
Only paths are ever logged, never certificate or key contents.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

log = logging.getLogger("frontends.mqtt")

CERT_FILE = "mqtt.crt"
KEY_FILE = "mqtt.key"


class TlsConfigError(ValueError):
    """A certificate or key setting that cannot work, worded for the config file's author."""


async def certificate_paths(data_dir: Path | None, server_name: str, cert: str, key: str) -> tuple[Path, Path]:
    """The certificate and key to serve: the configured files, else ours (made if missing)."""
    if cert or key:
        if not (cert and key):
            raise TlsConfigError("mqtt_tls_cert and mqtt_tls_key must be given together")
        paths = Path(cert), Path(key)
        for path in paths:
            if not path.is_file():
                raise TlsConfigError(f"mqtt TLS: {path}: no such file")
        return paths
    if data_dir is None:
        raise TlsConfigError("mqtt TLS: no mqtt_tls_cert/mqtt_tls_key and no data dir for a self-signed pair")
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        for path in (cert_path, key_path):  # a half-written pair from an interrupted first run
            if path.exists():
                path.unlink()
        from matrix_core.federation.tls import make_self_signed_in_child

        await asyncio.to_thread(make_self_signed_in_child, cert_path, key_path, server_name)
        log.info("made a self-signed MQTT TLS certificate %s", cert_path)
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context; a bad file is refused with its path, never its content."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"mqtt TLS: cannot load certificate {cert_path} / key {key_path}: "
                             f"{getattr(exc, 'reason', None) or type(exc).__name__}") from None
    return ctx
