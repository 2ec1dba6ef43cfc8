"""Observe (RFC 7641) on /sync and on a room's /messages, fed by the core's event stream.

Why here and not in the core: a notification is just the same API call made again from where
the last one ended (``since`` for sync, ``from``/``to`` for messages), dispatched through the
one route table. So the device sees exactly what an HTTP long-poll would return, whatever
protocol the events came in by, and access checks are re-done for every notification.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from matrix_core.client_api.request import ApiResponse
from matrix_core.events import Event

from .translate import ApiCall

log = logging.getLogger(__name__)

#: route-table paths that can be observed
SYNC = ("sync",)
MESSAGES_LEN = 3  # rooms/{roomId}/messages

#: Dispatch an API call as if a request had come in; returns the answer (errors as answers too).
Dispatch = Callable[[ApiCall], Awaitable[ApiResponse]]
#: Send one notification (a response) to the observer; is_last ends the observation.
Notify = Callable[[ApiResponse], None]


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

    def __init__(self, call: ApiCall, user_id: str, room_id: str | None, position: int,
                 dispatch: Dispatch, notify: Notify) -> None:
        self.call = call
        self.user_id = user_id
        self.room_id = room_id  # set for /messages: only that room's events matter
        self.position = position  # stream position the device has seen up to
        self._dispatch = dispatch
        self._notify = notify
        self._pending_upto: int | None = None  # highest stream position not yet looked at
        self._task: asyncio.Task[None] | None = None

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

    async def _run(self) -> None:
        while self._pending_upto is not None:
            upto, self._pending_upto = self._pending_upto, None
            try:
                await self._once(upto)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("CoAP notification failed")

    async def _once(self, upto: int) -> None:
        if self.is_sync():
            response = await self._dispatch(with_query(self.call, since=f"s{self.position}", timeout="0"))
            if response.status != 200:
                self._notify(response)
                return
            body = response.body
            new_pos = _token_position(body.get("next_batch"), self.position)
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
        response = await self._dispatch(call)
        if response.status == 200:
            self.position = upto
            if not response.body.get("chunk"):
                return
        self._notify(response)


def _token_position(token: Any, default: int) -> int:
    if isinstance(token, str) and token[:1] == "s":
        try:
            return int(token[1:])
        except ValueError:
            pass
    return default


class Observations:
    """Every live observation; the event stream pokes those the new events may concern."""

    def __init__(self, joined_room_ids: Callable[[str], list[str]]) -> None:
        self._joined_room_ids = joined_room_ids
        self._live: dict[Observation, None] = {}  # in registration order: notified in that order

    def __len__(self) -> int:
        return len(self._live)

    def add(self, observation: Observation) -> Callable[[], None]:
        self._live[observation] = None

        def remove() -> None:
            self._live.pop(observation, None)
            observation.cancel()

        return remove

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
