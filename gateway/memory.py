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


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (malloc_trim(3)): start-up imports leave
    megabytes of freed temporaries behind that would otherwise stay resident for good."""
    name = ctypes.util.find_library("c")
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


def settle_when_quiet(loop: asyncio.AbstractEventLoop, activity: Callable[[], int], settle: Callable[[], None],
                      delay: float = 3.0, tries: int = 20) -> None:
    """Run `settle` once `activity()` (a counter of work done) has stood still for `delay` seconds.

    A full collection stalls the loop for tens of milliseconds: not while devices are sending.
    After `tries` busy checks it runs anyway (a hub never quiet still deserves its memory back).
    """
    def check(last: int, left: int) -> None:
        now = activity()
        if now == last or left <= 0:
            settle()
        else:
            loop.call_later(delay, check, now, left - 1)

    loop.call_later(delay, check, activity(), tries)
