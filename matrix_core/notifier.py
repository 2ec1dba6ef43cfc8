"""One stream of committed events, numbered by stream position.

/sync long-polls wait on it; CoAP Observe and MQTT fan-out subscribe to it. Events enter only
after their transaction commits, in commit order, so a reader never sees a position before the
events under it are durable.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

from .events import Event

log = logging.getLogger(__name__)

Subscriber = Callable[[list[tuple[int, Event]]], None]


class EventStream:
    def __init__(self, position: int = 0, recent_size: int = 2048) -> None:
        self.position = position
        self._recent: deque[tuple[int, Event]] = deque(maxlen=recent_size)
        self._recent_size = recent_size
        # Everything at or below this position may have fallen out of the buffer.
        self._forgotten_upto = position
        self._waiters: set[asyncio.Future[None]] = set()
        self._subscribers: list[Subscriber] = []
        self.closed = False

    def reset(self, position: int) -> None:
        """Start from `position` (the store's newest event): nothing older is in the buffer."""
        self.position = position
        self._forgotten_upto = position

    def advance(self, entries: list[tuple[int, Event]]) -> None:
        """Publish committed events (position, event), in commit order."""
        if not entries:
            return
        for position, event in entries:
            if position > self.position:
                self.position = position
            if len(self._recent) == self._recent_size:
                self._forgotten_upto = max(self._forgotten_upto, self._recent[0][0])
            self._recent.append((position, event))
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        for subscriber in list(self._subscribers):
            try:
                subscriber(entries)
            except Exception:  # a broken front end must not stop the stream
                log.exception("event stream subscriber failed")

    def close(self) -> None:
        """Shutting down: release every long-poll now and make later waits return at once."""
        self.closed = True
        self.wake_all()

    def wake_all(self) -> None:
        """Wake long-polls for a change that is not a new event."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait_for_signal(self, changed: Callable[[], bool], timeout: float) -> None:
        """Wait until `changed()` holds, checked on each new event or `wake_all` (a change that is
        not an event: a receipt, typing, account data), or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not changed() and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(asyncio.shield(fut), remaining)
            except asyncio.TimeoutError:
                return
            finally:
                self._waiters.discard(fut)

    def recent_since(self, since: int) -> list[tuple[int, Event]] | None:
        """Events after `since` from memory, or None when the buffer no longer reaches back."""
        if since < self._forgotten_upto:
            return None
        return [(pos, ev) for pos, ev in self._recent if pos > since]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe
