"""Building local events: fill in the PDU on top of a room's in-memory state, hash it, and check
it against the auth rules. Pure CPU, no await: a send builds and enqueues in one step (see
room_cache), so concurrent sends into one room need no lock.

The two memos here are what keeps a stream of sensor readings cheap: the auth event types per
(room version, type, sender), and the verdict for plain events per (room, state group, sender,
type), which only the room state can change."""
from __future__ import annotations

from typing import Any, Callable

from .. import auth_rules, errors
from ..event_hashing import hash_and_encode_new_event, signature_block_bytes
from ..events import Event
from ..room_versions import RoomVersion
from ..signing import SigningKey
from .accounts import Requester
from .room_cache import RoomCache, StateKey

MAX_EVENT_BYTES = 65536
MAX_PREV_EVENTS = 10
MEMO_SIZE = 4096  # entries of each memo; cleared whole when full (a new state group refills it)


class EventBuilder:
    def __init__(self, server_name: str, signing_key: SigningKey, clock: Callable[[], int]) -> None:
        self._signature_bytes = signature_block_bytes(server_name, signing_key)
        self.clock = clock
        # (room, state group, sender, type) of plain events that passed the auth rules
        self._auth_passed: set[tuple[str, int, str, str]] = set()
        # auth_types_for_event per (room version, type, sender) for every type but m.room.member.
        self._auth_types: dict[tuple[str, str, str], list[tuple[str, str]]] = {}

    def build_requested(self, room: RoomCache, requester: Requester, event_type: str, content: Any,
                        state_key: str | None) -> Event:
        """A client's (or device's) event on top of the room, checked like the send API checks it."""
        if not isinstance(content, dict):
            raise errors.bad_json("Event content must be a JSON object")
        redacts = content.get("redacts") if event_type == "m.room.redaction" else None
        return self.build_event(room, requester.user_id, event_type, content, state_key, redacts)

    def build_event(self, room: RoomCache, sender: str, event_type: str, content: dict[str, Any],
                    state_key: str | None = None, redacts: str | None = None) -> Event:
        """Build, sign and auth-check an event on top of the room's current state (pure CPU)."""
        version = room.version
        pdu: dict[str, Any] = {
            "type": event_type,
            "room_id": room.room_id,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.clock(),
            "depth": min(room.depth + 1, 2**53 - 1),
            "prev_events": room.extremities[-MAX_PREV_EVENTS:],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None and not version.msc2174_redacts_in_content:
            pdu["redacts"] = redacts
        if event_type == "m.room.member":  # the only type whose auth events depend on content
            auth_keys = auth_rules.auth_types_for_event(version, event_type, sender, state_key, content)
        else:
            memo_key = (version.identifier, event_type, sender)
            auth_keys = self._auth_types.get(memo_key)  # type: ignore[assignment]
            if auth_keys is None:
                if len(self._auth_types) > MEMO_SIZE:
                    self._auth_types.clear()
                auth_keys = self._auth_types[memo_key] = auth_rules.auth_types_for_event(
                    version, event_type, sender, state_key, content)
        pdu["auth_events"] = [room.state[key].event_id for key in auth_keys if key in room.state]
        memo = None
        if state_key is None and event_type != "m.room.redaction" and room.state_group is not None:
            # Whether a plain (non-state) event may be sent depends only on the room state, the
            # sender and the type: remember the verdict per state group (most sends are readings).
            memo = (room.room_id, room.state_group, sender, event_type)
        return self.finish_event(pdu, room.state, version, memo)

    def finish_event(self, pdu: dict[str, Any], auth_state: dict[StateKey, Event],
                     version: RoomVersion, auth_memo: tuple[str, int, str, str] | None = None) -> Event:
        """Hash a complete PDU into an event and check it against `auth_state`."""
        try:
            hashed, event_id, canonical = hash_and_encode_new_event(pdu, version)
            size = len(canonical) + self._signature_bytes  # as it will leave this server
        except ValueError as exc:  # floats, huge ints, bad types in content
            raise errors.bad_json(str(exc)) from None
        if size > MAX_EVENT_BYTES:
            raise errors.too_large(f"Event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
        event = Event(hashed, event_id, version, canonical)
        if auth_memo is not None and auth_memo in self._auth_passed:
            return event
        try:
            auth_rules.check_event_auth(event, auth_state)
        except errors.AuthError as exc:
            raise exc.as_matrix_error() from None
        if auth_memo is not None:
            if len(self._auth_passed) > MEMO_SIZE:
                self._auth_passed.clear()
            self._auth_passed.add(auth_memo)
        return event
