"""The operations commands of the CLI: backup, restore, status, purge.

Kept apart from gateway/cli.py and registered there with one line. Heavy modules are imported
inside each command, so `matrix-gateway run` pays nothing for them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NoReturn

import click

from matrix_core.clock import now_ms
from matrix_core.store.retention import room_ids
from matrix_core.store.room_lookup import resolve_room

DURATION_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_age(text: str) -> int:
    """'30d', '12h', '90m', '2w' -> milliseconds."""
    unit = text[-1:].lower()
    if unit not in DURATION_UNITS or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise click.BadParameter(f"{text!r}: use a positive number and a unit s, m, h, d or w (e.g. 30d)")
    return int(text[:-1]) * DURATION_UNITS[unit]


class ProgressBars:
    """One click progress bar per step, shown on stderr for long work only (>1 MB or >1000 rows)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._bars: dict[str, object] = {}
        self._last: dict[str, int] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if total < self.threshold:
            return
        bar = self._bars.get(step)
        if bar is None:
            bar = click.progressbar(length=total, label=f"{step:8}", file=sys.stderr, show_pos=False,
                                    show_percent=True)
            bar.__enter__()
            self._bars[step], self._last[step] = bar, 0
        bar.update(done - self._last[step])  # type: ignore[attr-defined]
        self._last[step] = done

    def close(self) -> None:
        for bar in self._bars.values():
            bar.__exit__(None, None, None)  # type: ignore[attr-defined]
        self._bars.clear()


def add_ops_commands(main: click.Group, data_dir_option: Callable, config_option: Callable,
                     existing_config: Callable, fail: Callable[[str], NoReturn]) -> None:
    """Attach the commands to the CLI group (called from gateway/cli.py's register_commands)."""

    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @data_dir_option
    @config_option
    def backup(file: Path, data_dir: Path, config_file: Path | None) -> None:
        """Write a consistent snapshot of the hub (database, signing key, config) to FILE.

        Safe while the hub runs. FILE must not exist yet; it holds the private key (mode 0600)."""
        from ..config import CONFIG_FILE
        from .backup import BackupError, make_backup

        existing_config(data_dir, config_file)
        bars = ProgressBars(threshold=1 << 20)
        try:
            result = make_backup(data_dir, config_file or data_dir / CONFIG_FILE, file, bars)
        except (BackupError, OSError) as exc:
            bars.close()
            fail(str(exc))
            return
        bars.close()
        click.echo(f"backup written to {result.path}: {result.events} events, database "
                   f"{result.database_bytes / 1e6:.1f} MB, archive {result.bytes / 1e6:.1f} MB")

    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                  help="A new or empty directory to restore into.")
    def restore(file: Path, data_dir: Path) -> None:
        """Restore a backup FILE into a new or empty DATA_DIR (checks everything before writing)."""
        from .restore import RestoreError, restore as do_restore

        bars = ProgressBars(threshold=1 << 20)
        try:
            result = do_restore(file, data_dir, bars)
        except (RestoreError, OSError) as exc:
            bars.close()
            fail(str(exc))
            return
        bars.close()
        click.echo(f"restored {result.events} events of {result.server_name} into {result.data_dir}; "
                   f"start it with: matrix-gateway run --data-dir {result.data_dir}")

    @main.command()
    @data_dir_option
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
    def status(data_dir: Path, config_file: Path | None, as_json: bool) -> None:
        """Show whether the hub answers and what it holds. Exit status 0: running, 3: not running."""
        from .status import gather

        config = existing_config(data_dir, config_file)
        info = gather(config, data_dir)
        click.echo(info.to_json() if as_json else "\n".join(info.lines()))
        sys.exit(0 if info.running else 3)

    @main.command()
    @data_dir_option
    @config_option
    @click.option("--room", default=None, help="Only this room (id or #alias); needs --older-than.")
    @click.option("--older-than", default=None, help="Age such as 30d, 12h, 2w (default: each room's setting).")
    @click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
    def purge(data_dir: Path, config_file: Path | None, room: str | None, older_than: str | None,
              dry_run: bool) -> None:
        """Delete old readings (non-state events), keeping every room's state. Works while the hub runs.

        Without options each room's retention applies: its m.room.retention state event
        (max_lifetime) or else the config's retention_default_days."""
        from matrix_core.store.database import open_sync

        from ..config import DATABASE_FILE
        from .retention import purge as do_purge, room_ages

        config = existing_config(data_dir, config_file)
        age = parse_age(older_than) if older_than else None
        conn = open_sync(data_dir / DATABASE_FILE)
        try:
            if room is not None:
                if age is None:
                    fail("--room needs --older-than (e.g. --older-than 30d)")
                room_id = resolve_room(conn, room)
                if room_id is None:
                    fail(f"no such room {room!r} on this hub")
                ages = {room_id: age}
            elif age is not None:
                ages = {room_id: age for room_id in room_ids(conn)}
            else:
                ages = room_ages(conn, config.retention_default_days)
            bars = ProgressBars(threshold=1000)
            report = do_purge(conn, ages, now_ms(), bars, dry_run=dry_run, media_dir=data_dir / "media")
            bars.close()
        finally:
            conn.close()
        verb = "would delete" if dry_run else "deleted"
        for room_id, n in sorted(report.rooms.items()):
            click.echo(f"{room_id}: {verb} {n} events")
        click.echo(f"{verb} {report.deleted} events in {len(report.rooms)} of {len(ages)} rooms with retention")




