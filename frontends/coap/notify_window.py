"""When a CoAP client has nothing unacknowledged: the gate for its next Observe notification.

Why: aiocoap sends at most one confirmable message at a time to a remote (NSTART = 1) and queues
the rest in an unbounded per-remote backlog. A client that stops ACKing (gone, or hostile) made
every notification for every one of its observations wait there, each holding its payload, until
the first one timed out (~93 s): 10,000 observations and 5 events were 50,000 queued messages.
An observation now waits until its remote has neither an exchange in flight nor a backlog, and
computes its notification then, from where the last one ended: at most one queued notification
per observation, however many events came in meanwhile, and no event skipped.

Reaches into aiocoap's private MessageManager._backlogs (a remote is a key there exactly while
a CON to it is in flight), like stale_refusal.py; pinned by the aiocoap version in pyproject.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["NotifyWindow"]


class _Backlogs(dict[Any, Any]):
    """aiocoap's per-remote backlog dict, telling us when a remote's entry goes."""

    def __init__(self, items: dict[Any, Any], cleared: Callable[[Any], None]) -> None:
        super().__init__(items)
        self._cleared = cleared

    def __delitem__(self, remote: Any) -> None:
        super().__delitem__(remote)
        self._cleared(remote)

    def pop(self, remote: Any, *default: Any) -> Any:
        value = super().pop(remote, *default)
        self._cleared(remote)
        return value


class NotifyWindow:
    """Per remote: wait until no confirmable message to it is in flight or queued."""

    def __init__(self) -> None:
        self._managers: list[Any] = []
        self._waiters: dict[Any, list[asyncio.Future[None]]] = {}

    def install(self, context: Any) -> int:
        """Watch the message managers of an aiocoap context; returns how many."""
        installed = 0
        for token_manager in getattr(context, "request_interfaces", []):
            manager: Any = getattr(token_manager, "token_interface", None)
            backlogs = getattr(manager, "_backlogs", None)
            if manager is None or not isinstance(backlogs, dict):
                continue
            if not isinstance(backlogs, _Backlogs):
                manager._backlogs = _Backlogs(backlogs, self._cleared)
            self._managers.append(manager)
            installed += 1
        return installed

    def busy(self, remote: Any) -> bool:
        for manager in self._managers:
            backlogs = manager._backlogs
            if backlogs is not None and remote in backlogs:
                return True
        return False

    async def wait_clear(self, remote: Any) -> None:
        while self.busy(remote):
            future = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(remote, [])
            waiters.append(future)
            try:
                await future
            finally:
                if future in waiters:
                    waiters.remove(future)
                if not waiters and self._waiters.get(remote) is waiters:
                    del self._waiters[remote]

    def _cleared(self, remote: Any) -> None:
        for future in self._waiters.pop(remote, ()):
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._waiters.clear()
