"""Push rules and notification counts: each user's rule set (hs.push), the `m.push_rules` account
data and the `unread_notifications` counts in /sync, GET /notifications, and the two calls the
pushers (HTTP push gateway delivery) make: `actions_for` and `unread_counts`.

Why lazily, at read time, and not for every member on every new event (Synapse's way):
a hub's rooms are mostly sensor rooms whose events arrive over MQTT by the thousand, and most of
their members have no client open. Evaluating every event for every local member on the persist
path would cost the MQTT publish path a rule walk per member per message, and storing per-event
push actions would write a row per member per message to an SD card. Instead nothing happens when
an event is stored; counts are computed when someone asks (a /sync, /notifications, a pusher):
the events after the user's read position are evaluated then, and the result is kept in a small
in-memory cache per (user, room): (the read positions it was computed for, the stream position it
evaluated up to, the counts per thread). A long-polling client then evaluates only the events that
arrived since its last answer; a receipt that moves the read position recomputes from there (the
usual receipt points at the newest event: little to scan). The cache is an LRU of a few thousand
entries of a few integers each (bounded memory on a 512 MB Pi Zero), and a scan reaches at most
MAX_SCAN events back per room: a room never read with more unread events than that shows MAX_SCAN
(the client shows "99+" long before). Rules are evaluated against the room's current state (the
member count, display names, power levels now), which for recent events is the state they were
sent in.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import errors, push_rules as pr
from ..account_data_rules import event_filter_allows
from ..events import Event
from ..notifier import EventStream
from ..store import push_rules as rows
from ..store import relations as relation_rows
from ..store.database import Database
from .accounts import Requester
from .sync_sources import SyncContext, SyncOutput, SyncSource

if TYPE_CHECKING:
    from .rooms import Rooms

log = logging.getLogger(__name__)

MAX_SCAN = 2000          # events looked at back from now per (user, room) computation
PAGE = 250               # events read from the store per query while scanning
FIRST_PAGE = 50          # the first such query (the user's own recent event often ends the scan)
COUNT_CACHE_SIZE = 4096  # (user, room) entries
RULES_CACHE_SIZE = 256   # users whose compiled rule set is kept
NOTIFICATIONS_SCAN = 300  # events per room looked at per GET /notifications page
READS_KEPT = 4096        # recent note_read hints kept for incremental syncs
# The push_rules stream position: (rule changes, persisted) * READS_SPAN + read hints (in memory,
# from 0 again after a restart). Rule changes always move it forward across restarts; a read hint
# lost in a restart only means the room shows its new counts with its next news instead.
READS_SPAN = 2**32


class ReadPositions(Protocol):
    """What the receipts service (hs.receipts) tells: for each thread ("main", a thread root's
    event id, or "unthreaded"), the stream position of the event the user's latest m.read /
    m.read.private receipt points at."""

    async def read_positions(self, user_id: str, room_id: str) -> dict[str, int]: ...


class NoReadPositions:
    """Until a receipts service exists: nobody has read anything (their own events still count
    as read up to there)."""

    async def read_positions(self, user_id: str, room_id: str) -> dict[str, int]:
        return {}


NO_READ_POSITIONS = NoReadPositions()


@dataclass(slots=True)
class _UserRuleSet:
    user: pr.UserRules
    rules: dict[str, list[dict[str, Any]]]
    evaluator: pr.Evaluator


@dataclass(slots=True)
class _Counts:
    """One (user, room)'s counts: per thread ("main" or a root id) [notifications, highlights]."""
    read_key: tuple[tuple[str, int], ...]
    rules_version: int
    upto: int
    threads: dict[str, list[int]] = field(default_factory=dict)

    def total(self) -> tuple[int, int]:
        return sum(c[0] for c in self.threads.values()), sum(c[1] for c in self.threads.values())


def _effective(read: dict[str, int], thread: str) -> int:
    return max(read.get("unthreaded", 0), read.get(thread, 0))


class PushRules:
    def __init__(self, db: Database, rooms: Rooms, stream: EventStream, notify: Callable[[], None],
                 read_positions: Callable[[], ReadPositions] = lambda: NO_READ_POSITIONS) -> None:
        """`notify`: wakes /sync long-polls (hs.sync.notify); `read_positions`: gives the receipts
        service (hs.receipts once it exists)."""
        self.db = db
        self.rooms = rooms
        self.stream = stream
        self._notify = notify
        self._read_positions = read_positions
        self.position = 0  # rule changes (the persisted part of the stream position)
        self._reads = 0     # read hints since start (the in-memory part)
        self._read_hints: deque[tuple[int, str, str]] = deque(maxlen=READS_KEPT)  # (stream pos, user, room)
        self._user_positions: dict[str, int] = {}
        self._rule_sets: OrderedDict[str, _UserRuleSet] = OrderedDict()
        self._rules_version: dict[str, int] = {}
        self._counts: OrderedDict[tuple[str, str], _Counts] = OrderedDict()
        self.source = PushRulesSource(self)
        self.evaluated = 0  # events looked at for counts (tests and benches read it)

    async def load(self) -> None:
        self.position = await rows.stream_position(self.db)
        self._user_positions = await rows.user_positions(self.db)

    def stream_position(self) -> int:
        return self.position * READS_SPAN + self._reads

    def note_read(self, user_id: str, room_id: str) -> None:
        """The receipts service's hint that the user's read position in the room moved: the
        room then appears in the user's next /sync with its new counts even when nothing else
        about it is news (the receipt service's own m.receipt already makes it appear; this
        covers the rest). Cheap: no I/O."""
        if self._reads + 1 >= READS_SPAN:
            return
        self._reads += 1
        self._read_hints.append((self.stream_position(), user_id, room_id))
        self._notify()

    def rooms_read_between(self, user_id: str, since: int, upto: int) -> set[str] | None:
        """Rooms with a read hint for the user in (since, upto]; None when the hints kept no
        longer reach back to `since` (the caller then treats every room as possibly read)."""
        if self._read_hints and len(self._read_hints) == READS_KEPT and self._read_hints[0][0] > since + 1:
            return None
        return {room for pos, user, room in self._read_hints if user == user_id and since < pos <= upto}

    # -- the rule set -------------------------------------------------------------------------

    async def _rule_set(self, user_id: str) -> _UserRuleSet:
        found = self._rule_sets.get(user_id)
        if found is not None:
            self._rule_sets.move_to_end(user_id)
            return found
        custom, settings = await rows.load_user(self.db, user_id)
        user = pr.UserRules()
        for kind in pr.KINDS:
            user.custom[kind] = custom.get(kind, [])
        for (kind, rule_id), (enabled, actions) in settings.items():
            if enabled is not None:
                user.enabled[f"{kind}/{rule_id}"] = enabled
            if actions is not None:
                user.actions[f"{kind}/{rule_id}"] = actions
        rules = pr.ruleset(user_id, user)
        found = _UserRuleSet(user, rules, pr.Evaluator(rules))
        self._rule_sets[user_id] = found
        if len(self._rule_sets) > RULES_CACHE_SIZE:
            self._rule_sets.popitem(last=False)
        return found

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The user's `global` rule set, as GET /pushrules/ and `m.push_rules` show it."""
        return (await self._rule_set(user_id)).rules

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        rule = pr.find_rule(await self.ruleset(user_id), _kind(kind), rule_id)
        if rule is None:
            raise errors.not_found("Unknown push rule")
        return rule

    async def _write(self, user_id: str, fn: Callable[..., None], *args: Any) -> None:
        """One change to the user's rules: stored (or refused whole) at the next stream position."""
        position = self.position + 1
        await self.db.write(lambda conn: fn(conn, user_id, *args, position))
        self.position = max(self.position, position)
        self._reads = 0
        self._user_positions[user_id] = position
        self._rule_sets.pop(user_id, None)
        self._rules_version[user_id] = self._rules_version.get(user_id, 0) + 1
        self._notify()

    async def put_rule(self, user_id: str, kind: str, rule_id: str, body: Any, before: str | None,
                       after: str | None) -> None:
        kind = _kind(kind)
        try:
            pr.check_new_rule_id(kind, rule_id)
            rule = pr.new_rule(kind, rule_id, body)
        except pr.RuleError as exc:
            raise errors.MatrixError(400, exc.code, str(exc)) from None
        await self._write(user_id, rows.put_rule, kind, rule, before, after, pr.MAX_RULES_PER_USER)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        rule = await self.get_rule(user_id, kind, rule_id)
        if rule["default"]:
            raise errors.not_found("Server-default rules cannot be deleted")
        await self._write(user_id, rows.delete_rule, kind, rule_id)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: Any) -> None:
        rule = await self.get_rule(user_id, kind, rule_id)
        if not isinstance(enabled, bool):
            raise errors.bad_json("'enabled' must be true or false")
        await self._write(user_id, rows.set_enabled, kind, rule_id, enabled, not rule["default"])

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        rule = await self.get_rule(user_id, kind, rule_id)
        try:
            pr.check_actions(actions)
        except pr.RuleError as exc:
            raise errors.MatrixError(400, exc.code, str(exc)) from None
        await self._write(user_id, rows.set_actions, kind, rule_id, actions, not rule["default"])

    # -- evaluation (the pushers' interface) --------------------------------------------------

    async def actions_for(self, user_id: str, event: Event) -> list[Any]:
        """The actions of the first rule that matches `event` for the local user, or [] when none
        does, it does not notify, or the user sent the event."""
        if event.sender == user_id:
            return []
        room = await self.rooms.get_room(event.room_id)
        evaluator = (await self._rule_set(user_id)).evaluator
        actions = evaluator.actions(event.pdu, pr.RoomFacts(room.state, user_id))
        return actions if pr.notifies(actions)[0] else []

    async def unread_counts(self, user_id: str, room_id: str) -> tuple[int, int]:
        """(notification_count, highlight_count) of the room for the user now."""
        return (await self._counts_now(user_id, room_id)).total()

    async def thread_counts(self, user_id: str, room_id: str) -> dict[str, tuple[int, int]]:
        """Per thread ("main" or a thread root's id): (notifications, highlights), zeros left out."""
        counts = await self._counts_now(user_id, room_id)
        return {t: (c[0], c[1]) for t, c in counts.threads.items() if c[0] or c[1]}

    async def _counts_now(self, user_id: str, room_id: str) -> _Counts:
        read = await self._read_positions().read_positions(user_id, room_id)
        read_key = tuple(sorted(read.items()))
        version = self._rules_version.get(user_id, 0)
        now = self.stream.position
        key = (user_id, room_id)
        entry = self._counts.get(key)
        if entry is not None and entry.read_key == read_key and entry.rules_version == version:
            self._counts.move_to_end(key)
            if entry.upto < now:
                await self._scan_forward(user_id, room_id, read, entry, now)
            return entry
        entry = _Counts(read_key, version, now)
        await self._scan_back(user_id, room_id, read, entry, now)
        self._counts[key] = entry
        if len(self._counts) > COUNT_CACHE_SIZE:
            self._counts.popitem(last=False)
        return entry

    def _lower_bound(self, user_id: str, room_id: str, read: dict[str, int]) -> int:
        """Nothing at or before this position counts: the oldest read position of the main
        timeline and the threads with receipts (an unthreaded receipt covers all), and never
        before the user's join. (A thread with no receipt of its own is counted from there on:
        which threads exist is only known by scanning.)"""
        threaded = [p for t, p in read.items() if t not in ("unthreaded", "main")]
        lower = max(read.get("unthreaded", 0), min([read.get("main", 0), *threaded]))
        membership = self.rooms.membership_of(user_id, room_id)
        return max(lower, membership[1] if membership is not None else 0)

    async def _evaluation(self, user_id: str, room_id: str) -> tuple[pr.Evaluator, pr.RoomFacts]:
        room = await self.rooms.get_room(room_id)
        return (await self._rule_set(user_id)).evaluator, pr.RoomFacts(room.state, user_id)

    async def _scan_back(self, user_id: str, room_id: str, read: dict[str, int], entry: _Counts,
                         now: int) -> None:
        """Count from scratch, newest first: a thread in which the user's own event is met is
        read from there back (the sender's event acts as their read receipt)."""
        lower = self._lower_bound(user_id, room_id, read)
        evaluator, facts = await self._evaluation(user_id, room_id)
        # A room that never held a relation has no threads: once the user's own event closes the
        # main timeline nothing older can count, so the scan stops there instead of reading up to
        # MAX_SCAN events (a user's first sync of 100 rooms of 1,000 messages they sent read
        # 100,000 events for counts of 0). The first page is small for the same reason.
        threads_possible = room_id in self.rooms.relations.persister.relation_rooms
        closed: set[str] = set()
        seen = 0
        upto = now
        size = FIRST_PAGE
        while seen < MAX_SCAN and upto > lower:
            page = await self.rooms.timeline(room_id, upto, min(size, MAX_SCAN - seen), after=lower)
            if not page:
                break
            threads = await self._threads_of(room_id, page)
            for pos, ev in page:
                self._count_one(user_id, ev, pos, threads.get(ev.event_id) or pr.thread_of(ev.pdu), read, evaluator,
                                facts, entry, closed)
            self.evaluated += len(page)
            seen += len(page)
            upto = page[-1][0] - 1
            if len(page) < size or ("main" in closed and not threads_possible):
                break
            size = PAGE

    async def _scan_forward(self, user_id: str, room_id: str, read: dict[str, int], entry: _Counts,
                            now: int) -> None:
        """Add what arrived in (entry.upto, now], oldest first; the user's own event resets its
        thread's counts. Counted into a copy, applied only if no concurrent sync of the same user
        advanced the entry meanwhile (each await is a point where one could)."""
        start = entry.upto
        after = max(start, self._lower_bound(user_id, room_id, read))
        recent = self.stream.recent_since(after)
        if recent is not None:
            events = [(pos, ev) for pos, ev in recent if pos <= now and ev.room_id == room_id]
        else:
            events = list(reversed(await self.rooms.timeline(room_id, now, MAX_SCAN, after=after)))
        threads = {t: list(c) for t, c in entry.threads.items()}
        in_threads = await self._threads_of(room_id, events)
        evaluator: pr.Evaluator | None = None
        facts: pr.RoomFacts | None = None
        for pos, ev in events:
            thread = in_threads.get(ev.event_id) or pr.thread_of(ev.pdu)
            if pos <= _effective(read, thread):
                continue
            if ev.sender == user_id:
                threads.pop(thread, None)
                continue
            if evaluator is None or facts is None:
                evaluator, facts = await self._evaluation(user_id, room_id)
            self.evaluated += 1
            notify, highlight = pr.notifies(evaluator.actions(ev.pdu, facts))
            if notify:
                counts = threads.setdefault(thread, [0, 0])
                counts[0] += 1
                counts[1] += highlight
        if entry.upto == start:
            entry.threads = threads
            entry.upto = now

    async def _threads_of(self, room_id: str, events: list[tuple[int, Event]]) -> dict[str, str]:
        """event id -> thread root for the events that are in a thread through their parent (an
        edit, reaction or reference of an event in a thread, as Synapse's get_thread_id): the
        sender's own edit of a thread reply reads that thread, not the main timeline. One query
        per page, and none in a room that never held a relation."""
        if room_id not in self.rooms.relations.persister.relation_rooms:
            return {}
        parents = {ev.event_id: parent for _, ev in events if (parent := pr.related_parent(ev.pdu)) is not None}
        if not parents:
            return {}
        roots = await relation_rows.threads_of(self.db, set(parents.values()))
        return {event_id: roots[parent] for event_id, parent in parents.items() if parent in roots}

    @staticmethod
    def _count_one(user_id: str, ev: Event, pos: int, thread: str, read: dict[str, int], evaluator: pr.Evaluator,
                   facts: pr.RoomFacts, entry: _Counts, closed: set[str]) -> None:
        if thread in closed or pos <= _effective(read, thread):
            return
        if ev.sender == user_id:
            closed.add(thread)
            return
        notify, highlight = pr.notifies(evaluator.actions(ev.pdu, facts))
        if notify:
            counts = entry.threads.setdefault(thread, [0, 0])
            counts[0] += 1
            counts[1] += highlight

    # -- GET /notifications ---------------------------------------------------------------------

    async def notifications(self, requester: Requester, from_pos: int | None, limit: int,
                            only_highlight: bool) -> dict[str, Any]:
        """The user's notifications, newest first, from the last NOTIFICATIONS_SCAN events of
        each joined room before `from` (the previous page's `next_token`)."""
        user_id = requester.user_id
        upto = self.stream.position if from_pos is None else min(from_pos, self.stream.position)
        found: list[tuple[int, str, Event, list[Any], bool]] = []
        for room_id in self.rooms.joined_room_ids(user_id):
            membership = self.rooms.membership_of(user_id, room_id)
            joined_at = membership[1] if membership is not None else 0
            page = await self.rooms.timeline(room_id, upto, NOTIFICATIONS_SCAN, after=joined_at)
            if not page:
                continue
            read = await self._read_positions().read_positions(user_id, room_id)
            evaluator, facts = await self._evaluation(user_id, room_id)
            own_latest: dict[str, int] = {}
            in_threads = await self._threads_of(room_id, page)
            for pos, ev in page:  # newest first
                thread = in_threads.get(ev.event_id) or pr.thread_of(ev.pdu)
                if ev.sender == user_id:
                    own_latest.setdefault(thread, pos)
                    continue
                actions = evaluator.actions(ev.pdu, facts)
                notify, highlight = pr.notifies(actions)
                if not notify or (only_highlight and not highlight):
                    continue
                is_read = pos <= max(_effective(read, thread), own_latest.get(thread, 0))
                found.append((pos, room_id, ev, actions, is_read))
        found.sort(key=lambda item: item[0], reverse=True)
        page_items = found[:limit]
        body: dict[str, Any] = {"notifications": [
            {"actions": actions, "event": self.rooms.serialize(ev, requester), "read": is_read,
             "room_id": room_id, "ts": ev.origin_server_ts}
            for pos, room_id, ev, actions, is_read in page_items]}
        if len(found) > limit:
            body["next_token"] = str(page_items[-1][0] - 1)
        return body

    # -- /sync ------------------------------------------------------------------------------------

    def user_position(self, user_id: str) -> int:
        """The stream position of the user's latest rule change."""
        return self._user_positions.get(user_id, 0) * READS_SPAN


def _kind(kind: str) -> str:
    try:
        return pr.check_kind(kind)
    except pr.RuleError as exc:
        raise errors.MatrixError(400, exc.code, str(exc)) from None


def _wants_thread_counts(sync_filter: dict[str, Any]) -> bool:
    room = sync_filter.get("room") if isinstance(sync_filter, dict) else None
    timeline = room.get("timeline") if isinstance(room, dict) else None
    return isinstance(timeline, dict) and timeline.get("unread_thread_notifications") is True


class PushRulesSource(SyncSource):
    """/sync: the `m.push_rules` account data event (initial sync, and after a change), and the
    `unread_notifications` (and, when the filter asks, `unread_thread_notifications`) of each
    joined room in the answer."""

    stream = "push_rules"

    def __init__(self, push: PushRules) -> None:
        self.push = push

    def position(self) -> int:
        return self.push.stream_position()

    async def collect(self, ctx: SyncContext, since: int, upto: int, out: SyncOutput) -> None:
        user_id = ctx.requester.user_id
        changed = ctx.initial or ctx.full_state or since < self.push.user_position(user_id) <= upto
        if changed and event_filter_allows(ctx.sync_filter.get("account_data"), "m.push_rules"):
            rules = await self.push.ruleset(user_id)
            out.add_top("account_data", [{"type": "m.push_rules", "content": {"global": rules}}])
        if ctx.initial:
            return
        read = self.push.rooms_read_between(user_id, since, upto)
        joined = set(ctx.joined_rooms)
        for room_id in (joined if read is None else read & joined):
            # the counts themselves are set by annotate, for every room in the answer
            out.set_room_field(room_id, "unread_notifications", {}, makes_room_appear=True)

    async def annotate(self, ctx: SyncContext, room_ids: list[str], out: SyncOutput) -> None:
        user_id = ctx.requester.user_id
        threads = _wants_thread_counts(ctx.sync_filter)
        for room_id in room_ids:
            try:
                counts = await self.push._counts_now(user_id, room_id)
            except Exception:  # one room's counts must not fail the whole sync
                log.exception("unread counts of %s for %s failed", room_id, user_id)
                continue
            if threads:
                main = counts.threads.get("main", [0, 0])
                out.set_room_field(room_id, "unread_notifications",
                                   {"notification_count": main[0], "highlight_count": main[1]})
                out.set_room_field(room_id, "unread_thread_notifications", {
                    t: {"notification_count": c[0], "highlight_count": c[1]}
                    for t, c in counts.threads.items() if t != "main" and (c[0] or c[1])})
            else:
                n, h = counts.total()
                out.set_room_field(room_id, "unread_notifications", {"notification_count": n, "highlight_count": h})
