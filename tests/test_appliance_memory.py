"""gateway.memory: the post-start memory settling waits for a quiet moment (a full collection
stalls the loop: it must not land in the middle of a burst of device messages)."""
from __future__ import annotations

import asyncio

from gateway.memory import settle_when_quiet


async def test_settling_waits_until_activity_stops() -> None:
    loop = asyncio.get_running_loop()
    checks = [0]
    busy_checks = 5
    settled = asyncio.Event()
    checks_at_settle: list[int] = []

    def activity() -> int:
        """Work is done between every two checks, for the first `busy_checks` checks."""
        checks[0] += 1
        return min(checks[0], busy_checks + 1)

    def settle() -> None:
        checks_at_settle.append(checks[0])
        settled.set()

    settle_when_quiet(loop, activity, settle, delay=0.001, tries=1000)
    await asyncio.wait_for(settled.wait(), 5)
    # Called once at scheduling, then at each check: the first check that saw no change settles.
    assert checks_at_settle == [busy_checks + 2]


async def test_settling_runs_anyway_after_its_tries() -> None:
    loop = asyncio.get_running_loop()
    ticks = iter(range(10**6))
    settled = asyncio.Event()
    settle_when_quiet(loop, lambda: next(ticks), settled.set, delay=0.001, tries=3)
    await asyncio.wait_for(settled.wait(), 5)
