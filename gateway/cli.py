"""The `matrix-gateway` command line (click): run the hub, manage accounts and device tokens.

Account commands write straight into the SQLite database (WAL), so they work while the hub runs.
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from matrix_core.identifiers import is_valid_localpart, user_id_for
from matrix_core.passwords import hash_password
from matrix_core.store import accounts as account_rows
from matrix_core.store.database import open_sync

from .config import DATABASE_FILE, ConfigError, GatewayConfig, load_config, prepare_data_dir

DEFAULT_DATA_DIR = "./gateway-data"

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
    show_default=True, help="Where the config, signing key and database live.",
)
config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                             default=None, help="Config file (default: DATA_DIR/gateway.toml).")


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def existing_config(data_dir: Path, config_file: Path | None) -> GatewayConfig:
    """The config of an already-initialised data dir (admin commands never create one)."""
    if not (data_dir / DATABASE_FILE).exists():
        fail(f"{data_dir} holds no hub yet: start it once with `matrix-gateway run --data-dir {data_dir}`")
    try:
        return load_config(data_dir, config_file, {}, create=False)
    except ConfigError as exc:
        fail(str(exc))
        raise AssertionError  # unreachable


def open_db(data_dir: Path) -> sqlite3.Connection:
    return open_sync(data_dir / DATABASE_FILE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """An IoT hub with an embedded Matrix homeserver: HTTP, CoAP, MQTT and federation."""


@main.command()
@data_dir_option
@config_option
@click.option("--server-name", default=None, help="Matrix server name (default: localhost).")
@click.option("--bind", default=None, help="Listen address (default: 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="Client-server API port (default: 8008).")
@click.option("--coap-port", type=int, default=None, help="CoAP port (default: 5683).")
@click.option("--coaps-port", type=int, default=None, help="coaps (DTLS-PSK) port (default: 5684).")
@click.option("--mqtt-port", type=int, default=None, help="MQTT port (default: 1883).")
@click.option("--federation-port", type=int, default=None, help="Federation port (default: 8448).")
@click.option("--federation-tls-verify/--no-federation-tls-verify", default=None,
              help="Check other servers' TLS certificates (default: on; off only for tests).")
@click.option("--federation-allow-loopback/--no-federation-allow-loopback", default=None,
              help="Allow outbound federation to loopback addresses (default: off; for tests on one machine).")
def run(data_dir: Path, config_file: Path | None, **flags: Any) -> None:
    """Run the hub (creates DATA_DIR with a config, a signing key and a database on first run)."""
    from .config import load_or_create_signing_key
    from .ops.disk import EXIT_DISK_FULL, disk_full_at_start
    from matrix_core.store.database import open_sync as migrate_db

    try:
        prepare_data_dir(data_dir)
        config = load_config(data_dir, config_file, flags, create=True)
        from .appservices import load_registrations
        load_registrations(config, data_dir)  # a bad registration file stops the start, named
        load_or_create_signing_key(data_dir)
        migrate_db(data_dir / DATABASE_FILE).close()
    except (ConfigError, OSError, sqlite3.Error) as exc:
        if disk_full_at_start(data_dir, exc):
            sys.exit(EXIT_DISK_FULL)
        if isinstance(exc, sqlite3.Error):
            raise
        fail(str(exc))
    from .app import run as run_hub  # after the checks: a hub that cannot start loads no listeners

    sys.exit(run_hub(config, data_dir, config_file))


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@click.argument("localpart")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="The account password.")
@click.option("--admin", is_flag=True, help="Make the account a hub admin.")
@click.option("--guest", is_flag=True,
              help="Not a household member: reaches only the rooms it is invited to (docs/mqtt.md).")
@data_dir_option
@config_option
def user_add(localpart: str, password: str, admin: bool, guest: bool, data_dir: Path,
             config_file: Path | None) -> None:
    """Create an account (works while the hub is running). Household members (the default) share
    the MQTT broker's topic rooms; a running hub adds a new one to them within seconds."""
    config = existing_config(data_dir, config_file)
    if localpart.startswith("@"):
        user_id = localpart
    else:
        if not is_valid_localpart(localpart):
            fail(f"{localpart!r} is not a valid localpart (use a-z, 0-9 and ._=-/+)")
        user_id = user_id_for(localpart, config.server_name)
    if not password:
        fail("the password must not be empty")
    hashed = hash_password(password)  # before the write lock: a live hub's writes don't wait for scrypt
    conn = open_db(data_dir)
    try:
        if account_rows.user_exists(conn, user_id):
            fail(f"{user_id} already exists")
        conn.execute("BEGIN IMMEDIATE")
        account_rows.insert_user(conn, user_id, hashed, admin, household=not guest)
        conn.execute("COMMIT")
    finally:
        conn.close()
    click.echo(f"created {user_id}{' (admin)' if admin else ''}{' (guest)' if guest else ''}")


@main.command("setup-code")
@data_dir_option
def setup_code_cmd(data_dir: Path) -> None:
    """Print the first run's one-time setup code again (while the hub has no admin)."""
    from .setup_code import read_code, remove_code

    conn = open_db(data_dir) if (data_dir / DATABASE_FILE).exists() else None
    try:
        has_admin = conn is not None and account_rows.has_admin(conn)
    finally:
        if conn is not None:
            conn.close()
    if has_admin:
        remove_code(data_dir)
        fail("this hub has an admin account already: sign in with it (no setup code is needed)")
    code = read_code(data_dir)
    if code is None:
        fail(f"no setup code yet: start the hub (`matrix-gateway run --data-dir {data_dir}`); it prints one")
    click.echo(code)


@main.group()
def device() -> None:
    """Manage device access tokens (short enough for a sensor's CoAP URI)."""


@device.command("add")
@click.argument("localpart")
@click.argument("device_id")
@click.option("--psk", is_flag=True, help="Also create a coaps (DTLS) pre-shared key; prints "
              "psk_identity=... and psk=... after the token (identity = DEVICE_ID).")
@data_dir_option
@config_option
def device_add(localpart: str, device_id: str, psk: bool, data_dir: Path, config_file: Path | None) -> None:
    """Create a device for an account and print its access token (once)."""
    config = existing_config(data_dir, config_file)
    user_id = user_id_for(localpart, config.server_name)
    conn = open_db(data_dir)
    try:
        if not account_rows.user_exists(conn, user_id):
            fail(f"no such user {user_id}: create it with `matrix-gateway user add`")
        conn.execute("BEGIN IMMEDIATE")
        token = account_rows.insert_device_token(conn, user_id, device_id)
        psk_lines = []
        if psk:
            from frontends.coap.psk import add_device_psk
            try:
                identity, key = add_device_psk(conn, user_id, device_id)
            except ValueError as exc:
                conn.execute("ROLLBACK")
                fail(str(exc))
            psk_lines = [f"psk_identity={identity}", f"psk={key}"]
        conn.execute("COMMIT")
    finally:
        conn.close()
    click.echo(token)
    for line in psk_lines:
        click.echo(line)
    # How to use it, on stderr: scripts read the token (and psk lines) from stdout.
    click.echo(token_usage(config, localpart, device_id, token, bool(psk_lines)), err=True)


def token_usage(config: GatewayConfig, localpart: str, device_id: str, token: str, psk: bool) -> str:
    """What a device does with its new token: the MQTT password, the CoAP `a` query, HTTP bearer."""
    host = config.bind if config.bind not in ("0.0.0.0", "::", "") else "HUB-ADDRESS"
    room = f"%23kitchen:{config.server_name}"  # any room the account is in; an alias works
    lines = [
        "",
        f"This is the access token of device {device_id} of {localpart}: it is the device's password (shown only now).",
        "Use it, for example:",
        f"  MQTT: mosquitto_pub -h {host} -p {config.mqtt_port} -u {localpart} -P {token} "
        f"-t house/kitchen/temp -m '{{\"t\": 21.5}}'",
        f"  CoAP: echo '{{\"msgtype\":\"m.text\",\"body\":\"21.5\"}}' | coap-client -m post -t 50 -f - "
        f"'coap://{host}:{config.coap_port}/_m/c/a/v1/r/{room}/s/m.room.message?a={token}'",
        f"  HTTP: curl -H 'Authorization: Bearer {token}' http://{host}:{config.http_port}/_matrix/client/v3/account/whoami",
    ]
    if psk:
        lines.append(f"  coaps: coap-client-openssl -u {device_id} -k PSK ... 'coaps://{host}:{config.coaps_port}/...' "
                     "(docs/coap.md)")
    lines.append(f"(#kitchen: any room {localpart} is in.) Revoke the token by deleting the device "
                 f"(DELETE /_matrix/client/v3/devices/{device_id}, or a client's sessions list).")
    return "\n".join(lines)


def register_commands() -> None:
    """Command groups that live with their front end register here, one line each."""
    from .ops.commands import add_ops_commands  # backup, restore, status, purge

    add_ops_commands(main, data_dir_option, config_option, existing_config, fail)
    from frontends.mqtt.cli import add_mqtt_commands  # mqtt map / unmap / maps

    add_mqtt_commands(main, data_dir_option, config_option, existing_config, fail, open_db)
    from .appservices import add_appservice_commands  # appservice add / list / remove (issue 17)

    add_appservice_commands(main, data_dir_option, config_option, existing_config, fail)


register_commands()

if __name__ == "__main__":
    main()
