"""The hub's duties as an appliance while it runs: tell systemd (READY, watchdog, STOPPING),
record its address for `status`, purge old readings, advertise itself on the LAN.

Kept out of gateway/app.py so start-up there stays readable: serve() calls start() once the hub
is ready and stop() before it shuts the listeners down.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrix_core.clock import now_ms

from .sd_notify import Notifier
from .status import clear_address, record_address

if TYPE_CHECKING:
    from ..config import GatewayConfig


class Appliance:
    def __init__(self, config: "GatewayConfig", data_dir: Path, gateway: Any) -> None:
        self.config, self.data_dir, self.gateway = config, data_dir, gateway
        self.notifier = Notifier()
        self._tasks: list[asyncio.Task[None]] = []
        self._advertiser: Any = None

    def record_address(self) -> None:
        """Before the ready line, so that a disk too full for this small file fails start-up
        (exit non-zero, systemd restarts the hub) instead of killing a hub that said it was ready."""
        try:
            record_address(self.data_dir, self.config.bind, self.gateway.http_port or self.config.http_port)
        except BaseException:
            clear_address(self.data_dir)
            raise

    def start(self) -> None:
        """After the ready line: READY=1, the watchdog, the disk space timer, retention, mDNS."""
        config, gateway = self.config, self.gateway
        self.notifier.ready(f"serving {gateway.describe()}")
        self._tasks.append(asyncio.create_task(self.notifier.keep_watchdog_alive(), name="sd-watchdog"))
        from .disk import watch as watch_disk

        self._tasks.append(asyncio.create_task(watch_disk(
            self.data_dir, config.disk_warn_free_mb, gateway.hs.db.storage), name="disk-space"))
        if config.retention_interval_minutes > 0:
            from .retention import purge_periodically

            self._tasks.append(asyncio.create_task(purge_periodically(
                gateway.hs.db, config.retention_default_days, config.retention_interval_minutes * 60.0,
                now_ms), name="retention"))
        from ..appservices import watch_registrations  # `appservice add/remove` applied live

        self._tasks.append(asyncio.create_task(watch_registrations(config, self.data_dir, gateway.hs),
                                               name="appservice-files"))
        if config.mdns:
            from .discovery import Advertiser

            self._advertiser = Advertiser(config, gateway.http_port or config.http_port,
                                          [frontend.name for frontend in gateway.frontends])
            self._advertiser.start_in_background()

    async def stop(self) -> None:
        """On SIGTERM, before the listeners close: STOPPING=1, mDNS goodbyes, tasks cancelled."""
        self.notifier.stopping()
        clear_address(self.data_dir)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._advertiser is not None:
            await self._advertiser.stop()
