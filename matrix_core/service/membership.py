"""Membership: join, invite, leave, kick, ban, knock, in rooms held here and (through the
federation front end, `RemoteRooms`) in rooms hosted elsewhere."""
from __future__ import annotations

import logging
from typing import Any

from .. import errors
from ..identifiers import is_valid_user_id
from ..ratelimit import RateLimiter
from ..store import Database
from ..store import accounts as account_rows
from .accounts import Requester
from .aliases import RoomAliases
from .event_builder import EventBuilder
from .event_persister import EventPersister
from .federated_rooms import FederatedRooms
from .remote_rooms import NO_FEDERATION, RemoteRooms
from .room_registry import RoomRegistry

log = logging.getLogger(__name__)


class RoomMembership:
    def __init__(self, db: Database, server_name: str, registry: RoomRegistry, builder: EventBuilder,
                 persister: EventPersister, aliases: RoomAliases, federated: FederatedRooms,
                 limiter: RateLimiter) -> None:
        self.db = db
        self.limiter = limiter
        self.server_name = server_name
        self.registry = registry
        self.builder = builder
        self.persister = persister
        self.aliases = aliases
        self.federated = federated
        self.remote: RemoteRooms = NO_FEDERATION  # rooms hosted elsewhere (Rooms.attach_federation)

    async def update_membership(self, requester: Requester, room_id: str, target: str, membership: str,
                                reason: str | None = None, extra: dict[str, Any] | None = None,
                                rate_limit: bool = True) -> str:
        """join / invite / leave / ban / knock, and kick/unban as leave of another user. Each
        costs one message of the user's rate (`rate_limit` False: already counted)."""
        if rate_limit:
            self.limiter.check(requester.user_id)
        if not is_valid_user_id(target):
            raise errors.invalid_param(f"Invalid user id {target!r}")
        room = await self.registry.get_room(room_id)
        content: dict[str, Any] = {"membership": membership}
        if reason is not None:
            if not isinstance(reason, str):
                raise errors.bad_json("'reason' must be a string")
            content["reason"] = reason
        if membership in ("join", "invite", "knock"):
            profile = await account_rows.profile(self.db, target)
            if profile is not None:
                if profile[0] is not None:
                    content["displayname"] = profile[0]
                if profile[1] is not None:
                    content["avatar_url"] = profile[1]
        if extra:
            content.update(extra)
        current = room.member(target)
        if membership == "join" and current == "join" and target == requester.user_id:
            return room.state[("m.room.member", target)].event_id  # already joined: idempotent
        if membership == "leave" and target == requester.user_id and current in (None, "leave"):
            raise errors.forbidden("You are not in this room")
        if membership == "knock" and room.state_content("m.room.join_rules").get("join_rule") not in (
            "knock", "knock_restricted"
        ):
            raise errors.forbidden("This room does not accept knocks")
        event = self.builder.build_event(room, requester.user_id, "m.room.member", content, target)
        if membership == "invite" and not target.endswith(":" + self.server_name):
            if not self.remote.federates:
                raise errors.forbidden("This hub does not federate: only local users can be invited")
            # The invitee's server countersigns first (invites v2), then the event is ours to place.
            event = await self.remote.remote_invite(room, event)
        await self.persister.apply_and_enqueue(room, [event])
        return event.event_id

    async def leave_remote_invite(self, requester: Requester, room_id: str) -> None:
        """Decline an invite into a room hosted elsewhere (make_leave/send_leave via the inviter)."""
        invite = self.federated.remote_invites.get((requester.user_id, room_id))
        if invite is None:
            raise errors.not_found(f"Unknown room {room_id}")
        if self.remote.federates:
            try:
                await self.remote.remote_membership(requester.user_id, room_id,
                                                    [invite[1]["sender"].split(":", 1)[1]], "leave")
            except Exception as exc:  # the inviter may be gone: declining locally still counts
                log.info("could not tell the inviting server about the declined invite: %s", exc)
        await self.federated.forget_remote_invite(requester.user_id, room_id)
        self.registry.memberships.get(requester.user_id, {}).pop(room_id, None)

    async def join(self, requester: Requester, room_id_or_alias: str, via: list[str] | None = None) -> str:
        """Join a local room, or one hosted elsewhere (through the alias's servers, `via`, or the
        server that invited us). Costs one message of the user's rate."""
        self.limiter.check(requester.user_id)
        servers = list(via or [])
        if room_id_or_alias.startswith("#") and not room_id_or_alias.endswith(":" + self.server_name):
            if not self.remote.federates:
                raise errors.not_found(f"Room alias {room_id_or_alias} not found")
            room_id, alias_servers = await self.remote.resolve_remote_alias(room_id_or_alias)
            servers += alias_servers
        elif room_id_or_alias.startswith("!") and room_id_or_alias not in self.registry.versions:
            room_id = room_id_or_alias
        else:
            room_id = await self.aliases.resolve_room(room_id_or_alias)
        if room_id in self.registry.versions:
            member = self.registry.membership_of(requester.user_id, room_id)
            if member is not None and member[0] == "join":
                return room_id
            try:  # a room we hold: our own join event, built on our copy of its state
                await self.update_membership(requester, room_id, requester.user_id, "join", rate_limit=False)
                return room_id
            except errors.MatrixError:
                if not servers or not self.remote.federates:
                    raise  # else: not allowed on our (possibly stale) copy; ask a resident server
        invite = self.federated.remote_invites.get((requester.user_id, room_id))
        if invite is not None:
            servers.append(invite[1]["sender"].split(":", 1)[1])
        if ":" in room_id:  # room versions before 12 name their creating server
            servers.append(room_id.split(":", 1)[1])
        if not self.remote.federates or not servers:
            raise errors.not_found(f"Unknown room {room_id}")
        await self.remote.remote_membership(requester.user_id, room_id, list(dict.fromkeys(servers)), "join")
        return room_id
