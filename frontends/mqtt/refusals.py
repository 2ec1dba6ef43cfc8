"""What the broker answers when it refuses something, and how often it says so in the log.

The core raises typed Matrix errors; MQTT answers with a reason code (MQTT 3.1.1 has few: the
Connection maps them down). `ERROR_REASONS` is that mapping, kept in one place for the publish
pipeline (protocol.py) and the broker.
"""
from __future__ import annotations

import logging

from matrix_core.log_limit import LogLimiter

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


#: How long a refusal of one client's publishes to one topic stays unlogged after its line: a
#: device retrying every second writes one line an hour, not 3,600.
REFUSAL_LOG_INTERVAL = 3600.0


MAX_LOGGED_TOPIC = 200  # a topic may be 64 KiB long; a log line need not be


def log_refusal(limiter: LogLimiter, user_id: str, client_id: str, topic: str, qos: int, reason: int,
                exc: BaseException) -> None:
    """One line per account, client and topic (and interval): the account, not only the client
    id (Home Assistant's is random), the reason code and why, whatever the QoS."""
    shown = topic if len(topic) <= MAX_LOGGED_TOPIC else topic[:MAX_LOGGED_TOPIC] + "..."
    limiter.log(log, logging.INFO, f"{user_id}\0{client_id}\0{topic}",
                "MQTT publish to %r by %s (client %r, QoS %d) refused: 0x%02X %s",
                shown, user_id, client_id, qos, reason, exc)
