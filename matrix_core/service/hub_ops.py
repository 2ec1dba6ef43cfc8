"""What the hub's admin pages need from outside matrix_core, handed in at start-up.

matrix_core imports neither the front ends nor gateway/ (the layering tests hold it to that), yet
the MQTT page validates topic filters as the broker does and reads the broker's topic tree, the
Status page offers the backup `matrix-gateway backup` writes, and the Devices page names the
ports that are on and makes coaps keys as `device add --psk` does. gateway/app.py (and the broker,
when it starts) set these; an unset one means that part is not running here (the handlers answer
so, e.g. no MQTT broker: no topics).
"""
from __future__ import annotations

from dataclasses import dataclass
import sqlite3
from dataclasses import field
from typing import Any, Callable, Protocol

from ..device_setup import Listeners

#: (conn, user id, device id) -> (PSK identity, key), inside the caller's transaction
#: (frontends/coap/psk.add_device_psk). ValueError: the identity is taken.
PskMaker = Callable[[sqlite3.Connection, str, str], tuple[str, str]]


class TopicTree(Protocol):
    """The broker's live topic index (frontends/mqtt/topic_view.py)."""

    async def ready(self) -> None: ...

    def changes(self, since: int, limit: int) -> tuple[list[dict[str, Any]], int, bool]: ...

    async def wait(self, since: int, timeout: float) -> None: ...


class BinaryWriter(Protocol):
    """Where an archive is written, in order (a file, or backup_http's bounded chunk queue)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


@dataclass
class HubOps:
    # The broker's topic filter check for a rule (no $share/, no leading $): frontends/mqtt/topics.py.
    valid_rule_filter: Callable[[str], bool] | None = None
    # Set by the MQTT broker while it runs.
    topic_tree: TopicTree | None = None
    # Writes the archive `matrix-gateway backup` writes to a binary file object (blocking: run in a
    # thread); returns nothing, raises on failure (gateway/ops/backup.py).
    write_backup: Callable[[BinaryWriter], None] | None = None
    # The listeners that are on, once they run: what a new device's settings name (Devices page).
    listeners: Listeners = field(default_factory=Listeners)
    # How a coaps key is made for a device (the CLI's `device add --psk`); None: no coaps here.
    make_psk: PskMaker | None = None
