"""What the broker answers when it refuses something, and how often it says so in the log.

The core raises typed Matrix errors; MQTT answers with a reason code (MQTT 3.1.1 has few: the
Connection maps them down). `ERROR_REASONS` is that mapping, kept in one place for the publish
pipeline (protocol.py) and the broker.
"""
from __future__ import annotations

import logging

from .constants import ReasonCode

log = logging.getLogger("frontends.mqtt")

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
