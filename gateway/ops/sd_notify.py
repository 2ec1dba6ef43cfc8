"""The sd_notify protocol without libsystemd: one datagram per state change to $NOTIFY_SOCKET.

systemd's Type=notify waits for READY=1, and WatchdogSec= restarts the hub unless WATCHDOG=1 keeps
arriving; pinging from the event loop means a wedged loop (not just a dead process) is caught.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes:
    """A leading '@' names a Linux abstract-namespace socket (a NUL byte on the wire)."""
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


class Notifier:
    """Sends state lines to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; False when no manager listens or it failed."""
        if self.socket_path is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), _address(self.socket_path))
        except OSError as exc:  # the hub keeps running; systemd will notice the silence itself
            log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def keep_watchdog_alive(self) -> None:
        """Ping at half the interval systemd asked for, from the event loop, until cancelled."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval / 2)


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from WATCHDOG_USEC, if the watchdog is meant for this process (WATCHDOG_PID)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000
