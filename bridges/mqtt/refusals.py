"""What the broker answers when it refuses something, and how often it says so in the log.

The core raises typed Matrix errors; MQTT answers with a reason code (MQTT 3.1.1 has few: the
Connection maps them down). `ERROR_REASONS` is that mapping, kept in one place for the publish
pipeline (protocol.py) and the broker.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from .constants import ReasonCode

log = logging.getLogger("bridges.mqtt")

ERROR_REASONS = {
    "M_FORBIDDEN": ReasonCode.NOT_AUTHORIZED,
    "M_NOT_FOUND": ReasonCode.NOT_AUTHORIZED,
    "M_TOO_LARGE": ReasonCode.QUOTA_EXCEEDED,
    "M_BAD_JSON": ReasonCode.PAYLOAD_FORMAT_INVALID,
    "M_RESOURCE_LIMIT_EXCEEDED": ReasonCode.QUOTA_EXCEEDED,  # max_rooms_per_user; a full disk (full_disk.py)
}


class PublishRefused(Exception):
    """A PUBLISH the broker itself refuses (a reserved topic, a squatted alias, bad UTF-8)."""

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class Quiet:
    """At most one log line per period for something strangers can cause at will (connections
    refused or timed out): the next line counts those not logged."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._next = 0.0
        self._unlogged = 0

    def log(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._unlogged += 1
            return
        self._next = now + self.period
        if self._unlogged:
            message += " (%d more not logged in the last %.0f s)"
            args = (*args, self._unlogged, self.period)
        self._unlogged = 0
        log.log(level, message, *args)
