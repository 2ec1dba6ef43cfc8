"""At most one log line per kind of trouble per interval. Pure apart from the clock passed in.

What a client or the machine can repeat thousands of times a second (a bad header, a full
descriptor table, one broken room in every /sync) must not fill an SD card with the same line:
the first occurrence is logged, the rest of the interval is counted and reported with the next one.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

MAX_KEYS = 1024


class LogLimiter:
    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: stay quiet. Else log now; the value is how many were suppressed since the last line."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._last) >= MAX_KEYS and key not in self._last:
            self._last.clear()  # many distinct keys: forget them rather than grow without bound
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, message: str, *args: Any) -> bool:
        """Write the line (True) unless one of this `key` went out less than `interval` ago
        (False: counted). A line after suppressed ones ends with how many were not written."""
        suppressed = self.allow(key)
        if suppressed is None:
            return False
        if suppressed:
            message += " (%d more since the last line)"
            args = (*args, suppressed)
        logger.log(level, message, *args)
        return True

    def filter(self, prefix: str, key: str) -> logging.Filter:
        """A logging filter passing another library's records that start with `prefix` through
        this limiter under `key` (aiocoap's own per-datagram warnings); other records pass."""
        limiter = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                if not isinstance(record.msg, str) or not record.msg.startswith(prefix):
                    return True
                suppressed = limiter.allow(key)
                if suppressed is None:
                    return False
                if suppressed:
                    record.msg += f" ({suppressed} more since the last line)".replace("%", "%%")
                return True

        return _Filter()
