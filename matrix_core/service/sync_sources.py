"""What /sync draws from besides room timelines: account data, receipts, typing, to-device,
device lists, presence, push rules, notification counts.

Each such domain registers one `SyncSource` with the Sync service (`Sync.add_source`). A source
owns one stream of `sync_token.STREAM_NAMES` (its own position counter), puts what changed for a
user into a `SyncOutput`, and calls `Sync.notify()` (through the hook it is given) when its
position moves, so waiting long-polls wake. Sync itself knows none of these domains: a new one
(the E2EE issue's to-device messages, say) is a new source, not an edit of sync.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .accounts import Requester


@dataclass(slots=True)
class SyncContext:
    """One sync request, as the sources see it."""
    requester: Requester
    joined_rooms: list[str]   # rooms the user is joined to now (the join section's candidates)
    initial: bool             # no `since`: sources give their current state, not a delta
    full_state: bool
    sync_filter: dict[str, Any]


@dataclass(slots=True)
class SyncOutput:
    """What the sources add to one sync answer; Sync merges it into the response body."""
    top: dict[str, list[Any]] = field(default_factory=dict)            # "account_data", "presence", ...
    top_fields: dict[str, Any] = field(default_factory=dict)           # "device_lists", counts, ...
    rooms: dict[str, dict[str, list[Any]]] = field(default_factory=dict)   # room -> "ephemeral" -> events
    room_fields: dict[str, dict[str, Any]] = field(default_factory=dict)   # room -> "unread_notifications" -> {...}

    def add_top(self, section: str, events: list[Any]) -> None:
        """Events for a top-level section (`account_data`, `presence`, `to_device`)."""
        if events:
            self.top.setdefault(section, []).extend(events)

    def add_room(self, room_id: str, section: str, events: list[Any]) -> None:
        """Events for a joined room's section (`ephemeral`, `account_data`): the room appears."""
        if events:
            self.rooms.setdefault(room_id, {}).setdefault(section, []).extend(events)

    def set_room_field(self, room_id: str, key: str, value: Any, *, makes_room_appear: bool = False) -> None:
        """A non-list field of a joined room's body (`unread_notifications`, ...). It is shown only
        for rooms in the answer, unless `makes_room_appear` (a count that changed on its own)."""
        self.room_fields.setdefault(room_id, {})[key] = value
        if makes_room_appear:
            self.rooms.setdefault(room_id, {})

    def has_news(self) -> bool:
        return bool(self.top or self.rooms or any(self.top_fields.get(k) for k in NEWSWORTHY_FIELDS))


# Top-level fields whose non-empty value is news that ends a long-poll (counts are not).
NEWSWORTHY_FIELDS = ("device_lists",)


class SyncSource:
    """Base of a /sync source. `stream` names its position in the token (sync_token.STREAM_NAMES)."""

    stream: str = ""

    def position(self) -> int:
        """The newest position of this source's stream."""
        return 0

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        """Add what changed in (since, upto] for ctx.requester (everything current when
        ctx.initial; since is then 0)."""

    async def annotate(self, ctx: SyncContext, room_ids: list[str], out: SyncOutput) -> None:
        """Called once the answer's joined rooms are known (timeline or source news): add per-room
        fields every shown room carries, such as unread notification counts."""

    async def every_answer(self, ctx: SyncContext, out: SyncOutput) -> None:
        """Called for every answer, moved or not: fields each answer carries that are no stream's
        news (the E2EE one-time key counts). Must cost nothing for users it does not concern."""
