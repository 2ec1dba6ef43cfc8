"""MQTT and a full disk (pure: time is passed in).

MQTT 5 answers a PUBLISH the hub cannot store with PUBACK/PUBREC 0x97 Quota exceeded (0x89
Server busy is not a valid PUBACK reason) and keeps the connection. MQTT 3.1.1 has no negative
PUBACK, and acknowledging a message that was not stored would lose it, so the broker closes
the connection without acknowledging: the client keeps the message and sends it again after it
reconnects (paho, and Home Assistant through it, resend unacknowledged QoS 1/2 publishes on
reconnect). A client that got its CONNACK would reconnect at once (paho resets its back-off on a
successful CONNACK) and be closed again, a loop that hammers the hub; so for a while after
closing it that client's CONNECTs are refused with 0x03 Server unavailable, which makes its
back-off grow, until a write has succeeded again (the disk has room) or the hold-back expires
(errors.STORAGE_RETRY_MS): then it gets in, resends, and either is stored or is closed once more.
"""
from __future__ import annotations

ClientKey = tuple[str, str]  # (user id, client id)


class HoldBack:
    """3.1.1 clients disconnected because the disk was full, and when."""

    def __init__(self, seconds: float, limit: int = 10_000) -> None:
        self.seconds = seconds
        self.limit = limit
        self._since: dict[ClientKey, float] = {}

    def refused(self, client: ClientKey, now: float) -> None:
        """`client`'s publish could not be stored and its connection is being closed."""
        if len(self._since) >= self.limit:  # bounded: forget the expired, then the oldest
            self._since = {k: t for k, t in self._since.items() if now - t < self.seconds}
            while len(self._since) >= self.limit:
                del self._since[next(iter(self._since))]
        self._since[client] = now

    def holds(self, client: ClientKey, now: float, disk_full: bool) -> bool:
        """Refuse this CONNECT? Only while the disk is still full and not for longer than `seconds`."""
        since = self._since.get(client)
        if since is None:
            return False
        if disk_full and now - since < self.seconds:
            return True
        del self._since[client]
        return False

    def __len__(self) -> int:
        return len(self._since)
