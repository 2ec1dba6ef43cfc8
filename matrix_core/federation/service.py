"""Federation's room side as a gateway front end: inbound event handling, the outbound queue,
and the hooks that let the core join rooms hosted elsewhere. Starts after the listener."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import errors
from ..events import Event
from ..identifiers import server_of
from ..service.room_cache import RoomCache
from ..store import federation as federation_store
from . import endpoints  # noqa: F401  (registers the room endpoints on the route table)
from .e2e import E2eFederation  # (importing it registers the federation key endpoints)
from .media import RemoteMedia  # (importing it registers the federation media endpoints)
from .client import federation_path
from .inbound import InboundEvents, PDUError
from .pdu import BadPDU, parse_pdu
from .joins import remote_membership, send_invite
from .sender import FederationSender

if TYPE_CHECKING:
    from ..homeserver import Homeserver
    from ..service.remote_rooms import RemoteRooms

log = logging.getLogger(__name__)


class FederationService:
    name = "federation-rooms"

    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs

    async def start(self) -> None:
        hs = self.hs
        hs.federation_inbound = InboundEvents(hs)
        hs.federation_sender = FederationSender(hs)
        hs.rooms.attach_federation(self)
        hs.accounts.remote_profile = self._remote_profile
        hs.media.remote = RemoteMedia(hs).fetch  # mxc://other.server/... fetched over federation
        await hs.federation_sender.start()
        # Typing and receipts of our users go out as EDUs from now (receipts: what is still owed).
        hs.typing.federation = hs.federation_sender
        await hs.receipts.attach_federation(hs.federation_sender)
        # E2EE: key queries/claims for remote users, to-device and device-list EDUs (issue 14)
        hs.e2e_federation = E2eFederation(hs)
        await hs.e2e_federation.start()
        # Tell every server we share a room with that we are (back) up: they retry what they owe us.
        servers = {server_of(user) for user in await federation_store.joined_user_ids(hs.db)} - {hs.server_name}
        for server in servers:
            import asyncio

            asyncio.get_running_loop().create_task(hs.federation_sender.ping(server))

    async def stop(self) -> None:
        await self.hs.e2e_federation.stop()
        await self.hs.federation_sender.stop()

    def describe(self) -> str:
        return ""

    # -- matrix_core.service.remote_rooms.RemoteRooms: what the rooms service asks of federation --

    federates = True

    async def remote_membership(self, user_id: str, room_id: str, servers: list[str], membership: str) -> str:
        return await remote_membership(self.hs, user_id, room_id, servers, membership)

    async def remote_invite(self, room: RoomCache, event: Event) -> Event:
        return await send_invite(self.hs, room, event)

    def events_persisted(self, room_id: str, events: list[tuple[int, Event]]) -> None:
        sender = self.hs.federation_sender  # set in start(), before federation is attached
        if sender.started:  # it refills from the store before listening
            sender.on_persisted(room_id, events)

    async def _remote_profile(self, user_id: str) -> dict[str, Any]:
        try:
            body = await self.hs.federation_client.request(
                server_of(user_id), "GET", "/_matrix/federation/v1/query/profile", query={"user_id": user_id})
        except Exception as exc:
            raise errors.not_found(f"Profile was not found: {exc}") from None
        if not isinstance(body, dict):
            raise errors.not_found("Profile was not found.")
        return {k: v for k, v in body.items() if k in ("displayname", "avatar_url") and isinstance(v, str)}

    async def backfill(self, room_id: str, limit: int) -> bool:
        """Fetch history older than the oldest event we hold, from a server in the room."""
        hs = self.hs
        servers = hs.federation_sender.servers_in_room(room_id) - {hs.server_name}
        if not servers:
            return False
        oldest = await federation_store.oldest_event(hs.db, room_id)
        if oldest is None:
            return False
        if oldest.get("type") == "m.room.create" or not oldest.get("prev_events"):
            return False
        known = await hs.rooms.get_events_any(oldest["prev_events"])
        wanted = [e for e in oldest["prev_events"] if e not in known or known[e][1]]
        if not wanted:
            return False
        version = hs.rooms.room_version(room_id)
        if version is None:  # not reached: a room with servers in it and an oldest event is known
            return False
        for server in sorted(servers):
            try:
                body = await hs.federation_client.request(
                    server, "GET", federation_path("/_matrix/federation/v1/backfill/{r}", r=room_id),
                    query={"v": wanted, "limit": str(min(100, max(limit, 10)))})
            except Exception as exc:
                log.info("backfill from %s failed: %s", server, exc)
                continue
            events = []
            for pdu in body.get("pdus", []) if isinstance(body, dict) else []:
                try:
                    events.append(parse_pdu(pdu, version))
                except BadPDU:
                    continue
            placed = False
            ordered = sorted(events, key=lambda e: (e.depth, e.origin_server_ts))
            positions = hs.rooms.reserve_backfill_positions(len(ordered))
            for event, position in zip(ordered, positions):
                try:
                    fut = await hs.federation_inbound.receive(server, event, backfilled=True, position=position)
                    if fut is not None:
                        await fut
                        placed = True
                except (PDUError, errors.MatrixError) as exc:
                    log.info("backfilled event %s not accepted: %s", event.event_id, exc)
            if placed:
                return True
        return False

    async def resolve_remote_alias(self, alias: str) -> tuple[str, list[str]]:
        server = alias.split(":", 1)[1]
        try:
            body = await self.hs.federation_client.request(
                server, "GET", "/_matrix/federation/v1/query/directory", query={"room_alias": alias})
        except Exception as exc:
            raise errors.not_found(f"Room alias {alias} not found: {exc}") from None
        room_id = body.get("room_id") if isinstance(body, dict) else None
        if not isinstance(room_id, str):
            raise errors.not_found(f"Room alias {alias} not found")
        servers = [s for s in body.get("servers", []) if isinstance(s, str)] or [server]
        return room_id, servers


if TYPE_CHECKING:  # mypy checks that FederationService is the core's RemoteRooms
    def _implements(service: FederationService) -> RemoteRooms:
        return service


__all__ = ["FederationService", "federation_path"]
