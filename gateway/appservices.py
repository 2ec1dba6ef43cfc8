"""Application service registration files: read at start (a bad file stops the hub, naming the
problem) and managed with `matrix-gateway appservice add FILE | list | remove ID`.

Files come from `app_service_config_files` in gateway.toml (Synapse's setting; a relative path is
from the data dir) and from the data dir's `appservices/` folder, where `appservice add` copies a
checked file. The running hub reads them at start, and `watch_registrations` applies a change
to them (an `appservice add`/`remove`, an edited file) within a few seconds, without a restart; a
set that does not pass the checks is refused with one log line and the old one stays in force.
(Listing a new file in gateway.toml needs a restart: the config is read at start.)"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from matrix_core.appservice_rules import (Registration, RegistrationError, check_registrations,
                                          parse_registration_yaml)

from .config import ConfigError, GatewayConfig

if TYPE_CHECKING:
    from matrix_core.homeserver import Homeserver

APPSERVICE_DIR = "appservices"
WATCH_INTERVAL_S = 2.0
log = logging.getLogger(__name__)


def registration_files(config: GatewayConfig, data_dir: Path) -> list[Path]:
    files = [p if (p := Path(name)).is_absolute() else data_dir / p for name in config.app_service_config_files]
    folder = data_dir / APPSERVICE_DIR
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    return files


def read_registration(path: Path) -> Registration:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the appservice registration: {exc}") from None
    try:
        return parse_registration_yaml(text, str(path))
    except RegistrationError as exc:
        raise ConfigError(str(exc)) from None


def load_registrations(config: GatewayConfig, data_dir: Path) -> tuple[Registration, ...]:
    """Every registration, checked together (duplicate ids or tokens, overlapping exclusive
    namespaces); ConfigError naming the file and the problem."""
    regs = [read_registration(path) for path in registration_files(config, data_dir)]
    try:
        return tuple(check_registrations(regs, config.server_name))
    except RegistrationError as exc:
        raise ConfigError(str(exc)) from None


def _signature(config: GatewayConfig, data_dir: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in registration_files(config, data_dir):
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


async def watch_registrations(config: GatewayConfig, data_dir: Path, hs: Homeserver,
                              interval: float = WATCH_INTERVAL_S) -> None:
    """Apply changed registration files to the running hub (a few stat calls per interval)."""
    seen = _signature(config, data_dir)
    while True:
        await asyncio.sleep(interval)
        now = _signature(config, data_dir)
        if now == seen:
            continue
        seen = now
        try:
            regs = load_registrations(config, data_dir)
        except ConfigError as exc:
            log.error("appservice registrations not applied (the previous ones stay): %s", exc)
            continue
        changes = await hs.appservices.reload(regs)
        if changes:
            log.info("appservices applied: %s", " ".join(changes))


def add_appservice_commands(main: click.Group, data_dir_option: Any, config_option: Any,
                            existing_config: Callable[[Path, Path | None], GatewayConfig],
                            fail: Callable[[str], None]) -> None:
    @main.group()
    def appservice() -> None:
        """Manage application services (bridges, bots); a running hub applies changes live."""

    @appservice.command("add")
    @click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @data_dir_option
    @config_option
    def appservice_add(file: Path, data_dir: Path, config_file: Path | None) -> None:
        """Check a registration file against the others and install it in DATA_DIR/appservices."""
        config = existing_config(data_dir, config_file)
        try:
            new = read_registration(file)
            current = load_registrations(config, data_dir)
            if any(reg.id == new.id for reg in current):
                fail(f"an appservice with id {new.id!r} is already registered (remove it first)")
            check_registrations([*current, new], config.server_name)
        except (ConfigError, RegistrationError) as exc:
            fail(str(exc))
        folder = data_dir / APPSERVICE_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        target = folder / f"{new.id}.yaml"
        target.write_text(file.read_text())
        target.chmod(0o600)  # it holds the tokens
        click.echo(f"added appservice {new.id} ({target}); a running hub applies it within seconds")

    @appservice.command("list")
    @data_dir_option
    @config_option
    def appservice_list(data_dir: Path, config_file: Path | None) -> None:
        """The registered appservices: id, url, sender, file."""
        config = existing_config(data_dir, config_file)
        try:
            regs = load_registrations(config, data_dir)
        except ConfigError as exc:
            fail(str(exc))
            return
        for reg in regs:
            click.echo(f"{reg.id}\t{reg.url or '-'}\t{reg.sender(config.server_name)}\t{reg.source}")

    @appservice.command("remove")
    @click.argument("appservice_id")
    @data_dir_option
    @config_option
    def appservice_remove(appservice_id: str, data_dir: Path, config_file: Path | None) -> None:
        """Remove an appservice added with `appservice add` (those listed in gateway.toml are
        removed from the file)."""
        config = existing_config(data_dir, config_file)
        folder = data_dir / APPSERVICE_DIR
        for path in registration_files(config, data_dir):
            try:
                reg = read_registration(path)
            except ConfigError:
                continue
            if reg.id != appservice_id:
                continue
            if path.parent != folder:
                fail(f"appservice {appservice_id!r} comes from {path}, listed in app_service_config_files: "
                     f"edit gateway.toml")
            path.unlink()
            click.echo(f"removed appservice {appservice_id}; a running hub applies it within seconds")
            return
        fail(f"no appservice with id {appservice_id!r}")
