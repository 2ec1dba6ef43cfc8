"""First-run provisioning for the installer: a config bound to the LAN with discovery on, the
signing key, the database, the first admin account with a generated password and a device token.

Run by systemd/install.sh as `python -m gateway.ops.firstrun ...`. The secrets are printed once
(and, with --credentials-file, written to a mode-0600 file for unattended first boots); they are
never logged. Re-running on an existing hub changes nothing and creates no second admin.
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from dataclasses import replace
from pathlib import Path

from matrix_core.identifiers import is_valid_localpart, user_id_for
from matrix_core.passwords import hash_password
from matrix_core.store import accounts as account_rows
from matrix_core.store.database import open_sync

from ..config import (CONFIG_FILE, DATABASE_FILE, ConfigError, GatewayConfig, load_config,
                      load_or_create_signing_key, prepare_data_dir, render, validate)

# What an appliance on a home LAN wants, unlike the loopback-only defaults of `matrix-gateway run`.
LAN_DEFAULTS = {"bind": "0.0.0.0", "mdns": True, "enable_registration": False}


def default_server_name() -> str:
    return f"{socket.gethostname().split('.')[0]}.local"


def provision(data_dir: Path, preseed: Path | None, overrides: dict[str, object], admin: str,
              device: str) -> list[str] | None:
    """Set the hub up; return the lines to show once, or None when it was already set up."""
    prepare_data_dir(data_dir)
    config_path = data_dir / CONFIG_FILE
    if not config_path.exists():
        config = replace(GatewayConfig(), **validate({**LAN_DEFAULTS, "server_name": default_server_name()},
                                                      "installer defaults"))
        if preseed is not None:  # the SD card's matrix-gateway.toml: validated, then merged
            config = replace(config, **validate(_read_toml(preseed), str(preseed)))
        config = replace(config, **validate({k: v for k, v in overrides.items() if v is not None}, "command line"))
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(render(config))
    config = load_config(data_dir, None, {}, create=False)
    load_or_create_signing_key(data_dir)
    conn = open_sync(data_dir / DATABASE_FILE)
    try:
        if account_rows.has_admin(conn):
            return None
        if not is_valid_localpart(admin):
            raise ConfigError(f"admin name {admin!r} is not a valid localpart (use a-z, 0-9 and ._=-/+)")
        user_id = user_id_for(admin, config.server_name)
        password = secrets.token_urlsafe(15)
        hashed = hash_password(password)  # before the write lock, not inside it
        conn.execute("BEGIN IMMEDIATE")
        account_rows.insert_user(conn, user_id, hashed, True)
        token = account_rows.insert_device_token(conn, user_id, device)
        conn.execute("COMMIT")
    finally:
        conn.close()
    port = config.http_port
    return [
        f"server name:   {config.server_name}",
        f"client URL:    http://{config.server_name}:{port}  (Element: use this as the homeserver)",
        f"admin account: {user_id}",
        f"password:      {password}",
        f"device token:  {token}  (device id {device}, for a sensor's CoAP/HTTP requests)",
        "These are shown once: write them down now.",
    ]


def _read_toml(path: Path) -> dict[str, object]:
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as TOML: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.ops.firstrun", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--preseed", type=Path, default=None, help="a matrix-gateway.toml to start from")
    parser.add_argument("--server-name", default=None)
    parser.add_argument("--bind", default=None)
    parser.add_argument("--admin", default="admin")
    parser.add_argument("--device", default="first-device")
    parser.add_argument("--credentials-file", type=Path, default=None, help="also write them here (mode 0600)")
    args = parser.parse_args(argv)
    try:
        lines = provision(args.data_dir, args.preseed, {"server_name": args.server_name, "bind": args.bind},
                          args.admin, args.device)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if lines is None:
        print(f"kept the existing hub in {args.data_dir} (it already has an admin)")
        return 0
    if args.credentials_file is not None:
        fd = os.open(args.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
