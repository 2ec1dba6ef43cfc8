"""What the rooms service asks of federation: the declared interface a federation front end
implements (matrix_core/federation/service.py), and the hub-alone default.

The core never imports federation: it holds one `RemoteRooms` and asks it to join or leave a room
hosted elsewhere, resolve another server's alias, have an invite countersigned, fetch older
history, and hear about every committed batch of events (the outbound queue). Without
federation (`NO_FEDERATION`) `federates` is False and the rooms service refuses these the way a
lone hub does (an unknown alias or room, an invite only for local users)."""
from __future__ import annotations

from typing import Protocol

from .. import errors
from ..events import Event
from .room_cache import RoomCache


class RemoteRooms(Protocol):
    """Rooms on other servers, as the core needs them."""

    @property
    def federates(self) -> bool:
        """False: this hub talks to no other server (the methods below are never called)."""
        ...

    async def remote_membership(self, user_id: str, room_id: str, servers: list[str], membership: str) -> str:
        """Join or leave (`membership`) a room hosted elsewhere through one of `servers`."""
        ...

    async def resolve_remote_alias(self, alias: str) -> tuple[str, list[str]]:
        """Another server's alias -> (room id, servers in the room)."""
        ...

    async def remote_invite(self, room: RoomCache, event: Event) -> Event:
        """Have the invitee's server countersign our invite event (invites v2)."""
        ...

    async def backfill(self, room_id: str, limit: int) -> bool:
        """Fetch up to `limit` events older than the oldest held; True if any was placed."""
        ...

    def events_persisted(self, room_id: str, events: list[tuple[int, Event]]) -> None:
        """A batch of a room's events was committed (announced ones, in position order)."""
        ...


class NoFederation:
    """The hub alone: nothing is hosted elsewhere."""

    federates = False

    async def remote_membership(self, user_id: str, room_id: str, servers: list[str], membership: str) -> str:
        raise errors.not_found(f"Unknown room {room_id}")

    async def resolve_remote_alias(self, alias: str) -> tuple[str, list[str]]:
        raise errors.not_found(f"Room alias {alias} not found")

    async def remote_invite(self, room: RoomCache, event: Event) -> Event:
        raise errors.forbidden("This hub does not federate: only local users can be invited")

    async def backfill(self, room_id: str, limit: int) -> bool:
        return False

    def events_persisted(self, room_id: str, events: list[tuple[int, Event]]) -> None:
        return None


NO_FEDERATION: RemoteRooms = NoFederation()
