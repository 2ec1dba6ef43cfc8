"""The federation listener's TLS: a self-signed certificate made on first run, or the operator's.

Synapse federates over HTTPS only. A self-signed certificate is enough for peers configured not to
verify (tests, a LAN); for the open internet the operator names a real certificate and key in the
config (`federation_tls_cert`, `federation_tls_key`). The private key file is mode 0600 and its
content is never logged.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CERT_FILE = "federation.crt"
KEY_FILE = "federation.key"


def _hostname_of(server_name: str) -> str:
    if server_name.startswith("["):
        return server_name[1 : server_name.index("]")]
    return server_name.rsplit(":", 1)[0] if ":" in server_name else server_name


def make_self_signed(cert_path: Path, key_path: Path, server_name: str) -> None:
    """Write a self-signed ECDSA P-256 certificate for the server name's host (plus loopback)."""
    # Imported here: only the first run of a hub without a named certificate needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = _hostname_of(server_name)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    alt: list[x509.GeneralName] = []
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    for loop in ("127.0.0.1", "::1"):
        if loop != host:
            alt.append(x509.IPAddress(ipaddress.ip_address(loop)))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_self_signed_in_child(cert_path: Path, key_path: Path, server_name: str) -> None:
    """`make_self_signed` in a short-lived child process: loading `cryptography` would add ~9 MB
    to the hub's resident memory for good, for a job done once."""
    done = subprocess.run(
        [sys.executable, "-m", "matrix_core.federation.tls", str(cert_path), str(key_path), server_name],
        capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"making the federation certificate failed: {done.stderr.strip()[-500:]}")


def certificate_paths(data_dir: Path, server_name: str, cert: str = "", key: str = "") -> tuple[Path, Path]:
    """The certificate and key to serve: the configured ones, else ours (made if missing)."""
    if cert or key:
        if not (cert and key):
            raise ValueError("federation_tls_cert and federation_tls_key must be given together")
        cert_path, key_path = Path(cert), Path(key)
        for p in (cert_path, key_path):
            if not p.is_file():
                raise ValueError(f"{p}: no such file")
        return cert_path, key_path
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        for p in (cert_path, key_path):
            if p.exists():
                p.unlink()
        make_self_signed_in_child(cert_path, key_path, server_name)
        log.info("made a self-signed federation certificate %s for %s", cert_path, _hostname_of(server_name))
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(verify: bool) -> ssl.SSLContext:
    """For outbound federation: the system's CAs and hostname checks, unless told not to verify."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


if __name__ == "__main__":  # the child process of make_self_signed_in_child
    make_self_signed(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
