"""At most one log line per kind of bad input per interval: a flood of bad datagrams must not
become a flood of log (issue 20, R3). Pure apart from the clock passed in."""
from __future__ import annotations

import logging
import time
from typing import Callable

__all__ = ["LogLimiter", "INTERVAL"]

INTERVAL = 60.0  # seconds between two lines of one kind


class LogLimiter:
    """``log(kind, text)`` writes the line if no line of that kind went out in the last interval;
    otherwise counts it, and the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self.clock = clock
        self._next: dict[str, float] = {}  # kind -> when the next line may go out
        self._held: dict[str, int] = {}  # kind -> lines left out since the last one

    def allow(self, kind: str) -> str | None:
        """None: count this one and stay quiet; else a suffix for the line (what was left out)."""
        now = self.clock()
        if now < self._next.get(kind, float("-inf")):
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._next[kind] = now + self.interval
        held = self._held.pop(kind, 0)
        return f" (and {held} more like it in the last {self.interval:.0f} s)" if held else ""

    def log(self, kind: str, text: str, *args: object) -> bool:
        """Log (True) or count (False) one occurrence of `kind`."""
        suffix = self.allow(kind)
        if suffix is None:
            return False
        self.logger.log(self.level, text + suffix.replace("%", "%%"), *args)
        return True

    def filter(self, prefix: str, kind: str) -> logging.Filter:
        """A logging filter passing another logger's records that start with `prefix` through
        this limiter (for aiocoap's own per-datagram warnings)."""
        limiter = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                if not isinstance(record.msg, str) or not record.msg.startswith(prefix):
                    return True
                suffix = limiter.allow(kind)
                if suffix is None:
                    return False
                record.msg += suffix.replace("%", "%%")
                return True

        return _Filter()
