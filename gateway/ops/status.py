"""`matrix-gateway status`: is the hub up, and what does it hold? Read-only, safe while it runs.

Liveness is asked of the hub itself (GET /_matrix/client/versions on its HTTP port), not guessed
from a pid file; the figures come from a read-only connection to its database.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

from matrix_core.store import maintenance, mqtt_bridge
from matrix_core.store import media as media_rows

from ..config import DATABASE_FILE, GatewayConfig
from .disk import LowSpace, free_bytes


@dataclass(frozen=True)
class Status:
    running: bool
    http_url: str
    answer_ms: float | None
    server_name: str
    data_dir: str
    users: int
    devices: int
    rooms: int
    events: int  # event positions handed out: an upper bound, not a COUNT(*) (see maintenance.status_figures)
    last_event_ts: int | None
    database_bytes: int
    wal_bytes: int
    schema_versions: dict[str, int]
    disk_free_bytes: int | None = None  # on the disk holding the data dir
    disk_low: bool = False  # below disk_warn_free_mb: the hub refuses writes when it is full
    disk_warn_free_mb: int = 0
    media_count: int = 0  # stored media with content (the content repository) and their bytes
    media_bytes: int = 0
    # [[mqtt_bridge]] uplinks: name, state (connected/connecting/retrying/stopped), detail, backlog
    bridges: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def lines(self) -> list[str]:
        state = f"running (answered in {self.answer_ms:.0f} ms)" if self.running else "not running"
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.last_event_ts / 1000)) \
            if self.last_event_ts else "never"
        return [
            f"hub:        {state} at {self.http_url}",
            f"server:     {self.server_name}",
            f"data dir:   {self.data_dir}",
            f"accounts:   {self.users} users, {self.devices} devices",
            f"rooms:      {self.rooms} rooms, up to {self.events} events (positions used, not counted; "
            f"last at {last})",
            f"database:   {self.database_bytes / 1e6:.1f} MB + WAL {self.wal_bytes / 1e6:.1f} MB",
            f"media:      {self.media_count} files, {self.media_bytes / 1e6:.1f} MB",
            "schema:     " + ", ".join(f"{k} v{v}" for k, v in sorted(self.schema_versions.items())),
            f"disk:       {disk_line(self.disk_free_bytes, self.disk_low, self.disk_warn_free_mb)}",
        ] + [f"bridge:     {b['name']}: {b['state']}{' (' + b['detail'] + ')' if b['detail'] else ''}, "
             f"backlog {b['backlog']} events" for b in self.bridges]


def disk_line(free: int | None, low: bool, warn_mb: int) -> str:
    if free is None:
        return "free space unknown"
    text = f"{free / 1e6:.1f} MB free"
    if low:
        text += (f" - WARNING: below disk_warn_free_mb = {warn_mb}; on a full disk the hub refuses writes "
                 "until space is freed")
    return text


ADDRESS_FILE = "hub.address"  # written by the running hub: where its HTTP listener really is


def record_address(data_dir: Path, bind: str, port: int) -> None:
    """Called by the hub once ready (ports given on the command line or port 0 are found this way)."""
    (data_dir / ADDRESS_FILE).write_text(local_url(bind, port) + "\n")


def local_url(bind: str, port: int) -> str:
    """A URL that reaches a listener bound to `bind` from this machine."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def clear_address(data_dir: Path) -> None:
    (data_dir / ADDRESS_FILE).unlink(missing_ok=True)


def http_url(config: GatewayConfig, data_dir: Path | None = None) -> str:
    """The running hub's own record of its address, else the one the config implies."""
    if data_dir is not None:
        try:
            recorded = (data_dir / ADDRESS_FILE).read_text().strip()
        except OSError:
            recorded = ""
        if recorded.startswith("http://"):
            return recorded
    return local_url(config.bind, config.http_port)


def probe(url: str, timeout: float = 2.0) -> float | None:
    """Milliseconds the hub took to answer /versions, or None if nothing answered."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"{url}/_matrix/client/versions", timeout=timeout) as resp:
            ok = resp.status == 200 and "versions" in json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return (time.monotonic() - started) * 1000 if ok else None


def gather(config: GatewayConfig, data_dir: Path) -> Status:
    db = data_dir / DATABASE_FILE
    conn = maintenance.open_reader(db)
    try:
        figures = maintenance.status_figures(conn)
        media_count, media_bytes = media_rows.usage_sync(conn)
        bridges = mqtt_bridge.status_rows(conn)
    finally:
        conn.close()
    wal = db.with_name(db.name + "-wal")
    free = free_bytes(data_dir)
    url = http_url(config, data_dir)
    answer = probe(url)
    return Status(
        running=answer is not None, http_url=url, answer_ms=answer, server_name=config.server_name,
        data_dir=str(data_dir), users=figures.users, devices=figures.devices, rooms=figures.rooms,
        events=figures.events, last_event_ts=figures.last_event_ts,
        database_bytes=db.stat().st_size, wal_bytes=wal.stat().st_size if wal.exists() else 0,
        schema_versions=figures.schema_versions, disk_free_bytes=free, disk_low=LowSpace(config.disk_warn_free_mb).is_low(free),
        disk_warn_free_mb=config.disk_warn_free_mb, media_count=media_count, media_bytes=media_bytes, bridges=bridges,
    )
