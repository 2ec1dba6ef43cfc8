"""Token-bucket rate limits keyed by user or address, and the login throttle. Pure apart from
the clock passed in."""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Callable

from . import errors

MAX_BUCKETS = 50_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        # Keys never limited (application service users registered with `rate_limited: false`);
        # None when there are none, so the common case costs one attribute test.
        self.exempt: Callable[[str], bool] | None = None

    def reset(self, key: str) -> None:
        """Forget `key`'s history (e.g. a successful login clears its failures)."""
        self._buckets.pop(key, None)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens for `key` or raise M_LIMIT_EXCEEDED with a retry hint."""
        if self.limit.per_second <= 0 or (self.exempt is not None and self.exempt(key)):
            return
        tokens = self.tokens(key)
        if tokens < cost:
            raise errors.limit_exceeded(self.retry_after_ms(key, cost))
        self._store(key, tokens - cost)

    def tokens(self, key: str) -> float:
        """The tokens `key` has now (a bucket starts full and refills at the limit's rate)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
        return min(float(self.limit.burst), tokens + (now - last) * self.limit.per_second)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take up to `cost` tokens for `key` without refusing (an empty bucket stays at 0);
        returns how many were taken, which is all `give` may hand back."""
        if self.limit.per_second <= 0 or (self.exempt is not None and self.exempt(key)):
            return 0.0
        tokens = self.tokens(key)
        taken = min(tokens, cost)
        self._store(key, tokens - taken)
        return taken

    def give(self, key: str, tokens: float) -> None:
        """Hand back tokens taken by `take` (never above the burst)."""
        if tokens > 0 and self.limit.per_second > 0:
            self._store(key, min(float(self.limit.burst), self.tokens(key) + tokens))

    def retry_after_ms(self, key: str, cost: float = 1.0) -> int:
        """How long until `key` has `cost` tokens again (0 if it has them now)."""
        missing = cost - self.tokens(key)
        if missing <= 0 or self.limit.per_second <= 0:
            return 0
        return int(missing / self.limit.per_second * 1000) + 1

    def _store(self, key: str, tokens: float) -> None:
        self._buckets[key] = (tokens, self.clock())
        if len(self._buckets) > MAX_BUCKETS:
            self._evict()

    def _evict(self) -> None:
        """Drop full buckets (they say nothing); only then the oldest. Never all at once: clearing
        every bucket would hand whoever fills the table with keys a fresh start everywhere."""
        full = [key for key in self._buckets if self.tokens(key) >= self.limit.burst]
        for key in full:
            del self._buckets[key]
        for key in list(self._buckets)[: max(0, len(self._buckets) - MAX_BUCKETS * 9 // 10)]:
            del self._buckets[key]


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failed password logins allowed per account, per client address, and a flood per address."""

    account: RateLimit = RateLimit(per_second=1 / 30, burst=5)
    address: RateLimit = RateLimit(per_second=1 / 60, burst=10)
    flood: RateLimit = RateLimit(per_second=1 / 10, burst=30)


def address_key(address: str) -> str:
    """One key per client host whatever the protocol ('::ffff:192.0.2.1' is 192.0.2.1), and one
    per IPv6 /64: a host picks new addresses from its /64 at will (privacy addresses)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class LoginAttempt:
    """What one password check took from the buckets: a success hands the address's part back."""

    user_id: str
    host: str
    from_address: float
    from_flood: float


class LoginThrottle:
    """Password logins over every protocol (HTTP, MQTT CONNECT, CoAP), decided here once.

    Failures are counted in three buckets: per account, per client address, and a larger
    per-address "flood" bucket. Before a password is checked the attempt is refused
    (M_LIMIT_EXCEEDED) when
      - its address floods (more failures than any one broken device makes under this throttle), or
      - both its account and its address have used up their failures.
    So a broken sensor failing from an address drains that address and its own account, but
    another account's right password from the same address still works (that account's bucket
    is full), and so does the owner's from another address (that address is clean). An attacker
    guessing an account from one address drains both and is held to the refill rates. A success
    (say with an account of the attacker's own) forgets that account's failures and hands back
    only what its own attempt took: it never refills an address or another account. Refused
    attempts are not checked, so a throttled guess learns nothing, and not counted, so a client
    retrying a refusal does not dig itself deeper. Every attempt takes its tokens before the
    (slow, off-loop) password check, so concurrent guesses cannot all pass one check.
    """

    def __init__(self, limits: LoginLimits = LoginLimits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.accounts = RateLimiter(limits.account, clock)
        self.addresses = RateLimiter(limits.address, clock)
        self.floods = RateLimiter(limits.flood, clock)

    def attempt(self, user_id: str, address: str) -> LoginAttempt:
        """Reserve one failure's worth of tokens, or raise M_LIMIT_EXCEEDED with retry_after_ms."""
        host = address_key(address)
        if self.floods.tokens(host) < 1:
            raise errors.limit_exceeded(self.floods.retry_after_ms(host))
        if self.accounts.tokens(user_id) < 1 and self.addresses.tokens(host) < 1:
            raise errors.limit_exceeded(min(self.accounts.retry_after_ms(user_id),
                                            self.addresses.retry_after_ms(host)))
        self.accounts.take(user_id)
        return LoginAttempt(user_id, host, self.addresses.take(host), self.floods.take(host))

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The right password: the account's failures are forgotten, the attempt's tokens returned."""
        self.accounts.reset(attempt.user_id)
        self.addresses.give(attempt.host, attempt.from_address)
        self.floods.give(attempt.host, attempt.from_flood)
