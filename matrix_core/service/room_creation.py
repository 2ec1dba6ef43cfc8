"""Creating rooms: the create event (whose hash is the room id in room version 12), the preset's
initial state, invites, an alias, all built before anything is stored; and the per-account
room quota (max_rooms_per_user)."""
from __future__ import annotations

from typing import Any

from .. import errors
from ..identifiers import is_valid_user_id, random_string
from ..ratelimit import RateLimiter
from ..room_presets import check_body as check_create_body, initial_state_events
from ..room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from ..store import Database
from ..store import rooms as room_rows
from .accounts import Requester
from .aliases import RoomAliases
from .event_builder import EventBuilder
from .event_persister import EventPersister
from .room_cache import RoomCache
from .room_registry import RoomRegistry


CREATE_COST = 5  # of the per-user message rate


class RoomCreation:
    def __init__(self, db: Database, server_name: str, registry: RoomRegistry, builder: EventBuilder,
                 persister: EventPersister, aliases: RoomAliases, limiter: RateLimiter, max_rooms_per_user: int = 0,
                 admin_contact: str = "") -> None:
        self.db = db
        self.limiter = limiter
        self.server_name = server_name
        self.registry = registry
        self.builder = builder
        self.persister = persister
        self.aliases = aliases
        # Rooms an account may create (0: no limit; hub admins are exempt), and the contact a
        # refusal names (the config's max_rooms_per_user and admin_contact).
        self.max_rooms_per_user = max_rooms_per_user
        self.admin_contact = admin_contact
        self._rooms_created: dict[str, int] = {}  # user -> rooms created, once read

    async def create_room(self, requester: Requester, body: dict[str, Any], *,
                          reserved_alias_ok: bool = False, rate_limit: bool = True) -> dict[str, Any]:
        """`reserved_alias_ok`: the caller is the component owning the alias's namespace.
        `rate_limit`: a room costs CREATE_COST messages of the user's rate; False for a room a
        component makes on its own (MQTT's default rooms)."""
        if rate_limit:
            self.limiter.check(requester.user_id, cost=CREATE_COST)
        check_create_body(body, self.server_name)
        version_id = body.get("room_version", DEFAULT_ROOM_VERSION.identifier)
        if not isinstance(version_id, str) or version_id not in KNOWN_ROOM_VERSIONS:
            raise errors.unsupported_room_version(str(version_id))
        version = KNOWN_ROOM_VERSIONS[version_id]
        creator = requester.user_id
        await self._check_room_quota(requester)

        alias = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            if not isinstance(alias_name, str) or not alias_name or ":" in alias_name or "#" in alias_name:
                raise errors.MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name")
            alias = f"#{alias_name}:{self.server_name}"
            if not reserved_alias_ok:
                self.aliases.check_alias_namespace(requester, alias_name)
            if await self.aliases.resolve_alias_local(alias) is not None:
                raise errors.MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        creation_content = body.get("creation_content", {})
        if not isinstance(creation_content, dict):
            raise errors.bad_json("'creation_content' must be an object")
        create_content = dict(creation_content)
        create_content["room_version"] = version.identifier
        if not version.implicit_room_creator:
            create_content["creator"] = creator
        later = initial_state_events(version, creator, body, alias)
        invites = body.get("invite", [])
        for invitee in invites:
            if not is_valid_user_id(invitee):
                raise errors.invalid_param(f"Invalid user id to invite: {invitee!r}")

        if version.room_id_is_create_event_id:
            pdu = {
                "type": "m.room.create", "state_key": "", "sender": creator, "content": create_content,
                "origin_server_ts": self.builder.clock(), "depth": 1, "prev_events": [], "auth_events": [],
            }
            create = self.builder.finish_event(pdu, {}, version)
            # The room id is the create event's hash, and its only entropy is the millisecond:
            # one user creating rooms in the same millisecond (an MQTT device's first publishes
            # to new topics, a script) would make one room id twice. Like Synapse, move
            # origin_server_ts on until the id is new; nothing awaits between this check and
            # the room's registration below, so two creations cannot both pass it.
            while create.room_id in self.registry.versions:
                pdu["origin_server_ts"] = create.origin_server_ts + 1
                create = self.builder.finish_event(pdu, {}, version)
            room_id = create.room_id
        else:
            room_id = f"!{random_string(18)}:{self.server_name}"
            pdu = {
                "type": "m.room.create", "room_id": room_id, "state_key": "", "sender": creator,
                "content": create_content, "origin_server_ts": self.builder.clock(), "depth": 1,
                "prev_events": [], "auth_events": [],
            }
            create = self.builder.finish_event(pdu, {}, version)

        room = RoomCache(room_id, version)
        room.state[("m.room.create", "")] = create
        room.extremities = [create.event_id]
        room.depth = 1
        events = [create]
        # Build every event against a scratch copy first, so a bad initial_state fails whole.
        scratch = RoomCache(room_id, version, dict(room.state), list(room.extremities), room.depth)
        specs: list[tuple[str, str, dict[str, Any]]] = [("m.room.member", creator, {"membership": "join"})]
        specs += later
        # Local invitees are invited in the room's first events; remote ones need their server's
        # countersignature, so Rooms.create_room invites them once the room exists.
        invite_content: dict[str, Any] = {"membership": "invite", **({"is_direct": True} if body.get("is_direct") else {})}
        specs += [("m.room.member", invitee, dict(invite_content)) for invitee in invites
                  if self.is_local_user(invitee)]
        for event_type, state_key, content in specs:
            ev = self.builder.build_event(scratch, creator, event_type, content, state_key)
            scratch.state[(event_type, state_key)] = ev
            scratch.extremities = [ev.event_id]
            scratch.depth = ev.depth
            events.append(ev)

        counted = self._count_room(requester)
        self.registry.versions[room_id] = version
        self.registry.rooms[room_id] = room
        try:
            await self.persister.apply_and_enqueue(room, events, new_room=True)
        except BaseException:
            self.registry.rooms.pop(room_id, None)
            self.registry.versions.pop(room_id, None)
            if counted:
                self._rooms_created[creator] -= 1
            raise
        if alias is not None:
            await self.aliases.create_alias(requester, alias, room_id, reserved_ok=True)
        if body.get("visibility") == "public":
            await self.db.write(lambda c: room_rows.set_public(c, room_id))
        return {"room_id": room_id, **({"room_alias": alias} if alias else {})}

    def is_local_user(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    def remote_invitees(self, body: dict[str, Any]) -> list[str]:
        """The createRoom body's invitees on other servers (checked by create_room already)."""
        return [u for u in dict.fromkeys(body.get("invite", [])) if not self.is_local_user(u)]

    async def _check_room_quota(self, requester: Requester) -> None:
        """Refuse before any work if the account already created max_rooms_per_user rooms (one
        account made 299 during fuzzing). Counts every room it created, MQTT default rooms too."""
        limit = self.max_rooms_per_user
        if not limit or requester.is_admin:
            return
        if requester.user_id not in self._rooms_created:
            count = await room_rows.count_created_by(self.db, requester.user_id)
            self._rooms_created.setdefault(requester.user_id, count)  # a concurrent call may have read it
        self._count_room(requester, dry_run=True)

    def _count_room(self, requester: Requester, dry_run: bool = False) -> bool:
        """Count one more room for its creator (no await between the check and the count, so
        concurrent creations cannot both take the last one); True if counted."""
        limit = self.max_rooms_per_user
        if not limit or requester.is_admin:
            return False
        count = self._rooms_created[requester.user_id]
        if count >= limit:
            raise errors.resource_limit_exceeded(
                f"This account has created {count} rooms, the most this hub allows (max_rooms_per_user)",
                self.admin_contact)
        if not dry_run:
            self._rooms_created[requester.user_id] = count + 1
        return not dry_run
