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
SQLITE_CANTOPEN = 14
# SQLite reports ENOSPC as SQLITE_FULL when it writes, but as a generic SQLITE_IOERR when it
# extends its shared-memory index (-shm) or truncates, and as SQLITE_CANTOPEN when it cannot make
# its -wal/-shm files: such an error while less than this is free (or no inode is) is taken for
# a full disk (a failing SD card with room left stays an I/O error).
IOERR_FULL_BELOW = 1 << 20
LOG_INTERVAL = 60.0  # seconds between two lines about a full disk


def _statvfs(path: Path) -> os.statvfs_result | None:
    target = path if path.is_dir() else path.parent
    try:
        return os.statvfs(target)
    except OSError:
        return None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (a file or
    a directory); None if that cannot be asked."""
    st = _statvfs(path)
    return None if st is None else st.f_bavail * st.f_frsize


def out_of_inodes(path: Path) -> bool:
    """No new file can be made there, however many bytes are free (many small files)."""
    st = _statvfs(path)
    return st is not None and st.f_files > 0 and st.f_favail == 0


def no_room(path: Path) -> bool:
    """Next to nothing free on the filesystem holding `path`: bytes or inodes."""
    space = free_bytes(path)
    return (space is not None and space < IOERR_FULL_BELOW) or out_of_inodes(path)


def means_full(exc: BaseException, no_room: Callable[[], bool]) -> bool:
    """Does `exc` (from SQLite or a file write) mean the disk has no space left? `no_room` is
    asked only for SQLite's ambiguous errors."""
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
    if primary in (SQLITE_IOERR, SQLITE_CANTOPEN) or (
            primary is None and ("disk I/O error" in str(exc) or "unable to open" in str(exc))):
        return no_room()
    return False


def describe(path: Path) -> str:
    """One line naming the full disk, for start-up failures and `status`."""
    space = free_bytes(path)
    shown = "unknown" if space is None else f"{space} bytes"
    inodes = ", and no inode free for a new file" if out_of_inodes(path) else ""
    return f"no space left on the disk holding {path} ({shown} free{inodes})"


class FullDiskLog:
    """Whether the last write needing space found none, and at most one line a minute about it.

    Called on the event loop: `refused` when writes were refused for lack of space, `stored`
    when a commit changed rows (so space was there), `tick` from a timer so that "still full"
    or "space is back" is written even when no write comes to say it."""

    def __init__(self, where: Path, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.interval = interval
        self.clock = clock
        self.full = False
        self.last_refused: float | None = None
        self.refused_total = 0  # over the hub's life
        self._episode = 0  # refused since the disk was last found full after having room
        self._unreported = 0
        self._first_unreported = 0.0  # when the first refusal not yet in a line came
        self._announced = False  # this episode's first line is out
        self._recovered = False  # space came back since the last line
        self._last_line: float | None = None

    def refused(self, n: int) -> None:
        now = self.clock()
        if not self._unreported:
            self._first_unreported = now
        self.full, self.last_refused, self._recovered = True, now, False
        self.refused_total += n
        self._episode += n
        self._unreported += n
        self.tick()

    def stored(self) -> None:
        if self.full:
            self.full, self._recovered = False, True
            self.tick()

    def tick(self, force: bool = False) -> None:
        """Write the line that is due, if a minute has passed since the last (or `force`)."""
        now = self.clock()
        if not force and self._last_line is not None and now - self._last_line < self.interval:
            return
        if self.full and self._unreported:
            if not self._announced:
                log.error("disk full: %s: writes are refused (HTTP 507, CoAP 5.03, MQTT 0x97) until space is "
                          "freed, then resume by themselves", describe(self.where))
                self._announced = True
            else:
                log.error("disk still full: %s: %d writes refused in the last %.0f s", describe(self.where),
                          self._unreported, now - self._first_unreported)
        elif self._recovered and self._announced:
            log.warning("disk space is back: writes to %s are stored again (%d were refused while it was full)",
                        self.where, self._episode)
            self._announced, self._episode = False, 0
        else:
            return
        self._last_line, self._unreported, self._recovered = now, 0, False
