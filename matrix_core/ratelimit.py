"""Token-bucket rate limits keyed by user or address. Pure apart from the clock passed in."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from . import errors


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def reset(self, key: str) -> None:
        """Forget `key`'s history (e.g. a successful login clears its failures)."""
        self._buckets.pop(key, None)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens for `key` or raise M_LIMIT_EXCEEDED with a retry hint."""
        if self.limit.per_second <= 0:
            return
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.per_second)
        if tokens < cost:
            retry_ms = int((cost - tokens) / self.limit.per_second * 1000) + 1
            self._buckets[key] = (tokens, now)
            raise errors.limit_exceeded(retry_ms)
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > 50_000:
            self._buckets.clear()
