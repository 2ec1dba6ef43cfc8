"""Warn before the disk is full: the data dir's free space, looked at on a timer.

One statvfs every CHECK_SECONDS (not per write: a write path that asks the kernel each time
would cost every reading). Below `disk_warn_free_mb` the hub logs a warning, at most once an
hour; `matrix-gateway status` shows the same figure. When the disk does fill, the store refuses
writes with errors.StorageFull and logs that itself (matrix_core/store/disk_space.py); this
timer also lets that log say "still full" or "space is back" when no write comes to say it.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from matrix_core.store.disk_space import FullDiskLog, describe, free_bytes, means_full, no_room

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0
WARN_EVERY = 3600.0
MB = 1_000_000
# Exit status of a hub whose disk is too full to start (EX_TEMPFAIL: try again later, which
# systemd's Restart=on-failure does; systemd/matrix-gateway.service never gives up on it).
EXIT_DISK_FULL = 75


def disk_full_at_start(data_dir: Path, exc: BaseException) -> bool:
    """Is this start-up failure a full disk (bytes or inodes)? Then say so in one line on stderr,
    naming the disk, instead of a traceback."""
    if not means_full(exc, lambda: no_room(data_dir)):
        return False
    print(f"error: cannot start: {describe(data_dir)}; free some space, then start the hub again",
          file=sys.stderr, flush=True)
    return True


class LowSpace:
    """When to warn (pure: free bytes and time passed in)."""

    def __init__(self, threshold_mb: int, every: float = WARN_EVERY) -> None:
        self.threshold = threshold_mb * MB
        self.every = every
        self._last: float | None = None

    def is_low(self, free: int | None) -> bool:
        return free is not None and free < self.threshold

    def should_warn(self, free: int | None, now: float) -> bool:
        if not self.is_low(free) or (self._last is not None and now - self._last < self.every):
            return False
        self._last = now
        return True


async def watch(data_dir: Path, threshold_mb: int, storage: FullDiskLog, interval: float = CHECK_SECONDS,
                clock: Callable[[], float] = time.monotonic) -> None:
    """The hub's timer, from start-up (a low disk is reported at once) until cancelled."""
    low = LowSpace(threshold_mb)
    while True:
        free = free_bytes(data_dir)
        if low.should_warn(free, clock()):
            log.warning("low disk space: %.1f MB free on the disk holding %s (warning below disk_warn_free_mb"
                        " = %d); when it is full the hub refuses writes until space is freed",
                        (free or 0) / MB, data_dir, threshold_mb)
        storage.tick()
        await asyncio.sleep(interval)
