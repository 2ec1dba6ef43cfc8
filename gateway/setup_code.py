"""First run (issue 18): while the hub has no admin, a one-time setup code lets the web page create
the first one (matrix_core/service/setup.py checks it; matrix_core/setup_rules.py makes it).

The code is kept in DATA_DIR/setup-code (mode 0600) until an admin exists, then deleted. Why a file
and not only memory: a restart before setup (a reboot, `systemctl restart`) keeps the code the
owner already copied, and `matrix-gateway setup-code` prints it again when the console scrolled
away or the journal was rotated. The file is no new exposure: whoever can read the data dir (0700)
can read the database and the signing key already, i.e. owns the hub anyway. The running hub
keeps only the code's digest in memory.
"""
from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from matrix_core import setup_rules

SETUP_CODE_FILE = "setup-code"


def read_code(data_dir: Path) -> str | None:
    """The stored code, or None (none yet, or not one the hub made)."""
    try:
        text = (data_dir / SETUP_CODE_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if setup_rules.is_code(text) else None


def load_or_create_code(data_dir: Path) -> str:
    """The code in the data dir, made (0600, never world-readable even for a moment) if missing."""
    code = read_code(data_dir)
    if code is not None:
        return code
    path = data_dir / SETUP_CODE_FILE
    path.unlink(missing_ok=True)  # a damaged file: replaced
    code = setup_rules.new_code(secrets.randbelow)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(code + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return code


def remove_code(data_dir: Path) -> None:
    (data_dir / SETUP_CODE_FILE).unlink(missing_ok=True)


def page_address(bind: str, http_port: int | None) -> str:
    """The address to type into a browser: a wildcard bind is reached by the machine's name."""
    host = bind
    if bind in ("0.0.0.0", "::", ""):
        host = socket.gethostname() or "localhost"
    elif ":" in bind:
        host = f"[{bind}]"
    return f"http://{host}:{http_port}/"


def instructions(address: str, code: str) -> str:
    """The one line printed on the console and in the log."""
    return (f"First run: open {address} and enter setup code {code} to create the admin account "
            f"(or run `matrix-gateway user add NAME --admin`)")
