"""Observe (RFC 7641) on /sync and on a room's /messages, fed by the core's event stream.

Why here and not in the core: a notification is just the same API call made again from where
the last one ended (``since`` for sync, ``from``/``to`` for messages), dispatched through the
one route table. So the device sees exactly what an HTTP long-poll would return, whatever
protocol the events came in by, and access checks are re-done for every notification.

What an observation may cost (issue 20, R1: 10,000 observations from one token took 2 GB):

- Caps. A client (an access token, and separately a remote endpoint) holds at most
  ``max_per_client`` observations: a new one over that ends the client's oldest (the newest is
  the one a rebooted device is listening on), which gets a final 4.29 notification without
  Observe. The hub holds at most ``max_total``: over that a registration is answered as a plain
  GET, without Observe (RFC 7641 §4.1), and no one else's observation is touched.
- Shared work. Observers whose notification is the same API call (same device token for
  /sync; same user, room and range for /messages) share one dispatch per batch of events;
  the front end encodes each answer once and hands every observer the same bytes.
- One notification in flight. An observation computes its next notification only when its
  client has nothing unacknowledged (``ready``), from where the last one ended: a client that
  stops ACKing holds one queued notification per observation, not one per event (RFC 7641
  §4.5.2: the newest state replaces what is still waiting), and loses no events.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from matrix_core.client_api.request import ApiResponse
from matrix_core.errors import MatrixError
from matrix_core.events import Event

from .translate import ApiCall

log = logging.getLogger(__name__)

#: route-table paths that can be observed
SYNC = ("sync",)
MESSAGES_LEN = 3  # rooms/{roomId}/messages

#: Dispatch an API call as if a request had come in; returns the answer (errors as answers too).
Dispatch = Callable[[ApiCall], Awaitable[ApiResponse]]
#: Send one notification (a response) to the observer; a non-200 one ends the observation.
#: ``evicted=True``: the observation ends because its client opened too many (sent NON).
Notify = Callable[..., None]
#: Wait until the observer's client has no notification waiting for an ACK.
Ready = Callable[[], Awaitable[None]]

MAX_PER_CLIENT = 16  # observations per access token and per remote endpoint
MAX_TOTAL = 2000  # observations in the hub

#: the final notification of an observation ended by its own client's newer one (4.29)
EVICTED = ApiResponse(429, {"errcode": "M_LIMIT_EXCEEDED",
                            "error": "Too many observations from this client: its oldest was ended"})


async def _always_ready() -> None:
    return None


def observable(call: ApiCall) -> bool:
    """GET /sync and GET /rooms/{room}/messages may be observed."""
    if call.method != "GET":
        return False
    segs = call.segments
    return tuple(segs) == SYNC or (len(segs) == MESSAGES_LEN and segs[0] == "rooms" and segs[2] == "messages")


def with_query(call: ApiCall, **values: str) -> ApiCall:
    """The same call with some query keys replaced (the device's filter etc. are kept)."""
    query = {k: list(v) for k, v in call.query.items()}
    for key, value in values.items():
        query[key] = [value]
    return ApiCall(call.method, call.full_path, call.segments, query, call.access_token)


class Observation:
    """One device observing one resource; notifications are computed one at a time, coalesced."""

    __slots__ = ("call", "user_id", "room_id", "position", "endpoint", "_dispatch", "_notify", "_ready",
                 "_pending_upto", "_task", "_shared")

    def __init__(self, call: ApiCall, user_id: str, room_id: str | None, position: int,
                 dispatch: Dispatch, notify: Notify, endpoint: Any = None, ready: Ready = _always_ready) -> None:
        self.call = call
        self.user_id = user_id
        self.room_id = room_id  # set for /messages: only that room's events matter
        self.position = position  # stream position the device has seen up to
        self.endpoint = endpoint  # the client's address (hashable), for the per-client cap
        self._dispatch = dispatch
        self._notify = notify
        self._ready = ready
        self._pending_upto: int | None = None  # highest stream position not yet looked at
        self._task: asyncio.Task[None] | None = None
        self._shared: Observations | None = None  # set by Observations.add: shares dispatches

    @property
    def token(self) -> str | None:
        return self.call.access_token

    def is_sync(self) -> bool:
        return self.room_id is None

    def poke(self, upto: int) -> None:
        """New events up to stream position ``upto`` may concern this observer."""
        self._pending_upto = max(self._pending_upto or upto, upto)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def evict(self) -> None:
        """End this observation: its client opened more than it may hold."""
        self.cancel()
        self._notify(EVICTED, evicted=True)

    async def _run(self) -> None:
        while self._pending_upto is not None:
            await self._ready()  # nothing of ours still waits for an ACK: compute from here
            if self._pending_upto is None:
                break
            upto, self._pending_upto = self._pending_upto, None
            try:
                await self._once(upto)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("CoAP notification failed")
        self._task = None  # a finished task (and its coroutine) is not kept per observer

    async def _call(self, call: ApiCall) -> ApiResponse:
        """The call's answer, shared with every observer making the same call in this batch.

        /sync answers depend on the device (to-device messages, device lists): shared by token.
        /messages answers depend on the user only: shared by user, each observer's own token
        still checked (``authenticate``; cached in the core, so cheap).
        """
        shared = self._shared
        if shared is None:
            return await self._dispatch(call)
        if self.is_sync():
            key: tuple[Any, ...] = ("sync", call.access_token, _frozen(call.query))
        else:
            if shared.authenticate is not None:
                try:
                    await shared.authenticate(call.access_token)
                except MatrixError as err:
                    return ApiResponse(err.status, err.to_json())
            query = {k: v for k, v in call.query.items() if k != "access_token"}
            key = ("messages", self.user_id, call.full_path, _frozen(query))
        response = await shared.shared(key, call, self._dispatch)
        if response.status == 401 and not self.is_sync():  # made with another device's token, since revoked
            response = await self._dispatch(call)
        return response

    async def _once(self, upto: int) -> None:
        if self.is_sync():
            response = await self._call(with_query(self.call, since=f"s{self.position}", timeout="0"))
            if response.status != 200:
                self._notify(response)
                return
            body = response.body
            new_pos = token_position(body.get("next_batch"), self.position)
            rooms = body.get("rooms") or {}
            if new_pos > self.position:
                self.position = new_pos
            if any(rooms.values()):
                self._notify(response)
            return
        if upto <= self.position:
            return
        call = with_query(self.call, dir="f", **{"from": f"s{self.position}", "to": f"s{upto}"},
                          limit="1000")
        response = await self._call(call)
        if response.status == 200:
            self.position = upto
            if not response.body.get("chunk"):
                return
        self._notify(response)


def _frozen(query: dict[str, list[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((k, tuple(v)) for k, v in query.items()))


def token_position(token: Any, default: int) -> int:
    """The event position of a sync token (`s<events>_<side streams...>`, sync_token.py)."""
    if isinstance(token, str) and token[:1] == "s":
        try:
            return int(token[1:].split("_", 1)[0])
        except ValueError:
            pass
    return default


class Observations:
    """Every live observation; the event stream pokes those the new events may concern."""

    def __init__(self, joined_room_ids: Callable[[str], list[str]], max_per_client: int = MAX_PER_CLIENT,
                 max_total: int = MAX_TOTAL,
                 authenticate: Callable[[str | None], Awaitable[Any]] | None = None) -> None:
        self._joined_room_ids = joined_room_ids
        self.max_per_client = max_per_client
        self.max_total = max_total
        self.authenticate = authenticate
        self._live: dict[Observation, None] = {}  # in registration order: notified in that order
        #: this batch's shared dispatches (a batch: the events of one on_events call)
        self._memo: dict[tuple[Any, ...], asyncio.Future[ApiResponse]] = {}
        self.generation = 0  # counts batches: what the front end's encoded answers are valid for

    def __len__(self) -> int:
        return len(self._live)

    def room_for(self, token: str | None, endpoint: Any) -> tuple[bool, list[Observation]]:
        """Whether a new observation by this client may be held, and whose place it takes.

        Pure decision (nothing changes): the client's oldest observations go, by token and by
        endpoint, until it is under ``max_per_client``; then the hub must be under ``max_total``
        (no other client's observation is ever ended for it).
        """
        evict: list[Observation] = []
        same_token = [o for o in self._live if token is not None and o.token == token]
        evict += same_token[:max(0, len(same_token) - self.max_per_client + 1)]
        same_endpoint = [o for o in self._live if endpoint is not None and o.endpoint == endpoint
                         and o not in evict]
        evict += same_endpoint[:max(0, len(same_endpoint) - self.max_per_client + 1)]
        if len(self._live) - len(evict) >= self.max_total:
            return False, []
        return True, evict

    def add(self, observation: Observation) -> Callable[[], None] | None:
        """Hold the observation (ending what the caps say); None: refused, the hub is full."""
        admitted, evict = self.room_for(observation.token, observation.endpoint)
        if not admitted:
            return None
        for old in evict:
            self._live.pop(old, None)
            old.evict()
        self._live[observation] = None
        observation._shared = self

        def remove() -> None:
            self._live.pop(observation, None)
            observation.cancel()

        return remove

    def shared(self, key: tuple[Any, ...], call: ApiCall, dispatch: Dispatch) -> Awaitable[ApiResponse]:
        """One dispatch of `call` per batch for every observer asking with the same key."""
        future = self._memo.get(key)
        if future is None:
            future = self._memo[key] = asyncio.ensure_future(dispatch(call))
        return asyncio.shield(future)  # one observer cancelled (evicted) stops no other

    def end_where(self, pick: Callable[[Observation], bool], final: ApiResponse) -> int:
        """End at once the observations *pick* chooses (those of a revoked access token): each
        gets *final* as its last notification (a non-2.xx ends it, RFC 7641 §3.2), none after.
        Returns how many ended."""
        ended = [obs for obs in self._live if pick(obs)]
        for obs in ended:
            self._live.pop(obs, None)
            obs.cancel()
            obs._notify(final)
        return len(ended)

    def on_events(self, entries: list[tuple[int, Event]]) -> None:
        """EventStream subscriber: called after COMMIT, in commit order."""
        self._memo = {}  # new events: answers computed before them are not shared after
        self.generation += 1
        if not self._live:
            return
        upto = max(pos for pos, _ in entries)
        rooms = {ev.room_id for _, ev in entries}
        targets = {ev.state_key for _, ev in entries if ev.type == "m.room.member" and ev.state_key}
        joined_cache: dict[str, set[str]] = {}
        for obs in list(self._live):
            if obs.room_id is not None:
                if obs.room_id in rooms:
                    obs.poke(upto)
                continue
            joined = joined_cache.get(obs.user_id)
            if joined is None:
                joined = joined_cache[obs.user_id] = set(self._joined_room_ids(obs.user_id))
            if obs.user_id in targets or not joined.isdisjoint(rooms):
                obs.poke(upto)

    def close(self) -> None:
        for obs in list(self._live):
            obs.cancel()
        self._live.clear()
