"""The /sync `next_batch` token: one position per stream a sync answer draws from. Pure.

Room events are one stream (the event store's stream positions); account data, receipts, typing,
to-device messages, device-list changes, presence and push rules each move on their own counter,
so a client that has seen event 120 and receipt 7 gets only what came after each. The token is
`s<events>_<account_data>_<receipts>_...` in `STREAM_NAMES` order (Synapse's shape). A token with
fewer parts (an older hub's `s120`, or a stream added later) reads the missing ones as 0: the
client gets that stream's current state again, which is always safe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import errors
from .params import MAX_POSITION

STREAM_NAMES = ("events", "account_data", "receipts", "typing", "to_device", "device_lists",
                "presence", "push_rules")
SIDE_STREAMS = STREAM_NAMES[1:]

_SYNC_TOKEN = re.compile(r"[st](-?[0-9]{1,30})((?:_[0-9]{1,30}){0,%d})\Z" % len(SIDE_STREAMS))


@dataclass(frozen=True, slots=True)
class SyncToken:
    events: int
    side: dict[str, int] = field(default_factory=dict)  # stream name -> position (absent: 0)

    def position(self, stream: str) -> int:
        return self.events if stream == "events" else self.side.get(stream, 0)

    def format(self) -> str:
        return "s" + "_".join([str(self.events)] + [str(self.side.get(n, 0)) for n in SIDE_STREAMS])


def parse_sync_token(raw: str | None) -> SyncToken | None:
    """A `since` token, strictly: M_INVALID_PARAM for anything we did not hand out."""
    if raw is None:
        return None
    match = _SYNC_TOKEN.match(raw)
    if match is not None:
        events = int(match.group(1))
        side_parts = [int(p) for p in match.group(2).split("_")[1:]]
        if -MAX_POSITION <= events <= MAX_POSITION and all(p <= MAX_POSITION for p in side_parts):
            return SyncToken(events, dict(zip(SIDE_STREAMS, side_parts)))
    raise errors.invalid_param(f"Invalid sync token {raw[:40]!r}")

