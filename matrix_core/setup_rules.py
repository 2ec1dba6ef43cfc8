"""First run (issue 18): the one-time setup code that lets whoever can read the hub's console or log
create the first admin from the web page, and nobody else on the LAN. Pure: randomness and the
clock are passed in.

The code is 12 characters of Crockford's base32 (digits and letters without I, L, O, U), shown in
three groups of four: 60 bits. Typed codes are normalised as Crockford decodes (case, spaces,
dashes; O read as 0, I and L as 1), so a code read off a screen works however it is typed.

Guessing is throttled (`SetupThrottle`): per client host and for the whole hub, the first few wrong
codes are free, then each further one locks that key out for twice as long as the last (capped).
While a key is locked out no code is checked, not even the right one, so the lock-out cannot be
used as an oracle. With 2^60 codes and at most a few guesses per hour once locked, guessing is
hopeless long before the owner has read the code off the console.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Callable

from . import errors
from .ratelimit import address_key

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
GROUPS, GROUP_LEN = 3, 4
CODE_LEN = GROUPS * GROUP_LEN
# What a person may type for a letter the alphabet leaves out.
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 1024


def new_code(randbelow: Callable[[int], int]) -> str:
    """A fresh code such as `K7QX-3MPA-W9RT` (`randbelow`: `secrets.randbelow`)."""
    chars = "".join(ALPHABET[randbelow(len(ALPHABET))] for _ in range(CODE_LEN))
    return "-".join(chars[i:i + GROUP_LEN] for i in range(0, CODE_LEN, GROUP_LEN))


def normalize(typed: str) -> str:
    """The code's 12 characters as typed, without case, spaces or dashes."""
    return "".join(c for c in typed.upper() if c not in " -\t").translate(_LOOK_ALIKES)


def is_code(text: str) -> bool:
    """Whether `text` is a well-formed code (a stored code file is checked with it)."""
    plain = normalize(text)
    return len(plain) == CODE_LEN and all(c in ALPHABET for c in plain)


def digest(code: str) -> bytes:
    """What the hub keeps of a code: its normalised form's SHA-256 (60 random bits need no salt or
    slow hash when every guess goes through the throttle)."""
    return hashlib.sha256(normalize(code).encode()).digest()


def matches(typed: str, kept: bytes) -> bool:
    return len(typed) <= 64 and hmac.compare_digest(digest(typed), kept)


def password_problem(password: str) -> str | None:
    """Why a first admin's password is too weak, or None."""
    if len(password) < MIN_PASSWORD_LEN:
        return f"The password must have at least {MIN_PASSWORD_LEN} characters"
    if len(password) > MAX_PASSWORD_LEN:
        return f"The password must have at most {MAX_PASSWORD_LEN} characters"
    if len(set(password)) < 3:
        return "The password must not repeat one or two characters"
    return None


@dataclass(slots=True)
class _Key:
    failures: int = 0
    locked_until: float = 0.0


@dataclass(slots=True)
class SetupThrottle:
    """Wrong setup codes, per client host (an IPv6 /64) and for the whole hub.

    The hub-wide count is there for an attacker with many addresses; its free allowance is larger,
    so one confused neighbour does not lock the owner out. The owner locked out anyway can restart
    the hub (the counts live in memory) or create the admin with `matrix-gateway user add --admin`.
    """

    free_per_host: int = 5
    free_global: int = 20
    first_lockout_s: float = 1.0
    max_lockout_s: float = 3600.0
    max_hosts: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _hosts: dict[str, _Key] = field(default_factory=dict)
    _global: _Key = field(default_factory=_Key)

    def check(self, address: str) -> None:
        """Raise M_LIMIT_EXCEEDED (with retry_after_ms) while `address` or the hub is locked out."""
        now = self.clock()
        until = max(self._global.locked_until, self._host(address).locked_until)
        if until > now:
            raise errors.limit_exceeded(int((until - now) * 1000) + 1)

    def failed(self, address: str) -> None:
        """A wrong code from `address`: count it, lock out once past the free allowance."""
        now = self.clock()
        self._fail(self._host(address), self.free_per_host, now)
        self._fail(self._global, self.free_global, now)

    def _fail(self, key: _Key, free: int, now: float) -> None:
        key.failures += 1
        if key.failures >= free:
            lockout = min(self.max_lockout_s, self.first_lockout_s * 2 ** min(40, key.failures - free))
            key.locked_until = now + lockout

    def _host(self, address: str) -> _Key:
        host = address_key(address)
        key = self._hosts.get(host)
        if key is None:
            if len(self._hosts) >= self.max_hosts:  # drop the oldest; the global count still holds
                del self._hosts[next(iter(self._hosts))]
            key = self._hosts[host] = _Key()
        return key
