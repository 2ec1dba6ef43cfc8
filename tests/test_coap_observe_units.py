"""frontends.coap.observe without sockets: the caps decide whose observation goes, and observers
making the same call share one dispatch per batch of events (issue 20, R1)."""
from __future__ import annotations

import asyncio
from typing import Any

from frontends.coap.observe import EVICTED, Observation, Observations
from frontends.coap.translate import ApiCall, translate
from matrix_core.client_api.request import ApiResponse


class Recorder:
    """A fake route table (counting calls) and the notifications each observer got."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []
        self.notes: dict[int, list[tuple[ApiResponse, bool]]] = {}

    async def dispatch(self, call: ApiCall) -> ApiResponse:
        self.calls.append(call)
        await asyncio.sleep(0)  # answers take a loop pass: concurrent observers overlap
        return ApiResponse(200, {"chunk": [{"event_id": f"$up-to-{call.query['to'][0]}"}]})

    def observation(self, n: int, token: str, endpoint: Any, user: str = "@alice:hub") -> Observation:
        call = translate(1, ["_m", "c", "v3", "r", "!room:hub", "m"], [f"a={token}"])

        def notify(response: ApiResponse, evicted: bool = False) -> None:
            self.notes.setdefault(n, []).append((response, evicted))

        return Observation(call, user, "!room:hub", 10, self.dispatch, notify, endpoint=endpoint)


async def _authenticate(token: str | None) -> None:
    return None


class _Ev:
    """The fields of an Event that Observations.on_events reads."""

    def __init__(self, room: str) -> None:
        self.room_id, self.type, self.state_key = room, "m.room.message", None


async def test_per_client_cap_ends_the_oldest_of_that_client_only() -> None:
    rec = Recorder()
    obs = Observations(lambda user: [], max_per_client=3, max_total=100, authenticate=_authenticate)
    held = [rec.observation(i, "tokA", ("10.0.0.1", 5000 + i)) for i in range(5)]
    other = rec.observation(99, "tokB", ("10.0.0.2", 6000))
    assert obs.add(other) is not None
    for o in held:
        assert obs.add(o) is not None
    assert len(obs) == 4  # 3 of tokA + tokB's
    assert [n for n, notes in rec.notes.items() if notes == [(EVICTED, True)]] == [0, 1]
    # by endpoint too: a second token from one endpoint shares that endpoint's allowance
    same_place = [rec.observation(200 + i, f"tok{i}", ("10.0.0.2", 6000)) for i in range(3)]
    for o in same_place:
        obs.add(o)
    assert 99 in rec.notes and rec.notes[99] == [(EVICTED, True)]
    assert len(obs) == 6


async def test_hub_cap_refuses_without_ending_anyone() -> None:
    rec = Recorder()
    obs = Observations(lambda user: [], max_per_client=16, max_total=2, authenticate=_authenticate)
    assert obs.add(rec.observation(0, "a", "ep-a")) is not None
    assert obs.add(rec.observation(1, "b", "ep-b")) is not None
    assert obs.add(rec.observation(2, "c", "ep-c")) is None
    assert len(obs) == 2 and rec.notes == {}


async def test_observers_of_one_user_share_one_dispatch_per_batch() -> None:
    rec = Recorder()
    obs = Observations(lambda user: [], max_per_client=100, max_total=100, authenticate=_authenticate)
    observers = [rec.observation(i, f"device-{i}", f"ep-{i}") for i in range(50)]
    for o in observers:
        obs.add(o)
    obs.on_events([(11, _Ev("!room:hub"))])  # type: ignore[list-item]
    for _ in range(10):
        await asyncio.sleep(0)
    await asyncio.gather(*(o._task for o in observers if o._task is not None))
    assert len(rec.calls) == 1  # one dispatch for 50 observers
    bodies = {id(notes[0][0]) for notes in rec.notes.values()}
    assert len(rec.notes) == 50 and len(bodies) == 1  # the very same answer object for each
    # another user's observer is not served alice's answer
    bob = rec.observation(77, "bob-device", "ep-bob", user="@bob:hub")
    obs.add(bob)
    obs.on_events([(12, _Ev("!room:hub"))])  # type: ignore[list-item]
    await asyncio.sleep(0)
    await asyncio.gather(*(o._task for o in [*observers, bob] if o._task is not None))
    assert len(rec.calls) == 3  # alice's 50 once, bob once
