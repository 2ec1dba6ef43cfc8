"""A full disk as the store sees it: which errors mean "no space left", and what is logged.

Why here: every write passes through the one writer, so it alone can tell a full disk from a bad
write, refuse each write with one typed error (`errors.storage_full`: HTTP 507, CoAP 5.03, MQTT
0x97) and count them. Before, each refusal was an ERROR line or a traceback in every layer it
crossed: a full disk under a fleet of sensors wrote ~19,000 lines of log (on the same disk).
Now the log says it once a minute at most, with a count.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from .. import errors

log = logging.getLogger(__name__)

SQLITE_FULL = 13
SQLITE_IOERR = 10
# SQLite reports ENOSPC as SQLITE_FULL when it writes, but as a generic SQLITE_IOERR when it
# extends its shared-memory index (-shm) or truncates: an I/O error while less than this is free
# is taken for a full disk (a failing SD card with room left stays an I/O error).
IOERR_FULL_BELOW = 1 << 20
LOG_INTERVAL = 60.0  # seconds between two lines about a full disk


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (a file or
    a directory); None if that cannot be asked."""
    target = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(target)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def means_full(exc: BaseException, free: Callable[[], int | None]) -> bool:
    """Does `exc` (from SQLite or a file write) mean the disk has no space left? `free` is asked
    only for SQLite's ambiguous I/O errors."""
    if isinstance(exc, errors.StorageFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    if primary == SQLITE_IOERR or (primary is None and "disk I/O error" in str(exc)):
        space = free()
        return space is not None and space < IOERR_FULL_BELOW
    return False


def describe(path: Path) -> str:
    """One line naming the full disk, for start-up failures and `status`."""
    space = free_bytes(path)
    shown = "unknown" if space is None else f"{space} bytes"
    return f"no space left on the disk holding {path} ({shown} free)"


class FullDiskLog:
    """Whether the last write needing space found none, and at most one line a minute about it.

    Called on the event loop with the loop's clock: `refused` when writes were refused for lack
    of space, `stored` when a commit changed rows (so space was there), `tick` from a timer so a
    summary or the all-clear is written even when no write comes."""

    def __init__(self, where: Path, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.interval = interval
        self.clock = clock
        self.full = False
        self.last_refused: float | None = None
        self.refused_total = 0
        self._unreported = 0
        self._recovered = False
        self._last_line: float | None = None
        self._first_unreported = 0.0  # when the first refusal not yet in a line came

    def refused(self, n: int) -> None:
        now = self.clock()
        if not self._unreported:
            self._first_unreported = now
        self.full, self.last_refused, self._recovered = True, now, False
        self.refused_total += n
        self._unreported += n
        self.tick()

    def stored(self) -> None:
        if self.full:
            self.full, self._recovered = False, True
            self.tick()

    def tick(self) -> None:
        now = self.clock()
        if self._last_line is not None and now - self._last_line < self.interval:
            return
        if self.full and self._unreported:
            log.error("disk full: %s; %d writes refused in %.0f s (HTTP 507, CoAP 5.03, MQTT 0x97). "
                      "Free some space: writes resume by themselves", describe(self.where), self._unreported,
                      now - self._first_unreported)
        elif self._recovered:
            log.warning("disk space is back: writes to %s are stored again (%d refused since the last report, "
                        "%d in all)", self.where, self._unreported, self.refused_total)
        else:
            return
        self._last_line, self._unreported, self._recovered = now, 0, False
