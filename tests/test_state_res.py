"""State resolution v2 (rooms v10, v11) and v2.1 (room v12): matrix_core.state_res.

Rooms are small hand-built DAGs (``Dag``): each event names its ``prev_events``; the state
before an event is its prev's state, or the resolution of its prevs' states; its ``auth_events``
are picked from that state as the server-server spec says. Ids are hand-picked (``$PA``),
``origin_server_ts`` counts up in the order events are added. No hashing, no signing, no I/O.

The classic cases (ban vs. power levels, join rule evasion, topic races, mainline ordering)
mirror the scenarios of Synapse's state res v2 tests; MSC4297's problems A and B are the cases
where v2.1 (v12) resolves differently from v2 (v10/v11).
"""
from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrix_core.auth_rules import auth_types_for_event, check_event_auth
from matrix_core.errors import AuthError
from matrix_core.events import Event
from matrix_core.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from matrix_core.state_res import (
    MissingEventsError,
    auth_chain,
    auth_difference,
    auth_event_ids,
    conflicted_subgraph,
    is_power_event,
    iterative_auth_checks,
    mainline_sort,
    resolve,
    reverse_topological_power_sort,
    separate,
)

ALICE = "@alice:a.test"  # creator
BOB = "@bob:b.test"
CHARLIE = "@charlie:c.test"
EVELYN = "@evelyn:e.test"
ZARA = "@zara:z.test"

ALL_VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
versions = pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: f"v{rv.identifier}")

PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")


def member_key(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


def levels(rv: RoomVersion, **users: int) -> dict[str, Any]:
    """power_levels content giving ``users`` (by short name) their levels; alice is at 100,
    except in v12 where the creator has infinite power and may not be listed."""
    ids = {"alice": ALICE, "bob": BOB, "charlie": CHARLIE, "evelyn": EVELYN, "zara": ZARA}
    table = {} if rv.privileged_creators else {ALICE: 100}
    table.update({ids[name]: level for name, level in users.items()})
    return {"users": table}


class Dag:
    """A room's event DAG, built event by event. ``state[node]`` is the state after ``node``."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.state: dict[str, dict[tuple[str, str], str]] = {}
        self._ts = itertools.count(1000)
        content: dict[str, Any] = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = ALICE
        pdu: dict[str, Any] = {
            "type": "m.room.create", "state_key": "", "sender": ALICE, "content": content,
            "prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": next(self._ts),
        }
        if rv.room_id_is_create_event_id:
            self.room_id = "!CREATE"
        else:
            self.room_id = "!room:a.test"
            pdu["room_id"] = self.room_id
        create = Event(pdu, "$CREATE", rv)
        self.events[create.event_id] = create
        self.state["CREATE"] = {create.state_pair(): create.event_id}

    def state_before(self, prevs: list[str]) -> dict[tuple[str, str], str]:
        if len(prevs) == 1:
            return dict(self.state[prevs[0]])
        return resolve(self.rv, [self.state[p] for p in prevs], self.events)

    def add(self, node: str, sender: str, type: str, state_key: str | None, content: dict[str, Any],
            prevs: list[str], check: bool = True) -> Event:
        before = self.state_before(prevs)
        auth_pairs = auth_types_for_event(self.rv, type, sender, state_key, content)
        pdu: dict[str, Any] = {
            "type": type, "sender": sender, "content": content, "room_id": self.room_id,
            "prev_events": ["$" + p for p in prevs],
            "auth_events": [before[k] for k in auth_pairs if k in before],
            "depth": 1 + max(self.events["$" + p].depth for p in prevs),
            "origin_server_ts": next(self._ts),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        event = Event(pdu, "$" + node, self.rv)
        if check:  # the scenarios only use events their own fork allows
            check_event_auth(event, {k: self.events[v] for k, v in before.items()})
        self.events[event.event_id] = event
        after = dict(before)
        if state_key is not None:
            after[(type, state_key)] = event.event_id
        self.state[node] = after
        return event

    def chain(self, nodes: list[tuple[Any, ...]], after: str) -> str:
        """Add (node, sender, type, state_key, content) events one after the other."""
        for node, sender, type, state_key, content in nodes:
            self.add(node, sender, type, state_key, content, [after])
            after = node
        return after

    def member(self, node: str, sender: str, target: str, membership: str, prevs: list[str]) -> Event:
        return self.add(node, sender, "m.room.member", target, {"membership": membership}, prevs)

    def topic(self, node: str, sender: str, prevs: list[str]) -> Event:
        return self.add(node, sender, "m.room.topic", "", {"topic": node}, prevs)

    def power(self, node: str, sender: str, prevs: list[str], **users: int) -> Event:
        return self.add(node, sender, "m.room.power_levels", "", levels(self.rv, **users), prevs)


def initial_dag(rv: RoomVersion) -> Dag:
    """create; alice joins; power levels (alice 100); public join rules; bob, charlie, zara join;
    a message START that the forks of each case grow from."""
    dag = Dag(rv)
    dag.member("IMA", ALICE, ALICE, "join", ["CREATE"])
    dag.power("IPOWER", ALICE, ["IMA"])
    dag.add("IJR", ALICE, "m.room.join_rules", "", {"join_rule": "public"}, ["IPOWER"])
    dag.member("IMB", BOB, BOB, "join", ["IJR"])
    dag.member("IMC", CHARLIE, CHARLIE, "join", ["IMB"])
    dag.member("IMZ", ZARA, ZARA, "join", ["IMC"])
    dag.add("START", ZARA, "m.room.message", None, {"body": "start"}, ["IMZ"])
    return dag


def changed_since_start(dag: Dag, state: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    start = dag.state["START"]
    return {k: v for k, v in state.items() if start.get(k) != v}


def merge(dag: Dag, *heads: str) -> dict[tuple[str, str], str]:
    return resolve(dag.rv, [dag.state[h] for h in heads], dag.events)


# --- the classic cases ------------------------------------------------------------------------


@versions
def test_ban_vs_power_levels(rv: RoomVersion) -> None:
    """Bob, just made a moderator, re-sends the power levels while alice bans him: the ban
    (alice outranks bob) is ordered first, so bob's power levels event no longer passes."""
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.member("MA", ALICE, ALICE, "join", ["PA"])
    dag.member("MB", ALICE, BOB, "ban", ["MA"])
    dag.power("PB", BOB, ["PA"], bob=50)
    state = merge(dag, "MB", "PB")
    assert state[PL] == "$PA"
    assert state[member_key(BOB)] == "$MB"
    assert state[member_key(ALICE)] == "$MA"
    # the same whichever fork is listed first
    assert merge(dag, "PB", "MB") == state


@versions
def test_join_rule_evasion(rv: RoomVersion) -> None:
    """Evelyn joins the public room while alice makes it invite-only: the join rules change is a
    power event, applied first, and evelyn's join then fails."""
    dag = initial_dag(rv)
    dag.add("JR", ALICE, "m.room.join_rules", "", {"join_rule": "invite"}, ["START"])
    dag.member("ME", EVELYN, EVELYN, "join", ["START"])
    state = merge(dag, "JR", "ME")
    assert changed_since_start(dag, state) == {JR: "$JR"}
    assert member_key(EVELYN) not in state


@versions
def test_offtopic_power_levels(rv: RoomVersion) -> None:
    """A chain of power levels changes (alice -> bob -> charlie) against the first of them."""
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.power("PB", BOB, ["PA"], bob=50, charlie=50)
    dag.power("PC", CHARLIE, ["PB"], bob=50, charlie=0)
    assert changed_since_start(dag, merge(dag, "PC", "PA")) == {PL: "$PC"}


@versions
def test_topic_race_higher_power_wins(rv: RoomVersion) -> None:
    """Alice demotes bob while bob sets a topic: bob's topic was sent under power levels that
    the resolved power levels supersede, so alice's topic stands."""
    dag = initial_dag(rv)
    dag.topic("T1", ALICE, ["START"])
    dag.power("PA1", ALICE, ["T1"], bob=50)
    dag.topic("T2", ALICE, ["PA1"])
    dag.power("PA2", ALICE, ["T2"], bob=0)
    dag.power("PB", BOB, ["PA1"], bob=50)
    dag.topic("T3", BOB, ["PB"])
    state = merge(dag, "PA2", "T3")
    assert changed_since_start(dag, state) == {PL: "$PA2", TOPIC: "$T2"}


@versions
def test_topic_reset_by_ban(rv: RoomVersion) -> None:
    """Bob's topic is undone when he is banned in the same fork and the other fork still has the
    old topic: the ban is applied first, then bob's topic fails."""
    dag = initial_dag(rv)
    dag.topic("T1", ALICE, ["START"])
    dag.power("PA", ALICE, ["T1"], bob=50)
    dag.topic("T2", BOB, ["PA"])
    dag.member("MB", ALICE, BOB, "ban", ["T2"])
    state = merge(dag, "MB", "T1")
    assert changed_since_start(dag, state) == {TOPIC: "$T1", member_key(BOB): "$MB", PL: "$PA"}


@versions
def test_topic_after_merge(rv: RoomVersion) -> None:
    """Both forks merge at a message, then alice sets a new topic on top."""
    dag = initial_dag(rv)
    dag.topic("T1", ALICE, ["START"])
    dag.power("PA1", ALICE, ["T1"], bob=50)
    dag.topic("T2", ALICE, ["PA1"])
    dag.power("PA2", ALICE, ["T2"], bob=0)
    dag.power("PB", BOB, ["PA1"], bob=50)
    dag.topic("T3", BOB, ["PB"])
    dag.add("MZ1", ZARA, "m.room.message", None, {"body": "hi"}, ["PA2", "T3"])
    dag.topic("T4", ALICE, ["MZ1"])
    assert changed_since_start(dag, dag.state["T4"]) == {TOPIC: "$T4", PL: "$PA2"}


@versions
def test_mainline_ordering_beats_timestamps(rv: RoomVersion) -> None:
    """T4 is sent after T3 but cites older power levels, so mainline ordering applies it first
    and T3 wins."""
    dag = initial_dag(rv)
    dag.topic("T1", ALICE, ["START"])
    dag.power("PA1", ALICE, ["T1"], bob=50)
    dag.topic("T2", ALICE, ["PA1"])
    pa2 = levels(rv, bob=50)
    pa2["events"] = {"m.room.power_levels": 100}
    dag.add("PA2", ALICE, "m.room.power_levels", "", pa2, ["T2"])
    dag.topic("T3", BOB, ["PA2"])
    dag.power("PB", BOB, ["PA1"], bob=50)
    dag.topic("T4", ALICE, ["PB"])
    state = merge(dag, "T3", "T4")
    assert changed_since_start(dag, state) == {TOPIC: "$T3", PL: "$PA2"}


@versions
def test_banned_in_one_fork_promoted_in_the_other(rv: RoomVersion) -> None:
    """Alice bans charlie in one fork; in the other bob promotes charlie (to 40) and charlie
    speaks. The ban (alice outranks bob) is replayed before bob's promotion; both pass, and
    charlie's join, replayed after them, no longer does: charlie stays banned."""
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.member("BAN", ALICE, CHARLIE, "ban", ["PA"])
    dag.power("PB", BOB, ["PA"], bob=50, charlie=40)
    dag.add("MSG", CHARLIE, "m.room.message", None, {"body": "I'm a mod"}, ["PB"])
    state = merge(dag, "BAN", "MSG")
    assert state[member_key(CHARLIE)] == "$BAN"
    assert state[PL] == "$PB"


@versions
def test_unconflicted_fast_path_needs_no_events(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    state = dag.state["START"]
    assert resolve(rv, [state, dict(state), state], {}) == state
    assert resolve(rv, [state], {}) == state
    assert resolve(rv, [], {}) == {}


# --- where v2.1 differs: MSC4297 ---------------------------------------------------------------


def problem_a(rv: RoomVersion) -> tuple[Dag, dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """MSC4297 problem A: alice sets the join rules twice (JR1, JR2) and then leaves. One server's
    view of the state (got by partial synchronisation) still has JR1; both agree alice left."""
    dag = initial_dag(rv)
    dag.add("JR1", ALICE, "m.room.join_rules", "", {"join_rule": "invite"}, ["START"])
    dag.add("JR2", ALICE, "m.room.join_rules", "", {"join_rule": "knock"}, ["JR1"])
    dag.member("LEAVE", ALICE, ALICE, "leave", ["JR2"])
    correct = dag.state["LEAVE"]
    stale = {**correct, JR: "$JR1"}
    return dag, correct, stale


@versions
def test_problem_a_join_rules_are_reset_by_v2_only(rv: RoomVersion) -> None:
    dag, correct, stale = problem_a(rv)
    state = resolve(rv, [correct, stale], dag.events)
    assert state[member_key(ALICE)] == "$LEAVE"
    if rv.state_res_v2_1:
        # Replayed from an empty state, each join rules event is checked against its own auth
        # events (alice joined) and the later one wins.
        assert state[JR] == "$JR2"
    else:
        # Replayed over the unconflicted state, where alice has left: both fail, the room is
        # left with no join rules at all (a state reset).
        assert JR not in state


def problem_b(rv: RoomVersion) -> tuple[Dag, dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """MSC4297 problem B: alice promotes bob (PL2), bob promotes charlie (PL3); charlie's later
    join (in both views) cites PL2. One view's power levels are stale (PL1)."""
    dag = initial_dag(rv)
    dag.power("PL1", ALICE, ["START"], bob=10)
    dag.power("PL2", ALICE, ["PL1"], bob=60)
    dag.member("CL", CHARLIE, CHARLIE, "leave", ["PL2"])
    dag.member("CJ", CHARLIE, CHARLIE, "join", ["CL"])
    dag.power("PL3", BOB, ["CJ"], bob=60, charlie=50)
    correct = dag.state["PL3"]
    stale = {**correct, PL: "$PL1"}
    return dag, correct, stale


def test_problem_b_conflicted_subgraph_holds_the_intermediate_power_levels() -> None:
    dag, correct, stale = problem_b(ROOM_V12)
    # PL2 is in both views' auth chains (via charlie's join), so not in the auth difference...
    assert "$PL2" not in auth_difference([correct, stale], dag.events)
    # ...but it lies on the path PL3 -> PL2 -> PL1 between the two conflicted events.
    assert conflicted_subgraph({"$PL1", "$PL3"}, dag.events) == {"$PL1", "$PL2", "$PL3"}


@versions
def test_problem_b_promotions_are_reset_by_v2_only(rv: RoomVersion) -> None:
    dag, correct, stale = problem_b(rv)
    state = resolve(rv, [correct, stale], dag.events)
    if rv.state_res_v2_1:
        # PL1, PL2, PL3 are replayed in auth order and each passes.
        assert state[PL] == "$PL3"
    else:
        # Only PL1 and PL3 are replayed; against PL1 bob (10) may not send PL3.
        assert state[PL] == "$PL1"


# --- helpers ----------------------------------------------------------------------------------


def test_separate() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
    b = {("t", ""): "$1", ("u", ""): "$9"}
    unconflicted, conflicted = separate([a, b])
    assert unconflicted == {("t", ""): "$1"}
    assert conflicted == {("u", ""): {"$2", "$9"}, ("only_a", ""): {"$3"}}
    assert separate([a]) == (a, {})
    assert separate([]) == ({}, {})


@versions
def test_auth_chain_and_difference(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.topic("TB", BOB, ["PA"])
    chain = auth_chain("$TB", dag.events)
    # topic by bob: create, power levels PA, bob's membership; and theirs, recursively
    assert chain == {"$CREATE", "$PA", "$IMB", "$IMA", "$IPOWER", "$IJR"}
    assert "$TB" not in chain
    assert auth_chain("$CREATE", dag.events) == set()
    diff = auth_difference([dag.state["TB"], dag.state["START"]], dag.events)
    assert diff == {"$PA", "$TB"}
    assert auth_difference([dag.state["TB"]], dag.events) == set()


def test_v12_create_event_is_an_implicit_auth_event() -> None:
    dag = initial_dag(ROOM_V12)
    join = dag.events["$IMB"]
    assert "$CREATE" not in join.auth_event_ids
    assert "$CREATE" in auth_event_ids(join)
    assert "$CREATE" in auth_chain("$IMB", dag.events)
    assert "$CREATE" in auth_chain("$IMB", initial_dag(ROOM_V11).events)


def test_conflicted_subgraph_excludes_side_branches() -> None:
    dag = initial_dag(ROOM_V11)
    dag.power("P1", ALICE, ["START"], bob=10)
    dag.topic("SIDE", ALICE, ["P1"])  # cites P1 but no conflicted event cites it
    dag.power("P2", ALICE, ["SIDE"], bob=20)
    dag.power("P3", ALICE, ["P2"], bob=30)
    assert conflicted_subgraph({"$P1", "$P3"}, dag.events) == {"$P1", "$P2", "$P3"}
    assert conflicted_subgraph({"$P3"}, dag.events) == {"$P3"}
    assert conflicted_subgraph(set(), dag.events) == set()


@versions
def test_is_power_event(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.member("KICK", ALICE, CHARLIE, "leave", ["PA"])
    dag.member("LEAVE", BOB, BOB, "leave", ["KICK"])
    dag.member("BAN", ALICE, ZARA, "ban", ["LEAVE"])
    dag.topic("T", ALICE, ["BAN"])
    power = {eid for eid, ev in dag.events.items() if is_power_event(ev)}
    assert power == {"$CREATE", "$IPOWER", "$IJR", "$PA", "$KICK", "$BAN"}


def _lone_event(rv: RoomVersion, dag: Dag, node: str, sender: str, ts: int, auth: list[str],
                type: str = "m.room.topic") -> str:
    """A state event added by hand with a chosen timestamp and auth events (no checks)."""
    pdu = {
        "type": type, "state_key": "", "sender": sender, "content": {}, "room_id": dag.room_id,
        "prev_events": ["$START"], "auth_events": list(auth), "depth": 99, "origin_server_ts": ts,
    }
    if not rv.room_id_is_create_event_id:
        pdu["auth_events"].insert(0, "$CREATE")
    dag.events["$" + node] = Event(pdu, "$" + node, rv)
    return "$" + node


@versions
def test_reverse_topological_power_sort_tie_breaks(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50, charlie=50)
    auth_b = ["$PA", "$IMB"]
    auth_c = ["$PA", "$IMC"]
    # bob and charlie are both at 50 (in PA): then the timestamp, then the event id decide.
    ids = [
        _lone_event(rv, dag, "C_LATE", CHARLIE, 5, auth=auth_c),
        _lone_event(rv, dag, "B_EARLY", BOB, 1, auth=auth_b),
        _lone_event(rv, dag, "C_SAME_TS_2", CHARLIE, 3, auth=auth_c),
        _lone_event(rv, dag, "B_SAME_TS_1", BOB, 3, auth=auth_b),
        # alice (100, or infinite in v12) goes first despite the latest timestamp
        _lone_event(rv, dag, "A", ALICE, 9, auth=["$PA", "$IMA"]),
        # charlie as IPOWER has him (0) goes last despite the earliest timestamp
        _lone_event(rv, dag, "Z", CHARLIE, 0, auth=["$IPOWER", "$IMC"]),
    ]
    order = reverse_topological_power_sort(ids, dag.events)
    assert order == ["$A", "$B_EARLY", "$B_SAME_TS_1", "$C_SAME_TS_2", "$C_LATE", "$Z"]


@versions
def test_reverse_topological_power_sort_topology_first(rv: RoomVersion) -> None:
    """An auth event comes before the events it authorises whatever the power levels say, and
    the auth chain inside the full conflicted set is pulled in."""
    dag = initial_dag(rv)
    dag.power("PB1", ALICE, ["START"], bob=50)
    dag.power("PB2", BOB, ["PB1"], bob=50, charlie=10)  # bob, lower power, later
    dag.power("PA3", ALICE, ["PB2"], bob=50, charlie=20)  # alice, cites bob's PB2
    full = {"$PB1", "$PB2", "$PA3"}
    assert reverse_topological_power_sort(["$PA3"], dag.events, full) == ["$PB1", "$PB2", "$PA3"]
    assert reverse_topological_power_sort(["$PA3", "$PB2"], dag.events) == ["$PB2", "$PA3"]


@versions
def test_mainline_sort(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("P1", ALICE, ["START"], bob=50)
    dag.topic("T_P1", BOB, ["P1"])
    dag.power("P2", ALICE, ["T_P1"], bob=50, charlie=50)
    dag.topic("T_P2", BOB, ["P2"])
    dag.topic("T_P2_LATER", CHARLIE, ["T_P2"])
    dag.topic("T_IPOWER", ALICE, ["START"])
    ids = ["$T_P2_LATER", "$T_P2", "$T_IPOWER", "$T_P1"]
    # mainline of P2: P2 (0), P1 (1), IPOWER (2): older bases first, then timestamp
    assert mainline_sort(ids, "$P2", dag.events) == ["$T_IPOWER", "$T_P1", "$T_P2", "$T_P2_LATER"]
    # based on P1, the walk from the events citing P2 goes on to P1: they tie with T_P1 at 0
    assert mainline_sort(ids, "$P1", dag.events) == ["$T_IPOWER", "$T_P1", "$T_P2", "$T_P2_LATER"]
    # an event with no power levels event in its auth chain has an infinite position: first
    assert mainline_sort(["$T_P1", "$IMA"], "$P2", dag.events) == ["$IMA", "$T_P1"]
    # no power levels at all: only timestamps and ids
    by_ts = sorted(ids, key=lambda e: dag.events[e].origin_server_ts)
    assert mainline_sort(ids, None, dag.events) == by_ts


@versions
def test_iterative_auth_checks(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.topic("TB", BOB, ["PA"])
    dag.power("DEMOTE", ALICE, ["PA"], bob=0)
    base = dag.state["START"]
    # TB passes against PA...
    assert iterative_auth_checks(["$PA", "$TB"], base, dag.events)[TOPIC] == "$TB"
    # ...but not once the demotion is in the partial state: it overrides TB's own auth event.
    state = iterative_auth_checks(["$PA", "$DEMOTE", "$TB"], base, dag.events)
    assert state[PL] == "$DEMOTE" and TOPIC not in state
    # From an empty state the keys the rules need come from the event's own auth events.
    assert iterative_auth_checks(["$TB"], {}, dag.events) == {TOPIC: "$TB"}
    # A rejected auth event is not used: without his join, bob is not in the room.
    assert iterative_auth_checks(["$TB"], {}, dag.events, rejected={"$IMB"}) == {}
    # The input state is not modified.
    assert TOPIC not in base


# --- errors and inputs ------------------------------------------------------------------------


@versions
def test_missing_events(rv: RoomVersion) -> None:
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50)
    dag.topic("TB", BOB, ["PA"])
    dag.topic("TA", ALICE, ["START"])
    sets = [dag.state["TB"], dag.state["TA"]]
    for missing in ({"$PA"}, {"$TB"}, {"$PA", "$IMB"}):
        events = {k: v for k, v in dag.events.items() if k not in missing}
        with pytest.raises(MissingEventsError) as info:
            resolve(rv, sets, events)
        # everything missing is reported at once
        assert info.value.event_ids == missing
        assert all(m in str(info.value) for m in missing)
    with pytest.raises(MissingEventsError):
        auth_chain("$nope", dag.events)
    # with them all, it resolves
    assert resolve(rv, sets, dag.events)[TOPIC] in ("$TA", "$TB")


def test_missing_v12_create_event() -> None:
    dag = initial_dag(ROOM_V12)
    dag.topic("TA", ALICE, ["START"])
    state_without_create = {k: v for k, v in dag.state["TA"].items() if k[0] != "m.room.create"}
    start_without_create = {k: v for k, v in dag.state["START"].items() if k[0] != "m.room.create"}
    events = {k: v for k, v in dag.events.items() if k != "$CREATE"}
    with pytest.raises(MissingEventsError) as info:
        resolve(ROOM_V12, [state_without_create, start_without_create], events)
    assert info.value.event_ids == {"$CREATE"}


def test_state_set_naming_an_event_under_another_key_is_refused() -> None:
    dag = initial_dag(ROOM_V11)
    dag.topic("TA", ALICE, ["START"])
    bad = {**dag.state["START"], TOPIC: "$IPOWER"}
    with pytest.raises(ValueError):
        resolve(ROOM_V11, [dag.state["TA"], bad], dag.events)


# --- properties -------------------------------------------------------------------------------

ACTORS = [ALICE, BOB, CHARLIE, ZARA]


def _random_action(draw: Any, rv: RoomVersion) -> tuple[str, str, str | None, dict[str, Any]]:
    sender = draw(st.sampled_from(ACTORS))
    kind = draw(st.sampled_from(["topic", "power", "ban", "kick", "leave", "join", "join_rules", "name"]))
    if kind in ("topic", "name"):
        return sender, f"m.room.{kind}", "", {kind: draw(st.text(max_size=3))}
    if kind == "power":
        chosen = draw(st.dictionaries(st.sampled_from(["bob", "charlie", "zara"]), st.sampled_from([0, 50, 75]),
                                      max_size=3))
        return sender, "m.room.power_levels", "", levels(rv, **chosen)
    if kind == "join_rules":
        return sender, "m.room.join_rules", "", {"join_rule": draw(st.sampled_from(["public", "invite"]))}
    if kind in ("ban", "kick"):
        target = draw(st.sampled_from(ACTORS))
        return sender, "m.room.member", target, {"membership": "ban" if kind == "ban" else "leave"}
    return sender, "m.room.member", sender, {"membership": kind}


@st.composite
def forked_rooms(draw: Any) -> tuple[Dag, list[dict[tuple[str, str], str]]]:
    """A room with 2-3 branches of random state changes (only those their branch allows), each
    growing from PA or from an earlier branch's head, with random timestamps; returns the states
    at the branch heads."""
    rv = draw(st.sampled_from(ALL_VERSIONS))
    dag = initial_dag(rv)
    dag.power("PA", ALICE, ["START"], bob=50, charlie=50)
    heads = ["PA"]
    counter = itertools.count()
    for _ in range(draw(st.integers(2, 3))):
        head = draw(st.sampled_from(heads))
        for _ in range(draw(st.integers(1, 4))):
            sender, type, state_key, content = _random_action(draw, rv)
            node = f"E{next(counter)}"
            try:
                dag.add(node, sender, type, state_key, content, [head])
            except AuthError:
                continue
            # a random timestamp, so that ties and out-of-order clocks are exercised
            dag.events["$" + node].pdu["origin_server_ts"] = draw(st.integers(0, 5))
            head = node
        heads.append(head)
    return dag, [dag.state[h] for h in heads]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forked_rooms(), st.randoms(use_true_random=False))
def test_resolution_is_order_independent_and_idempotent(room: Any, random: Any) -> None:
    dag, state_sets = room
    rv = dag.rv
    resolved = resolve(rv, state_sets, dag.events)
    assert resolve(rv, list(reversed(state_sets)), dag.events) == resolved
    shuffled = list(state_sets)
    random.shuffle(shuffled)
    assert resolve(rv, shuffled, dag.events) == resolved
    # repeating a state set changes nothing; one state set resolves to itself
    assert resolve(rv, state_sets + state_sets[:1], dag.events) == resolved
    for state_set in state_sets:
        assert resolve(rv, [state_set], dag.events) == state_set
        assert resolve(rv, [state_set, state_set], dag.events) == state_set
    # the resolved state only names events from the inputs, under their own keys
    for key, event_id in resolved.items():
        assert dag.events[event_id].state_pair() == key
    # the unconflicted state always stands
    unconflicted, _ = separate(state_sets)
    assert all(resolved[k] == v for k, v in unconflicted.items())
