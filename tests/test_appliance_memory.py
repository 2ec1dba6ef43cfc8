"""gateway.memory: memory is handed back after each busy spell, at a quiet moment (a full
collection stalls the loop: it must not land in the middle of a burst of device messages)."""
from __future__ import annotations

import asyncio

from gateway.memory import SettleWhenQuiet


class Traffic:
    """An activity counter driven by a script: per check, whether work was done since the last."""

    def __init__(self, busy_pattern: list[bool]) -> None:
        self.pattern = busy_pattern
        self.count = 0
        self.checks = 0
        self.settled_at: list[int] = []
        self.done = asyncio.Event()

    def activity(self) -> int:
        if self.checks and self.checks <= len(self.pattern) and self.pattern[self.checks - 1]:
            self.count += 1
        self.checks += 1
        if self.checks > len(self.pattern) + 1:
            self.done.set()
        return self.count

    def settle(self) -> None:
        self.settled_at.append(self.checks - 1)  # the check (1-based) that decided it


async def run(traffic: Traffic, max_busy_checks: int = 20) -> None:
    settler = SettleWhenQuiet(asyncio.get_running_loop(), traffic.activity, traffic.settle, delay=0.001,
                              max_busy_checks=max_busy_checks)
    try:
        await asyncio.wait_for(traffic.done.wait(), 5)
    finally:
        settler.cancel()


async def test_settles_after_start_up_and_after_each_busy_spell_only() -> None:
    # checks:        1      2     3     4      5      6      7     8
    traffic = Traffic([False, True, True, False, False, True, False, False])
    await run(traffic)
    # check 1: quiet after start-up -> settle; 2-3 busy; 4 quiet -> settle; 5 quiet, nothing new;
    # 6 busy; 7 quiet -> settle; 8 quiet.
    assert traffic.settled_at == [1, 4, 7]


async def test_a_never_quiet_hub_settles_every_max_busy_checks() -> None:
    traffic = Traffic([True] * 10)
    await run(traffic, max_busy_checks=3)
    # Start-up counts as busy: the 4th busy check in a row (check 3) settles anyway, then every
    # 4th (check 7); check 11 is the first quiet one after the spell.
    assert traffic.settled_at == [3, 7, 11]
