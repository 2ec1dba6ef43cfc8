"""The Event: an immutable view of one PDU (the signed JSON that federates) plus its derived id.

The PDU dict is the source of truth and is never mutated after signing; the properties only read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .room_versions import RoomVersion


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    pdu: dict[str, Any]
    event_id: str
    room_version: RoomVersion
    # The PDU as canonical JSON, when it is already at hand (events we built): stored as is,
    # then released (recent events stay cached in memory: a second copy of each is too much).
    canonical: bytes | None = field(default=None, compare=False, repr=False)

    def release_canonical(self) -> None:
        object.__setattr__(self, "canonical", None)

    @classmethod
    def from_pdu(cls, pdu: dict[str, Any], room_version: RoomVersion) -> "Event":
        """Wrap a complete (hashed and signed) PDU; its id is its reference hash."""
        from .event_hashing import compute_event_id

        return cls(pdu, compute_event_id(pdu, room_version), room_version)

    @property
    def type(self) -> str:
        return self.pdu["type"]

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def sender(self) -> str:
        return self.pdu["sender"]

    @property
    def content(self) -> dict[str, Any]:
        return self.pdu.get("content", {})

    @property
    def room_id(self) -> str:
        """The room id; for a v12 create event it is derived from the event id."""
        room_id = self.pdu.get("room_id")
        if room_id is None and self.room_version.room_id_is_create_event_id and self.type == "m.room.create":
            return "!" + self.event_id[1:]
        return room_id  # type: ignore[return-value]

    @property
    def prev_event_ids(self) -> list[str]:
        return self.pdu.get("prev_events", [])

    @property
    def auth_event_ids(self) -> list[str]:
        return self.pdu.get("auth_events", [])

    @property
    def depth(self) -> int:
        return self.pdu.get("depth", 0)

    @property
    def origin_server_ts(self) -> int:
        return self.pdu.get("origin_server_ts", 0)

    @property
    def redacts(self) -> str | None:
        """The redacted event's id, wherever this room version keeps it."""
        if self.room_version.msc2174_redacts_in_content:
            return self.content.get("redacts") or self.pdu.get("redacts")
        return self.pdu.get("redacts")

    @property
    def membership(self) -> str | None:
        return self.content.get("membership") if self.type == "m.room.member" else None

    def state_pair(self) -> tuple[str, str]:
        assert self.state_key is not None
        return (self.type, self.state_key)

    def origin_server(self) -> str:
        """The server that created this event: the domain of its sender."""
        return self.sender.split(":", 1)[1]

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} from {self.sender}>"
