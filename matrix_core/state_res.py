"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12), as pure functions.

Read side by side with the spec's "State resolution" section of room version 2 (v10 and v11
use it unchanged) and of room version 12 (https://spec.matrix.org/latest/rooms/v12/#state-resolution).
Like ``auth_rules``, everything here is a verdict over data: no I/O, no database, no clock. The
caller hands in every event the algorithm may look at; when one is absent the functions raise
``MissingEventsError`` naming what to fetch, and the caller retries once it has them.

A *state map* is ``{(type, state_key): event_id}``. ``events`` maps event ids to ``Event``.

State resolution v2.1 (MSC4297, room version 12, ``RoomVersion.state_res_v2_1``) changes two
things, both about which events are replayed:

* the first round of iterative auth checks starts from an *empty* state map instead of the
  unconflicted state map, so each power event is checked against its own ``auth_events`` until
  the resolved state supplies a key (fixes "problem A" of the MSC);
* the *full conflicted set* also holds the *conflicted state subgraph*: every event on an
  ``auth_events`` path between two conflicted events (fixes "problem B").

Room version 12 also gives the creators infinite power (MSC4289); the reverse topological
power ordering asks ``auth_rules.get_user_power_level``, which knows that.

Where the spec's prose leaves room, this module follows what Synapse and ruma do, because
servers in a room must agree more than they must agree with a reading of the prose:

* A v12 event's create event counts as one of its auth events even though v12 events do not
  list it (MSC4291): it is derived from the ``room_id`` (``!x`` names ``$x``).
* The *full auth chain* of a state set, whose union minus intersection is the auth difference,
  includes the state set's own events as well as their auth chains.
* ``m.room.create`` counts as a power event (as do ``m.room.power_levels`` and
  ``m.room.join_rules`` only with an empty ``state_key``).
* Step 1's set of power events "enlarged by their auth chains within the full conflicted set",
  and the DAG it is sorted by, are found by walking ``auth_events`` edges from each power event
  while they stay inside the full conflicted set.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Container, Iterable, Mapping, Sequence

from .auth_rules import (
    CREATE,
    CREATE_KEY,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    POWER_LEVELS_KEY,
    auth_types_for_event,
    check_event_auth,
    get_user_power_level,
)
from .errors import AuthError
from .events import Event
from .room_versions import RoomVersion

__all__ = [
    "MissingEventsError",
    "StateKey",
    "StateMap",
    "auth_chain",
    "auth_difference",
    "auth_event_ids",
    "conflicted_subgraph",
    "is_power_event",
    "iterative_auth_checks",
    "mainline_sort",
    "resolve",
    "reverse_topological_power_sort",
    "separate",
]

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]


class MissingEventsError(LookupError):
    """State resolution needs events it was not given: fetch ``event_ids`` and retry."""

    def __init__(self, event_ids: Iterable[str]) -> None:
        self.event_ids: frozenset[str] = frozenset(event_ids)
        shown = ", ".join(sorted(self.event_ids))
        super().__init__(f"state resolution needs {len(self.event_ids)} event(s) it was not given: {shown}")


# --- small accessors --------------------------------------------------------------------------


def _get(event_id: str, events: Mapping[str, Event]) -> Event:
    event = events.get(event_id)
    if event is None:
        raise MissingEventsError([event_id])
    return event


def auth_event_ids(event: Event) -> list[str]:
    """The event's auth events as the auth DAG has them: its ``auth_events``, plus, in room
    versions where the room id names the create event (v12), that create event."""
    ids = list(event.auth_event_ids)
    if event.room_version.room_id_is_create_event_id and event.type != CREATE:
        room_id = event.pdu.get("room_id")
        if isinstance(room_id, str) and room_id.startswith("!"):
            create_id = "$" + room_id[1:]
            if create_id not in ids:
                ids.append(create_id)
    return ids


def is_power_event(event: Event) -> bool:
    """A power event: one that may take an ability away. ``m.room.power_levels``,
    ``m.room.join_rules`` and ``m.room.create`` (empty state key), and a membership of ``leave``
    or ``ban`` sent by someone other than its target (a kick or a ban)."""
    if not event.is_state:
        return False
    if event.type in (POWER_LEVELS, JOIN_RULES, CREATE):
        return event.state_key == ""
    if event.type == MEMBER and event.membership in ("leave", "ban"):
        return event.sender != event.state_key
    return False


def _walk_auth(start: Iterable[str], events: Mapping[str, Event], within: Container[str] | None = None) -> set[str]:
    """Every event reachable from ``start`` (inclusive) along auth edges, optionally only through
    events in ``within``. Raises ``MissingEventsError`` listing every unreachable id at once."""
    seen: set[str] = set()
    missing: set[str] = set()
    stack = list(start)
    while stack:
        event_id = stack.pop()
        if event_id in seen:
            continue
        seen.add(event_id)
        event = events.get(event_id)
        if event is None:
            missing.add(event_id)
            continue
        for auth_id in auth_event_ids(event):
            if auth_id not in seen and (within is None or auth_id in within):
                stack.append(auth_id)
    if missing:
        raise MissingEventsError(missing)
    return seen


# --- definitions ------------------------------------------------------------------------------


def separate(state_sets: Sequence[StateMap]) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split the state sets into the *unconflicted state map* (keys present in every set with
    the same event) and the *conflicted state set*, as ``{key: {event ids}}``. A key missing from
    some set is conflicted (its ids are those of the sets that have it)."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys: dict[StateKey, None] = {}
    for state_set in state_sets:
        keys.update(dict.fromkeys(state_set))
    for key in keys:
        values = {state_set.get(key) for state_set in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = values.pop()  # type: ignore[assignment]
        else:
            values.discard(None)
            conflicted[key] = values  # type: ignore[assignment]
    return unconflicted, conflicted


def auth_chain(event_id: str, events: Mapping[str, Event]) -> set[str]:
    """The *auth chain* of an event: its auth events, theirs, and so on (not the event itself)."""
    return _walk_auth(auth_event_ids(_get(event_id, events)), events)


def _full_auth_chain(state_set: StateMap, events: Mapping[str, Event]) -> set[str]:
    # The state set's own events are included, as Synapse's chain cover index includes them.
    return _walk_auth(state_set.values(), events)


def auth_difference(state_sets: Sequence[StateMap], events: Mapping[str, Event]) -> set[str]:
    """The *auth difference*: events in some state set's full auth chain but not in all."""
    if not state_sets:
        return set()
    chains = [_full_auth_chain(state_set, events) for state_set in state_sets]
    return set[str]().union(*chains) - set[str].intersection(*chains)


def conflicted_subgraph(conflicted_ids: Collection[str], events: Mapping[str, Event]) -> set[str]:
    """The *conflicted state subgraph* (v2.1): every event on an ``auth_events`` path from one
    conflicted event to another, endpoints included. That is the events reachable from a
    conflicted event that can themselves reach a conflicted event."""
    conflicted = set(conflicted_ids)
    backwards = _walk_auth(conflicted, events)
    children: dict[str, list[str]] = {}
    for event_id in backwards:
        for auth_id in auth_event_ids(events[event_id]):
            children.setdefault(auth_id, []).append(event_id)
    forwards: set[str] = set()
    stack = list(conflicted)
    while stack:
        event_id = stack.pop()
        if event_id in forwards:
            continue
        forwards.add(event_id)
        stack.extend(c for c in children.get(event_id, ()) if c not in forwards)
    return backwards & forwards


# --- orderings --------------------------------------------------------------------------------


def _sender_power(event: Event, events: Mapping[str, Event]) -> int | float:
    """The sender's power level as the event's own auth events have it (``math.inf`` for v12
    creators, 100 for a v10/v11 creator before any power levels event)."""
    auth_state: dict[StateKey, Event] = {}
    for auth_id in auth_event_ids(event):
        auth_event = events.get(auth_id)
        if auth_event is not None and auth_event.is_state:
            pair = auth_event.state_pair()
            if pair in (CREATE_KEY, POWER_LEVELS_KEY):
                auth_state[pair] = auth_event
    return get_user_power_level(event.sender, auth_state)


def reverse_topological_power_sort(
    ids: Iterable[str],
    events: Mapping[str, Event],
    full_conflicted_set: Collection[str] | None = None,
) -> list[str]:
    """The *reverse topological power ordering* of ``ids`` (earliest first), after adding the
    events of their auth chains reachable inside ``full_conflicted_set`` (default: none).

    Kahn's algorithm over the auth DAG, taking at each step the smallest ready event by: higher
    sender power level (at the event's auth events) first, then lower ``origin_server_ts``, then
    lower ``event_id``."""
    ids = list(ids)
    within: Container[str] = set(ids) if full_conflicted_set is None else full_conflicted_set
    nodes = _walk_auth(ids, events, within=within)
    # Edges: event -> its auth events in the graph. Count how many auth parents each has left.
    pending: dict[str, int] = {}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for node in nodes:
        parents = {a for a in auth_event_ids(events[node]) if a in nodes}
        pending[node] = len(parents)
        for parent in parents:
            children[parent].append(node)

    def order_key(event_id: str) -> tuple[int | float, int, str]:
        event = events[event_id]
        return (-_sender_power(event, events), event.origin_server_ts, event_id)

    ready = [(order_key(n), n) for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        result.append(node)
        for child in children[node]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, (order_key(child), child))
    if len(result) != len(nodes):
        raise ValueError("the auth events form a cycle")
    return result


def _power_levels_parent(event: Event, events: Mapping[str, Event]) -> str | None:
    """The ``m.room.power_levels`` event among the event's auth events, if any."""
    for auth_id in auth_event_ids(event):
        auth_event = _get(auth_id, events)
        if auth_event.type == POWER_LEVELS and auth_event.state_key == "":
            return auth_id
    return None


def mainline_sort(
    ids: Iterable[str],
    resolved_power_event_id: str | None,
    events: Mapping[str, Event],
) -> list[str]:
    """The *mainline ordering* of ``ids`` based on the power levels event
    ``resolved_power_event_id`` (None: no power levels, every position is infinite).

    The mainline is that event, the power levels event in its auth events, and so on; an event's
    *mainline position* is the index in it of the first power levels event met walking the
    event's power levels auth events (infinite if none is). Events with a greater position come
    first, then lower ``origin_server_ts``, then lower ``event_id``."""
    mainline: dict[str, int] = {}
    current = resolved_power_event_id
    while current is not None and current not in mainline:
        mainline[current] = len(mainline)
        current = _power_levels_parent(_get(current, events), events)

    positions: dict[str, int | float] = {}  # memo: power levels event id -> its mainline position

    def position(event_id: str) -> int | float:
        walked: list[str] = []
        current = _power_levels_parent(_get(event_id, events), events)
        found: int | float = math.inf
        while current is not None:
            if current in positions:
                found = positions[current]
                break
            if current in mainline:
                found = mainline[current]
                break
            walked.append(current)
            current = _power_levels_parent(_get(current, events), events)
        for pl_id in walked:
            positions[pl_id] = found
        return found

    def key(event_id: str) -> tuple[int | float, int, str]:
        return (-position(event_id), _get(event_id, events).origin_server_ts, event_id)

    return sorted(ids, key=key)


# --- iterative auth checks --------------------------------------------------------------------


def iterative_auth_checks(
    sorted_ids: Iterable[str],
    base_state: StateMap,
    events: Mapping[str, Event],
    *,
    rejected: Container[str] = frozenset(),
) -> dict[StateKey, str]:
    """Apply each state event in turn to a copy of ``base_state`` if the authorization rules
    allow it, checking it against its own (non-rejected) ``auth_events`` overlaid by the
    partially resolved state for every key the rules consult. Events not allowed are ignored."""
    state = dict(base_state)
    for event_id in sorted_ids:
        event = _get(event_id, events)
        if not event.is_state:
            continue
        auth_state: dict[StateKey, Event] = {}
        for auth_id in auth_event_ids(event):
            auth_event = _get(auth_id, events)
            if auth_id not in rejected and auth_event.is_state:
                auth_state[auth_event.state_pair()] = auth_event
        keys = [CREATE_KEY, *auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content)]
        for key in keys:
            if key in state:
                auth_state[key] = _get(state[key], events)
        try:
            check_event_auth(event, auth_state)
        except AuthError:
            continue
        state[event.state_pair()] = event_id
    return state


# --- the algorithm ----------------------------------------------------------------------------


def _check_inputs(room_version: RoomVersion, state_sets: Sequence[StateMap], events: Mapping[str, Event]) -> None:
    """Every event the algorithm may touch is present, in one room and of this room version,
    and each state set names each event under its own key."""
    closure = _walk_auth({eid for s in state_sets for eid in s.values()}, events)
    rooms = {events[eid].room_id for eid in closure}
    if len(rooms) > 1:
        raise ValueError(f"state sets span several rooms: {sorted(map(str, rooms))}")
    for eid in closure:
        if events[eid].room_version.identifier != room_version.identifier:
            raise ValueError(f"event {eid} is of room version {events[eid].room_version.identifier}, "
                             f"not {room_version.identifier}")
    for state_set in state_sets:
        for key, eid in state_set.items():
            event = events[eid]
            if not event.is_state or event.state_pair() != key:
                raise ValueError(f"state set names {eid} under {key}, which is not its key")


def resolve(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Event],
    *,
    rejected: Container[str] = frozenset(),
) -> dict[StateKey, str]:
    """Resolve the state maps into one (state resolution v2, or v2.1 where the room version
    says so).

    ``events`` must hold every event named in the state sets and their full auth chains (for
    v12, the create event too); otherwise ``MissingEventsError`` lists what to fetch. When nothing
    conflicts the answer is the common state and ``events`` is not consulted. ``rejected`` names
    events known to have been rejected: they are never used as auth events (spec, "Rejected
    events")."""
    state_sets = list(state_sets)
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return unconflicted
    _check_inputs(room_version, state_sets, events)

    conflicted_ids = set().union(*conflicted.values())
    full_conflicted = conflicted_ids | auth_difference(state_sets, events)
    if room_version.state_res_v2_1:
        full_conflicted |= conflicted_subgraph(conflicted_ids, events)

    # 1. The power events and their auth ancestors in the full conflicted set, earliest first.
    power_ids = [eid for eid in full_conflicted if is_power_event(events[eid])]
    sorted_power = reverse_topological_power_sort(power_ids, events, full_conflicted)
    # 2. Replay them over the unconflicted state (v2) or over nothing (v2.1).
    base: StateMap = {} if room_version.state_res_v2_1 else unconflicted
    partial = iterative_auth_checks(sorted_power, base, events, rejected=rejected)
    # 3-4. The rest, in mainline order of the power levels just resolved, replayed on top.
    done = set(sorted_power)
    leftover = mainline_sort([eid for eid in full_conflicted if eid not in done],
                             partial.get(POWER_LEVELS_KEY), events)
    resolved = iterative_auth_checks(leftover, partial, events, rejected=rejected)
    # 5. The unconflicted state always stands.
    resolved.update(unconflicted)
    return resolved
