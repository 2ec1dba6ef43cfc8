"""A real mosquitto broker on a free loopback port with a temporary config (the remote broker of
the uplink tests and bench). Ready when mosquitto says it is running (its log, on stderr): no sleeps."""
from __future__ import annotations

import datetime
import ipaddress
import os
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .gateway import free_port


class Mosquitto:
    """`mosquitto -c CONF`; `stop()` and `start()` again keep the port (a remote going away and back).
    `users`: name -> password (else anonymous); `tls`: (ca, cert, key) PEM paths for a TLS listener;
    `persistent`: clean_session=0 subscribers keep their subscriptions and queues over a restart."""

    def __init__(self, tmp: Path, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, persistent: bool = False) -> None:
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.tmp.chmod(0o755)  # mosquitto started as root reads its files as the `mosquitto` user
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "user root", "log_type notice", "log_type information"]
        if users:
            passwords = tmp / "passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwords), user, password],
                               check=True, capture_output=True)
            passwords.chmod(0o644)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            ca, cert, key = tls
            for path in tls:
                path.chmod(0o644)
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        if persistent:  # sessions (and what is queued for them) survive stop() and start()
            lines += ["persistence true", f"persistence_location {tmp}/", "max_queued_messages 0",
                      "autosave_interval 0"]
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, bufsize=0)
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        seen = b""
        while b" running" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"mosquitto not ready: {seen!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"mosquitto exited: {seen!r}")
            seen += chunk
        # keep draining its log so it never blocks on a full pipe
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    @staticmethod
    def _drain(proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stderr is not None
        while proc.stderr.read(65536):
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # seen with a TLS listener: SIGTERM left unanswered
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_ca_and_cert(tmp: Path, host: str = "localhost") -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for `host` and 127.0.0.1 (python `cryptography`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uplink test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths
