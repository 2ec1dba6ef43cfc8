"""Events arriving from other servers: the spec's checks, in order, then placement in the DAG.

For each PDU: format (pdu.py) -> signatures -> content hash (a mismatch means we keep the redacted
form) -> auth against its own auth events -> auth against the state before it (else rejected) ->
auth against the current state (else soft-failed). Missing prev events are fetched with
/get_missing_events; when a gap remains, the state before the event is taken from /state_ids.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .. import auth_rules, errors
from ..event_hashing import check_content_hash, redact_pdu, verify_event_signature
from ..events import Event
from .client import federation_path
from .edus import handle_edus
from ..room_versions import RoomVersion
from ..service.room_cache import RoomCache, StateKey
from .pdu import BadPDU, parse_pdu

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

MAX_PDUS_PER_TRANSACTION = 50
MAX_MISSING_FETCH = 20
MAX_NESTING = 2  # how deep fetched missing events may fetch their own gaps


class PDUError(Exception):
    """This PDU is not accepted (dropped or rejected); the reason goes back in /send's answer."""


class InboundEvents:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.rooms = hs.rooms
        self._room_locks: dict[str, asyncio.Lock] = {}

    def _lock(self, room_id: str) -> asyncio.Lock:
        lock = self._room_locks.get(room_id)
        if lock is None:
            lock = self._room_locks[room_id] = asyncio.Lock()
        return lock

    # -- transactions ---------------------------------------------------------------------------

    async def on_transaction(self, origin: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("pdus", []), list):
            raise errors.bad_json("a transaction needs a 'pdus' list")
        pdus = body.get("pdus", [])
        if len(pdus) > MAX_PDUS_PER_TRANSACTION:
            raise errors.MatrixError(400, "M_TOO_LARGE", f"more than {MAX_PDUS_PER_TRANSACTION} PDUs")
        started = asyncio.get_running_loop().time()  # for the debug line below (bench/federation.py reads it)
        results: dict[str, Any] = {}
        waits: list[tuple[str, asyncio.Future[Any]]] = []
        events: list[Event] = []
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            version = self.rooms.room_version(room_id) if isinstance(room_id, str) else None
            if version is None:
                log.info("dropping a PDU from %s for a room we are not in: %r", origin, room_id)
                continue
            try:
                events.append(parse_pdu(pdu, version))
            except BadPDU as exc:
                log.warning("dropping a malformed PDU from %s: %s", origin, exc)
        # One store look-up for the whole transaction (a retried one repeats PDUs we hold).
        held = await self.rooms.get_events_any([ev.event_id for ev in events])
        for event in events:
            if event.event_id in held and not held[event.event_id][1]:
                results[event.event_id] = {}
                continue
            try:
                fut = await self.receive(origin, event, known_new=True)
                if fut is not None:
                    waits.append((event.event_id, fut))
                results[event.event_id] = {}
            except PDUError as exc:
                log.warning("PDU %s from %s not accepted: %s", event.event_id, origin, exc)
                results[event.event_id] = {"error": str(exc)}
        for event_id, fut in waits:  # one group commit for the batch, acknowledged only after it
            try:
                await fut
            except Exception as exc:
                results[event_id] = {"error": f"not stored: {exc}"}
        await handle_edus(self.hs, origin, body.get("edus"))  # after the PDUs: a receipt may name one
        log.debug("transaction from %s: %d PDUs handled in %.1f ms", origin, len(pdus), (asyncio.get_running_loop().time() - started) * 1000)
        return {"pdus": results}

    # -- one event --------------------------------------------------------------------------------

    async def receive(self, origin: str, event: Event, backfilled: bool = False,
                      position: int | None = None, known_new: bool = False) -> "asyncio.Future[Any] | None":
        """Check and place one event; returns the pending write (None if already known).
        `known_new`: the caller already looked it up in the store (memory is still checked)."""
        async with self._lock(event.room_id):
            return await self._receive_locked(origin, event, backfilled, position, known_new)

    async def _receive_locked(self, origin: str, event: Event, backfilled: bool = False,
                              position: int | None = None, known_new: bool = False, nesting: int = 0
                              ) -> "asyncio.Future[Any] | None":
        """`receive` with the room's lock held (also for missing events fetched on the way; those
        fetch their own gaps at most MAX_NESTING deep, then take the state from /state_ids)."""
        if known_new:
            known = {}
            if self.rooms.placed_in_memory(event.event_id):
                return None
        else:
            known = await self.rooms.get_events_any([event.event_id])
        if event.event_id in known and not known[event.event_id][1]:
            return None
        event = await self.check_signatures_and_hash(event)
        room = await self.rooms.get_room(event.room_id)
        if not backfilled and nesting <= MAX_NESTING:
            await self._fetch_missing_prevs(origin, room, event, nesting)
        state_before, before_group = await self._state_before(origin, room, event)
        auth_events = await self._auth_events(origin, event, room)
        try:
            auth_rules.check_auth_events(event, auth_events.values())
            auth_rules.check_event_auth(event, self._auth_state(room.version, auth_events, state_before))
            auth_rules.check_event_auth(event, state_before)
        except errors.AuthError as exc:
            await self.rooms.enqueue_rejected(event, exc.reason)
            raise PDUError(f"rejected: {exc.reason}") from None
        soft_failed = False
        if not backfilled:
            try:
                auth_rules.check_event_auth(event, room.state)
            except errors.AuthError as exc:
                log.info("soft-failing %s: %s", event.event_id, exc.reason)
                soft_failed = True
        return await self.rooms.place_federated_event(room, event, state_before, before_group,
                                                      soft_failed=soft_failed, backfilled=backfilled,
                                                      position=position)

    @staticmethod
    def _auth_state(version: RoomVersion, auth_events: dict[str, Event],
                    state_before: dict[StateKey, Event]) -> dict[StateKey, Event]:
        state = {(ev.type, ev.state_key or ""): ev for ev in auth_events.values() if ev.is_state}
        if version.room_id_is_create_event_id and ("m.room.create", "") in state_before:
            state[("m.room.create", "")] = state_before[("m.room.create", "")]
        return state

    async def check_signatures_and_hash(self, event: Event) -> Event:
        """The sender's server must have signed; a wrong content hash leaves only the redacted form."""
        server = event.origin_server()
        signatures = event.pdu.get("signatures", {}).get(server)
        if not isinstance(signatures, dict) or not signatures:
            raise PDUError(f"not signed by {server}")
        verified = False
        for key_id, _ in signatures.items():
            if not key_id.startswith("ed25519:"):
                continue
            verify_key = await self.hs.keyring.get_verify_key(server, key_id, event.origin_server_ts)
            if verify_key is None:
                continue
            try:
                verify_event_signature(event.pdu, event.room_version, server, key_id, verify_key)
                verified = True
                break
            except ValueError:
                raise PDUError(f"bad signature from {server} ({key_id})") from None
        if not verified:
            raise PDUError(f"no usable key of {server} to check its signature")
        if not check_content_hash(event.pdu):
            log.warning("content hash mismatch on %s: keeping the redacted form", event.event_id)
            return Event(redact_pdu(event.pdu, event.room_version), event.event_id, event.room_version)
        return event

    # -- what the event needs ---------------------------------------------------------------------

    async def fetch_event(self, origin: str, event_id: str, version: RoomVersion) -> Event | None:
        try:
            body = await self.hs.federation_client.request(origin, "GET", federation_path("/_matrix/federation/v1/event/{e}", e=event_id))
            pdus = body.get("pdus") if isinstance(body, dict) else None
            if not pdus:
                return None
            event = parse_pdu(pdus[0], version)
        except (BadPDU, Exception) as exc:  # a dead or lying remote never breaks the caller
            log.info("could not fetch %s from %s: %s", event_id, origin, exc)
            return None
        if event.event_id != event_id:
            log.warning("%s answered %s for %s", origin, event.event_id, event_id)
            return None
        try:
            return await self.check_signatures_and_hash(event)
        except PDUError as exc:
            log.warning("fetched event %s fails checks: %s", event_id, exc)
            return None

    async def _auth_events(self, origin: str, event: Event, room: RoomCache | None = None) -> dict[str, Event]:
        ids = list(event.auth_event_ids)
        # Auth events are nearly always in the room's current state: look there before the store.
        current = {ev.event_id: ev for ev in room.state.values()} if room is not None else {}
        known: dict[str, tuple[Event, bool, str | None]] = {
            eid: (current[eid], False, None) for eid in ids if eid in current}
        rest = [eid for eid in ids if eid not in known]
        if rest:
            known.update(await self.rooms.get_events_any(rest))
        out = {eid: ev for eid, (ev, _, rejected) in known.items() if not rejected}
        missing = [eid for eid in ids if eid not in known]
        fetched: list[Event] = []
        for eid in missing:
            ev = await self.fetch_event(origin, eid, event.room_version)
            if ev is None:
                raise PDUError(f"auth event {eid} could not be fetched")
            fetched.append(ev)
            out[eid] = ev
        if fetched:
            await self.rooms.enqueue_outliers(fetched)
        if any(eid in known and known[eid][2] for eid in ids):
            raise PDUError("an auth event was rejected")
        return out

    async def _fetch_missing_prevs(self, origin: str, room: RoomCache, event: Event, nesting: int = 0) -> None:
        known = await self.rooms.get_events_any(event.prev_event_ids)
        missing = [p for p in event.prev_event_ids if p not in known or known[p][1]]
        if not missing:
            return
        try:
            body = await self.hs.federation_client.request(
                origin, "POST", federation_path("/_matrix/federation/v1/get_missing_events/{r}", r=room.room_id),
                body={"earliest_events": room.extremities, "latest_events": [event.event_id],
                      "limit": MAX_MISSING_FETCH, "min_depth": 0},
            )
        except Exception as exc:
            log.info("get_missing_events to %s failed: %s", origin, exc)
            return
        found: list[Event] = []
        for pdu in body.get("events", []) if isinstance(body, dict) else []:
            try:
                found.append(parse_pdu(pdu, room.version))
            except BadPDU:
                continue
        found.sort(key=lambda e: (e.depth, e.origin_server_ts))
        for missing_event in found:
            if missing_event.event_id == event.event_id:
                continue
            try:
                fut = await self._receive_locked(origin, missing_event, nesting=nesting + 1)
                if fut is not None:
                    await fut
            except PDUError as exc:
                log.info("missing event %s not accepted: %s", missing_event.event_id, exc)

    async def _state_before(self, origin: str, room: RoomCache, event: Event
                            ) -> tuple[dict[StateKey, Event], int | None]:
        states: list[tuple[dict[StateKey, Event], int | None]] = []
        for prev in event.prev_event_ids:
            found = await self.rooms.state_after(room, prev)
            if found is None:
                return await self._state_from_remote(origin, room, event), None
            states.append(found)
        if not states:
            raise PDUError("an event other than the create event has no prev_events")
        if len(states) == 1:
            return states[0]
        resolved = await self.rooms.resolve_states(room.version, [s for s, _ in states])
        return resolved, None

    async def _state_from_remote(self, origin: str, room: RoomCache, event: Event) -> dict[StateKey, Event]:
        """The gap case: ask the origin for the state before the event, fetch what we lack."""
        try:
            body = await self.hs.federation_client.request(
                origin, "GET", federation_path("/_matrix/federation/v1/state_ids/{r}", r=room.room_id),
                query={"event_id": event.event_id},
            )
        except Exception as exc:
            raise PDUError(f"state before the event is unknown and /state_ids failed: {exc}") from None
        state_ids = body.get("pdu_ids", []) if isinstance(body, dict) else []
        auth_ids = body.get("auth_chain_ids", []) if isinstance(body, dict) else []
        wanted = [i for i in list(state_ids) + list(auth_ids) if isinstance(i, str)]
        known = await self.rooms.get_events_any(wanted)
        fetched: list[Event] = []
        for eid in wanted:
            if eid in known:
                continue
            ev = await self.fetch_event(origin, eid, room.version)
            if ev is not None:
                fetched.append(ev)
                known[eid] = (ev, True, None)
        if fetched:
            await self.rooms.enqueue_outliers(fetched)
        state: dict[StateKey, Event] = {}
        for eid in state_ids:
            entry = known.get(eid)
            if entry is not None and entry[0].is_state and not entry[2]:
                ev = entry[0]
                state[(ev.type, ev.state_key or "")] = ev
        return state
