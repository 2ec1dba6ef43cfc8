"""Rooms: the one service every front end talks to about rooms, a facade over its parts.

Every front end ends up here: an HTTP PUT, a CoAP POST and an MQTT PUBLISH all become
`send_event`. The build-check-enqueue step is synchronous (see room_cache), the commit is awaited,
and only then does the caller get its event id.

The parts, each owning its own caches (as Synapse splits handlers from per-domain stores; the SQL
is in matrix_core/store/events.py, state_groups.py and rooms.py):

- room_registry.RoomRegistry: rooms held, their in-memory views, local users' memberships
- event_builder.EventBuilder: building and auth-checking local events (pure CPU, two memos)
- event_persister.EventPersister: positions, state groups, the write of each batch, what a commit
  announces, and the events of the last moments (their writes may still be queued)
- room_send.RoomSending: sending (idempotent per transaction id; the batch form for MQTT), redaction
- room_creation.RoomCreation: creating rooms, the per-account room quota
- membership.RoomMembership: join / invite / leave / kick / ban / knock, here and elsewhere
- aliases.RoomAliases: local aliases and reserved alias namespaces
- room_reads.RoomReads: events, state, timelines and /messages, as clients and servers get them
- federated_rooms.FederatedRooms: placing other servers' events, invites from other servers
- remote_rooms.RemoteRooms: what the core asks of federation (declared, attached once)

The facade's methods are the parts' own bound methods, so a send pays no extra call.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..notifier import EventStream
from ..ratelimit import RateLimit, RateLimiter
from ..signing import SigningKey
from ..store import Database
from .accounts import Requester
from .aliases import RoomAliases
from .event_builder import EventBuilder
from .event_persister import EventPersister
from .federated_rooms import FederatedRooms
from .membership import RoomMembership
from .read_access import ReadGate
from .relations import Relations
from .remote_rooms import NO_FEDERATION, RemoteRooms
from .room_creation import RoomCreation
from .room_reads import RoomReads
from .room_registry import RoomRegistry
from .room_send import RoomSending, SentTransactions


def now_ms() -> int:
    return int(time.time() * 1000)


class Rooms:
    def __init__(self, db: Database, stream: EventStream, server_name: str, signing_key: SigningKey,
                 clock: Callable[[], int] = now_ms, *, max_rooms_per_user: int = 0, admin_contact: str = "",
                 limiter: RateLimiter | None = None) -> None:
        """`max_rooms_per_user`: rooms an account may create (0: no limit; hub admins are exempt);
        `admin_contact`: named when that limit refuses (the config's keys of the same names);
        `limiter`: the per-user message rate (none if not given), which sending, creating rooms and
        membership changes take from whichever front end they come (M_LIMIT_EXCEEDED with
        retry_after_ms when over it)."""
        limiter = limiter if limiter is not None else RateLimiter(RateLimit(per_second=0, burst=0))
        self.db = db
        self.stream = stream
        self.server_name = server_name
        self.signing_key = signing_key
        self.clock = clock
        self.remote: RemoteRooms = NO_FEDERATION
        self.read_gate = read_gate = ReadGate(db)
        self._registry = registry = RoomRegistry(db, server_name)
        self._builder = builder = EventBuilder(server_name, signing_key, clock)
        self._persister = persister = EventPersister(db, stream, registry, read_gate, server_name)
        self._txns = txns = SentTransactions(db)
        self._reads = reads = RoomReads(db, stream, registry, persister, txns, read_gate, server_name, signing_key,
                                        clock)
        self._sending = sending = RoomSending(registry, builder, persister, txns, reads, limiter)
        # Relations, threads, context and the bundled aggregations every read adds (service/relations.py)
        self.relations = reads.relations = Relations(db, stream, persister, reads)
        sending.check_relation = self.relations.check_send
        self._aliases = aliases = RoomAliases(db, server_name, registry)
        self._creation = creation = RoomCreation(db, server_name, registry, builder, persister, aliases,
                                                 limiter, max_rooms_per_user, admin_contact)
        self._federated = federated = FederatedRooms(db, stream, registry, persister, reads)
        self._membership = membership = RoomMembership(db, server_name, registry, builder, persister, aliases,
                                                       federated, limiter)
        self.compactor = persister.compactor  # the event index's background work (stopped with the hub)

        # -- the rooms held, and where local users stand in them --
        # user_id -> room_id -> (membership, stream position of that member event)
        self.memberships = registry.memberships
        self.room_version = registry.room_version
        self.loaded_room = registry.loaded_room
        self.get_room = registry.get_room
        self.membership_of = registry.membership_of
        self.joined_room_ids = registry.joined_room_ids
        self.add_room = registry.add_room
        # -- sending (the hot path: HTTP PUT, CoAP POST, MQTT PUBLISH) --
        # Take one message of the user's rate, or raise M_LIMIT_EXCEEDED (retry_after_ms): for a
        # front end that admits a message before building it (MQTT slows the publisher down and
        # then sends with rate_limit=False).
        self.check_send_rate = limiter.check
        self.send_event = sending.send_event
        self.send_events_nowait = sending.send_events_nowait
        self.redact = sending.redact
        # -- rooms, membership, aliases --
        self.update_membership = membership.update_membership
        self.join = membership.join
        self.leave_remote_invite = membership.leave_remote_invite
        self.resolve_alias_local = aliases.resolve_alias_local
        self.resolve_room = aliases.resolve_room
        self.reserve_alias_namespace = aliases.reserve_alias_namespace
        self.create_alias = aliases.create_alias
        self.alias_service = aliases  # application services hook into it (service/appservice.py)
        self.delete_alias = aliases.delete_alias
        # -- reading --
        self.fetch_event = reads.fetch_event
        self.get_events_any = reads.get_events_any
        self.rows_to_events = reads.rows_to_events
        self.serialize = reads.serialize
        self.outgoing_pdu = reads.outgoing_pdu
        self.outgoing_pdus = reads.outgoing_pdus
        self.read_access = reads.read_access
        self.get_state = reads.get_state
        self.get_state_event = reads.get_state_event
        self.state_at = reads.state_at
        self.load_state_group = reads.load_state_group
        self.get_event_for_client = reads.get_event_for_client
        self.timeline = reads.timeline
        self.messages = reads.messages
        # -- events and invites from other servers (federation's inbound handler) --
        self.placed_in_memory = persister.placed_in_memory
        self.reserve_backfill_positions = persister.reserve_backfill_positions
        self.enqueue_outliers = persister.enqueue_outliers
        self.enqueue_rejected = persister.enqueue_rejected
        self.state_after = federated.state_after
        self.resolve_states = federated.resolve_states
        self.place_federated_event = federated.place_federated_event
        # (user_id, room_id) -> (room version, invite PDU, stripped state) for rooms on other servers
        self.remote_invites = federated.remote_invites
        self.remember_remote_invite = federated.remember_remote_invite
        self.forget_remote_invite = federated.forget_remote_invite
        self.invite_state = reads.invite_state

    def is_joined(self, user_id: str, room_id: str) -> bool:
        """Whether the user is joined to the room now (committed membership): what a front end
        asks before handing a room's events to one of the user's connections (MQTT's fan-out,
        per matching session per event: a dict lookup, no allocation)."""
        rooms = self.memberships.get(user_id)
        if rooms is None:
            return False
        entry = rooms.get(room_id)
        return entry is not None and entry[0] == "join"

    def attach_federation(self, remote: RemoteRooms) -> None:
        """Plug in the federation front end, once. Not a constructor argument: the Homeserver
        builds Rooms before the gateway decides whether to federate, and federation's own parts
        (sender, inbound handler) are built from the Homeserver, i.e. after Rooms."""
        if self.remote is not NO_FEDERATION:
            raise RuntimeError("federation is already attached")
        self.remote = self._persister.remote = self._reads.remote = self._membership.remote = remote

    async def create_room(self, requester: Requester, body: dict[str, Any], *,
                          reserved_alias_ok: bool = False, rate_limit: bool = True) -> dict[str, Any]:
        """createRoom (room_creation.py), then invites to users on other servers, which their
        servers countersign first. As in Synapse, a failed remote invite fails the request (the
        room stays, with the invites that worked)."""
        created = await self._creation.create_room(requester, body, reserved_alias_ok=reserved_alias_ok,
                                                   rate_limit=rate_limit)
        extra = {"is_direct": True} if body.get("is_direct") else None
        for invitee in self._creation.remote_invitees(body):
            await self._membership.update_membership(requester, created["room_id"], invitee, "invite",
                                                     extra=extra, rate_limit=False)
        return created

    async def load(self) -> None:
        """Read counters and the small indexes kept in memory; room state loads on first use."""
        await self._persister.load_positions()
        await self._registry.load()
        await self._federated.load()
        await self._txns.load()
        await self._persister.load_redactions()
        await self.relations.load()

