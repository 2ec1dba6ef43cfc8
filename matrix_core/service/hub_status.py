"""What the Status page shows (`GET /_gateway/v1/status`, admins only): version, uptime,
resident memory, the database's size on disk, events per minute, the media repository's size,
the federation peers this hub sends to (and whether they answer) and the [[mqtt_bridge]] uplinks
with their state and backlog (as `matrix-gateway status` shows them: the rows the uplinks keep).

Events per minute come from the event stream's position, sampled every 10 s into a short ring
(no query, no per-event work): the rate is the position's growth over the last minute."""
from __future__ import annotations

import asyncio
import importlib.metadata
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..store import media as media_store
from ..store import mqtt_bridge as bridge_store

if TYPE_CHECKING:
    from ..notifier import EventStream
    from ..store.database import Database

SAMPLE_S = 10.0


def _version() -> str:
    try:
        return importlib.metadata.version("matrix-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HubStatus:
    def __init__(self, stream: EventStream, database_path: Path) -> None:
        self.stream = stream
        self.database_path = database_path
        self.started = time.monotonic()
        self.version = _version()
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(60 / SAMPLE_S) + 1)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._sample()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        self._samples.append((time.monotonic(), self.stream.position))
        self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._sample)

    def events_per_minute(self) -> float | None:
        """The stream's growth over (up to) the last minute, per minute; None before 10 s of samples."""
        now, position = time.monotonic(), self.stream.position
        if not self._samples or now - self._samples[0][0] < 1.0:
            return None
        then, old = self._samples[0]
        return round((position - old) * 60 / (now - then), 1)

    def database_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.database_path}{suffix}").st_size
            except OSError:
                pass
        return total

    def report(self) -> dict[str, Any]:
        return {"version": self.version, "uptime_s": int(time.monotonic() - self.started), "rss_bytes": rss_bytes(),
                "database_bytes": self.database_bytes(), "events_per_minute": self.events_per_minute(),
                "stream_position": self.stream.position}

    async def full_report(self, db: Database, peers: Callable[[], list[dict[str, Any]]] | None) -> dict[str, Any]:
        """`report` plus the figures read from the store and the federation sender (`peers`:
        its peers(), None when federation is not running here)."""
        report = self.report()
        report["media_count"], report["media_bytes"] = await media_store.usage(db)
        report["federation_peers"] = peers() if peers is not None else []
        report["uplinks"] = [{k: row[k] for k in ("name", "state", "detail", "since_ts", "backlog")}
                             for row in await bridge_store.status(db)]
        return report
