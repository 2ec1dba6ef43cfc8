"""Keep the hub's resident memory small on a 512 MB Pi.

glibc raises its mmap threshold after the first large block is freed, so the 16 MB that each
scrypt password check borrows would afterwards stay in the heap for good (+17 MB RSS after a few
logins). Pinning the threshold makes big blocks go back to the kernel when freed; capping the
arenas stops each helper thread (database writer, aiosqlite, executor) growing its own heap.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from typing import Callable

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 256 * 1024, arena_max: int = 2) -> bool:
    """Apply the settings through mallopt(3); False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_ARENA_MAX, arena_max))


@functools.lru_cache(maxsize=1)
def _libc_name() -> str | None:
    """Looked up once: find_library runs ldconfig in a subprocess (descriptors, a fork) each call,
    which failed with a traceback each quiet moment once the hub was out of descriptors."""
    return ctypes.util.find_library("c")


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (malloc_trim(3)): start-up imports leave
    megabytes of freed temporaries behind that would otherwise stay resident for good."""
    name = _libc_name()
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def settle_memory() -> None:
    """A full garbage collection, then malloc_trim: for moments when the hub has just gone idle."""
    import gc

    gc.collect()
    release_free_memory()


class SettleWhenQuiet:
    """Run `settle` each time a busy spell ends: when `activity()` (a counter of work done) has
    moved and then stood still for `delay` seconds.

    A burst of readings leaves freed objects and heap pages behind; handing them back at the next
    quiet moment keeps an idle hub near its start-up size. A full collection stalls the loop for
    tens of milliseconds, so never in the middle of a burst; after `max_busy_checks` busy checks
    in a row it runs anyway (a hub that is never quiet still deserves its memory back).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, activity: Callable[[], int], settle: Callable[[], None],
                 delay: float = 3.0, max_busy_checks: int = 20) -> None:
        self._loop, self._activity, self._settle = loop, activity, settle
        self._delay, self._max_busy = delay, max_busy_checks
        self._last = activity()
        self._busy_checks = 1  # start-up itself was a busy spell
        self._handle: asyncio.TimerHandle | None = loop.call_later(delay, self._check)

    def _check(self) -> None:
        now = self._activity()
        if now != self._last:
            self._last = now
            self._busy_checks += 1
            if self._busy_checks > self._max_busy:
                self._busy_checks = 0
                self._settle()
        elif self._busy_checks:
            self._busy_checks = 0
            self._settle()
        self._handle = self._loop.call_later(self._delay, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
