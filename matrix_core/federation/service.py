"""Federation's room side as a gateway front end: inbound event handling, the outbound queue,
and the hooks that let the core join rooms hosted elsewhere. Starts after the listener."""
from __future__ import annotations

import logging
from typing import Any

from .. import errors
from ..identifiers import server_of
from . import endpoints  # noqa: F401  (registers the room endpoints on the route table)
from .client import federation_path
from .inbound import InboundEvents
from .joins import remote_membership, send_invite
from .sender import FederationSender

log = logging.getLogger(__name__)


class FederationService:
    name = "federation-rooms"

    def __init__(self, hs: Any) -> None:
        self.hs = hs

    async def start(self) -> None:
        hs = self.hs
        hs.federation_inbound = InboundEvents(hs)
        hs.federation_sender = FederationSender(hs)
        hs.rooms.remote_membership = self._remote_membership
        hs.rooms.resolve_remote_alias = self._resolve_remote_alias
        hs.rooms.remote_invite = lambda room, event: send_invite(hs, room, event)
        await hs.federation_sender.start()
        # Tell every server we share a room with that we are (back) up: they retry what they owe us.
        rows = await hs.db.fetchall(
            "SELECT DISTINCT state_key FROM current_state WHERE type = 'm.room.member' AND membership = 'join'"
        )
        servers = {server_of(user) for (user,) in rows} - {hs.server_name}
        for server in servers:
            import asyncio

            asyncio.get_running_loop().create_task(hs.federation_sender.ping(server))

    async def stop(self) -> None:
        await self.hs.federation_sender.stop()

    def describe(self) -> str:
        return ""

    async def _remote_membership(self, user_id: str, room_id: str, servers: list[str], membership: str) -> str:
        return await remote_membership(self.hs, user_id, room_id, servers, membership)

    async def _resolve_remote_alias(self, alias: str) -> tuple[str, list[str]]:
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


__all__ = ["FederationService", "federation_path"]
