"""Simplified Sliding Sync (MSC4186): the room list Element X syncs with.

A connection is (user, device, conn_id). Its state — where each stream stood, which rooms were
sent at which position, its sticky room subscriptions and extension settings — lives in memory
for the last few answers (`STATES_KEPT`, so a retried request with the previous `pos` still
works); connections are bounded (`MAX_CONNECTIONS`, least recently used go). A `pos` we do not
hold (a restart, an evicted connection, a made-up token) answers M_UNKNOWN_POS and the client
starts over without one, as the MSC asks.

Sharing with /sync v2: timelines come from the same room reads, counts from hs.push, and each
extension is the /sync source of its stream (service/sync_sources.py) called with the
extension's own since/upto, so to-device delivery, device lists, account data, receipts and
typing have one implementation each. Long-polls wait on the same event stream signal. A room
whose counts the user's read moved (push's read hints, as v2's unread_notifications) is sent
again with only its counts. MSC4360's threads extension and its /thread_updates read the
relations index (store/relations.py), only for rooms that hold relations and have new events.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import errors, params
from .. import sliding_sync_rules as rules
from ..events import Event
from ..log_limit import LogLimiter
from ..sliding_sync_rules import RoomConfig, RoomFacts, SlidingRequest
from ..store import relations as relation_rows
from .accounts import Requester
from .sync_sources import SyncContext, SyncOutput

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_USER = 16   # one user opening conn_id after conn_id evicts only their own
STATES_KEPT = 4
STATE_SCAN = 100  # how many new events of a room are looked through for changed required state
THREAD_SCAN = 1000  # thread replies per room looked through for the threads extension
SIDE = ("account_data", "receipts", "typing", "to_device", "device_lists", "push_rules")


@dataclass(slots=True)
class ConnState:
    """What one answer left behind: the next request with its `pos` starts from here."""
    events_pos: int
    side: dict[str, int]
    sent: dict[str, tuple[int, str, RoomConfig]]   # room -> (events position, membership, config)
    subscriptions: dict[str, RoomConfig]
    extensions: dict[str, dict[str, Any]]
    counts: dict[str, int]
    # room -> (notification_count, highlight_count) last sent: a read that moves them re-sends
    # the room with its new counts (as /sync v2 does with unread_notifications)
    unread: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class Connection:
    nonce: str
    states: OrderedDict[int, ConnState] = field(default_factory=OrderedDict)
    next: int = 1


class BumpStamps:
    """The stream position of each room's newest "bump" event (rules.BUMP_EVENT_TYPES), kept
    from the event stream; a room not seen since start is looked up once."""

    def __init__(self, hs: Homeserver) -> None:
        self.rooms = hs.rooms
        self._stamps: dict[str, int] = {}
        # room -> position of its newest event published since start (any type). Every `pos` this
        # service hands out is after start, so a room missing here has had nothing new since any
        # of them: a long-poll's wake-up checks its rooms with a dict lookup, not a query.
        self.latest: dict[str, int] = {}
        hs.stream.subscribe(self._on_events)

    def _on_events(self, entries: list[tuple[int, Event]]) -> None:
        for pos, ev in entries:
            if pos > self.latest.get(ev.room_id, 0):
                self.latest[ev.room_id] = pos
            if ev.type in rules.BUMP_EVENT_TYPES and ev.room_id in self._stamps:
                self._stamps[ev.room_id] = max(self._stamps[ev.room_id], pos)

    def quiet_since(self, room_id: str, since: int) -> bool:
        """No event in the room after `since` (a position handed out by this process)."""
        return self.latest.get(room_id, since) <= since

    async def stamp(self, room_id: str, upto: int) -> int:
        known = self._stamps.get(room_id)
        if known is not None:
            return known
        recent = await self.rooms.timeline(room_id, upto, 20)
        found = next((pos for pos, ev in recent if ev.type in rules.BUMP_EVENT_TYPES),
                     recent[0][0] if recent else 0)
        found = max(found, self._stamps.get(room_id, 0))
        self._stamps[room_id] = found
        return found


class SlidingSync:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.rooms = hs.rooms
        self.stream = hs.stream
        self.bumps = BumpStamps(hs)
        self._conns: OrderedDict[tuple[str, str, str], Connection] = OrderedDict()
        self._skip_log = LogLimiter(60.0)

    # -- connections ----------------------------------------------------------------------------

    def _start(self, key: tuple[str, str, str]) -> Connection:
        conn = Connection(secrets.token_hex(4))
        self._conns[key] = conn
        self._conns.move_to_end(key)
        mine = [k for k in self._conns if k[0] == key[0]]
        for old in mine[:max(0, len(mine) - MAX_CONNECTIONS_PER_USER)]:
            del self._conns[old]
        while len(self._conns) > MAX_CONNECTIONS:
            self._conns.popitem(last=False)
        return conn

    def _resume(self, key: tuple[str, str, str], pos: str) -> tuple[Connection, ConnState]:
        nonce, number = rules.parse_pos(pos)
        conn = self._conns.get(key)
        if conn is None or conn.nonce != nonce or number not in conn.states:
            raise rules.unknown_pos()
        self._conns.move_to_end(key)
        return conn, conn.states[number]

    def _side_positions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stream in SIDE:
            source = self.hs.sync.source(stream)
            out[stream] = source.position() if source is not None else 0
        return out

    # -- the request ----------------------------------------------------------------------------

    async def sync(self, requester: Requester, pos: str | None, timeout_ms: int,
                   body: dict[str, Any]) -> dict[str, Any]:
        req = rules.parse_request(body)
        key = (requester.user_id, requester.device_id, req.conn_id)
        prev: ConnState | None = None
        if pos is None:
            conn = self._start(key)
        else:
            conn, prev = self._resume(key, pos)
        subscriptions = dict(prev.subscriptions) if prev else {}
        for room_id in req.unsubscribe:
            subscriptions.pop(room_id, None)
        subscriptions.update(req.subscriptions)
        if len(subscriptions) > rules.MAX_SUBSCRIPTIONS:  # sticky: bounded across requests too
            raise errors.invalid_param(f"At most {rules.MAX_SUBSCRIPTIONS} room subscriptions on a connection")
        extensions = dict(prev.extensions) if prev else {}
        extensions.update(req.extensions)
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            upto = self.stream.position
            side_upto = self._side_positions()
            answer, state, news = await self._answer(requester, req, prev, subscriptions, extensions,
                                                     upto, side_upto)
            remaining = deadline - time.monotonic()
            if prev is None or news or remaining <= 0 or self.stream.closed:
                break
            await self.stream.wait_for_signal(
                lambda: self.stream.position > upto or self._side_positions() != side_upto, remaining)
            if self.stream.position == upto and self._side_positions() == side_upto:
                break
        number = conn.next
        conn.next += 1
        conn.states[number] = state
        while len(conn.states) > STATES_KEPT:
            conn.states.popitem(last=False)
        answer["pos"] = f"{conn.nonce}-{number}"
        return answer

    async def _memberships(self, user_id: str) -> dict[str, tuple[str, int]]:
        """Joined and invited rooms; a joined room that cannot be loaded is left out (one log line
        a minute), as /sync v2 does, so one bad room does not fail every request."""
        out: dict[str, tuple[str, int]] = {}
        for room_id, entry in list(self.rooms.memberships.get(user_id, {}).items()):
            if entry[0] not in ("join", "invite"):
                continue
            if self.rooms.room_version(room_id) is not None:
                try:
                    await self.rooms.get_room(room_id)
                except Exception as exc:
                    self._skip_log.log(log, logging.ERROR, room_id, "sliding sync leaves out %s: %r", room_id, exc)
                    continue
            elif entry[0] == "join":
                continue
            out[room_id] = entry
        return out

    async def _facts(self, user_id: str, memberships: dict[str, tuple[str, int]],
                     need_spaces: bool, need_dms: bool) -> dict[str, RoomFacts]:
        """What the lists' filters look at; m.direct (a read) and space children only when a
        filter asks, since this runs on every wake-up of a long-poll."""
        dms = rules.dm_rooms(await self.hs.account_data.get_global_account_data(user_id, "m.direct")) \
            if need_dms else frozenset()
        parents: dict[str, set[str]] = {}
        if need_spaces:
            for space_id, (membership, _) in memberships.items():
                room = self.rooms.loaded_room(space_id)
                if membership != "join" or room is None:
                    continue
                for (event_type, child), ev in room.state.items():
                    if event_type == "m.space.child" and isinstance(ev.content.get("via"), list):
                        parents.setdefault(child, set()).add(space_id)
        facts: dict[str, RoomFacts] = {}
        for room_id, (membership, _) in memberships.items():
            room = self.rooms.loaded_room(room_id)
            room_type = None
            encrypted = False
            if room is not None:
                rtype = room.state_content("m.room.create").get("type")
                room_type = rtype if isinstance(rtype, str) else None
                encrypted = ("m.room.encryption", "") in room.state
            facts[room_id] = RoomFacts(room_id, membership, room_id in dms, encrypted, room_type,
                                       frozenset(parents.get(room_id, ())))
        return facts

    async def _answer(self, requester: Requester, req: SlidingRequest, prev: ConnState | None,
                      subscriptions: dict[str, RoomConfig], extensions: dict[str, dict[str, Any]],
                      upto: int, side_upto: dict[str, int]) -> tuple[dict[str, Any], ConnState, bool]:
        user_id = requester.user_id
        memberships = await self._memberships(user_id)
        need_spaces = any(lst.filters.spaces is not None for lst in req.lists.values())
        need_dms = any(lst.filters.is_dm is not None for lst in req.lists.values())
        facts = await self._facts(user_id, memberships, need_spaces, need_dms) if req.lists else {}
        stamps: dict[str, int] = {}
        for room_id, (membership, mpos) in memberships.items():
            if membership == "invite" or self.rooms.room_version(room_id) is None:
                stamps[room_id] = mpos
            else:
                stamps[room_id] = max(await self.bumps.stamp(room_id, upto), 0)
        wanted: dict[str, RoomConfig] = {}
        lists: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        for name, lst in req.lists.items():
            ordered = rules.order_rooms({r: stamps[r] for r in memberships if rules.matches(lst.filters, facts[r])})
            counts[name] = len(ordered)
            lists[name] = {"count": len(ordered)}
            for room_id in rules.in_ranges(ordered, lst.ranges):
                wanted[room_id] = wanted[room_id].merge(lst.config) if room_id in wanted else lst.config
        for room_id, config in subscriptions.items():
            if room_id in memberships:  # a user sees only rooms they are in (or invited to)
                wanted[room_id] = wanted[room_id].merge(config) if room_id in wanted else config
        sent = dict(prev.sent) if prev else {}
        unread = dict(prev.unread) if prev else {}
        read = self._read_rooms(user_id, prev, side_upto)
        rooms: dict[str, Any] = {}
        covered: dict[str, int] = {}  # room -> its timeline's first position in this answer
        for room_id, config in wanted.items():
            membership, _ = memberships[room_id]
            before = sent.get(room_id)
            if membership == "invite":
                if before is None or before[1] != "invite":
                    rooms[room_id] = self._invite_body(user_id, room_id, stamps[room_id])
                sent[room_id] = (upto, "invite", config)
                continue
            since = before[0] if before is not None and before[1] == "join" and before[2] == config else None
            body = await self._room_body(requester, room_id, config, since, upto, stamps[room_id], covered)
            if body is None and since is not None and (read is None or room_id in read):
                body = await self._counts_body(user_id, room_id, unread.get(room_id))
            if body is not None:
                rooms[room_id] = body
                unread[room_id] = (body["notification_count"], body["highlight_count"])
            sent[room_id] = (upto, "join", config)
        await self._left(requester, sent, memberships, rooms, upto)
        unread = {r: c for r, c in unread.items() if r in sent}
        joined_shown = [r for r in wanted if memberships[r][0] == "join"]
        ext_answer, ext_news = await self._extensions(requester, extensions, prev, side_upto, joined_shown)
        for name in rules.THREADS_EXTENSIONS:
            if extensions.get(name, {}).get("enabled"):
                threads = await self._threads(requester, name, extensions[name], prev, upto,
                                              [r for r, (m, _) in memberships.items() if m == "join"], covered)
                if threads is not None:
                    ext_answer[name] = threads
                    ext_news = True
        state = ConnState(upto, side_upto, sent, subscriptions, extensions, counts, unread)
        news = bool(rooms) or ext_news or (prev is not None and counts != prev.counts)
        answer: dict[str, Any] = {"lists": lists, "rooms": rooms, "extensions": ext_answer}
        return answer, state, news

    # -- rooms ----------------------------------------------------------------------------------

    def _read_rooms(self, user_id: str, prev: ConnState | None, side_upto: dict[str, int]) -> set[str] | None:
        """Rooms whose read position the user moved since the previous answer (push's read hints,
        the ones /sync v2's unread_notifications use); None when the hints no longer reach back."""
        if prev is None:
            return set()
        since = prev.side.get("push_rules", 0)
        if since >= side_upto["push_rules"]:
            return set()
        return self.hs.push.rooms_read_between(user_id, since, side_upto["push_rules"])

    async def _counts_body(self, user_id: str, room_id: str, before: tuple[int, int] | None) -> dict[str, Any] | None:
        """A quiet room whose counts moved (the user read it): only the new counts, MSC4186's
        fields that are absent are unchanged."""
        counts = await self.hs.push.unread_counts(user_id, room_id)
        if counts == before:
            return None
        return {"notification_count": counts[0], "highlight_count": counts[1]}

    async def _left(self, requester: Requester, sent: dict[str, tuple[int, str, RoomConfig]],
                    memberships: dict[str, tuple[str, int]], rooms: dict[str, Any], upto: int) -> None:
        """A room the connection had and the user has since left, been kicked or banned from, or
        whose invite was rejected: sent once more with the events up to the leave (so the client
        sees its own membership change), then forgotten by the connection."""
        mine = self.rooms.memberships.get(requester.user_id, {})
        for room_id, (since, _, config) in list(sent.items()):
            if room_id in memberships:
                continue
            entry = mine.get(room_id)
            del sent[room_id]
            if entry is None or entry[0] not in ("leave", "ban") or entry[1] <= since or entry[1] > upto \
                    or self.rooms.room_version(room_id) is None:
                continue
            limit = max(config.timeline_limit, 1)
            got = await self.rooms.timeline(room_id, entry[1], limit + 1, after=since)
            got.reverse()
            timeline = got[-limit:]
            rooms[room_id] = {
                "timeline": [self.rooms.serialize(ev, requester) for _, ev in timeline],
                "required_state": [], "limited": len(got) > limit, "num_live": len(timeline),
                "prev_batch": f"s{timeline[0][0] - 1 if timeline else entry[1]}", "bump_stamp": entry[1],
            }

    def _invite_body(self, user_id: str, room_id: str, stamp: int) -> dict[str, Any]:
        room = self.rooms.loaded_room(room_id)
        stripped: list[dict[str, Any]] | None = None
        if room is not None:
            invite = room.state.get(("m.room.member", user_id))
            if invite is not None and invite.membership == "invite":
                stripped = self.rooms.invite_state(room, invite)
        if stripped is None:
            remote = self.rooms.remote_invites.get((user_id, room_id))
            stripped = remote[2] if remote is not None else []
        body: dict[str, Any] = {"invite_state": stripped, "initial": True, "bump_stamp": stamp}
        if room is not None:
            name = rules.room_name(room.state)
            if name is not None:
                body["name"] = name
        return body

    async def _room_body(self, requester: Requester, room_id: str, config: RoomConfig, since: int | None,
                         upto: int, stamp: int, covered: dict[str, int] | None = None) -> dict[str, Any] | None:
        """A joined room's entry: everything asked for when the connection has not had the room
        (or asked with another config), else what is new since `since`; None when nothing is."""
        if since is not None and self.bumps.quiet_since(room_id, since):
            return None  # known from memory: no query for a room with nothing new
        room = await self.rooms.get_room(room_id)
        limit = config.timeline_limit
        scan = limit + 1 if since is None else max(limit, STATE_SCAN) + 1
        got = await self.rooms.timeline(room_id, upto, scan, after=since)
        if since is not None and not got:
            return None
        got.reverse()
        limited = len(got) > limit
        timeline = got[-limit:] if limit else []
        if timeline:
            timeline = (await self.rooms.read_access(requester, room_id)).visible(timeline)
            if covered is not None and timeline:
                covered[room_id] = timeline[0][0]
        senders = [ev.sender for _, ev in timeline]
        keys = rules.select_state(room.state, config.required_state, requester.user_id, senders)
        if since is not None:
            changed = {ev.event_id for _, ev in got if ev.is_state}
            lazy = {("m.room.member", s) for s in senders}
            keys = [k for k in keys if room.state[k].event_id in changed or k in lazy]
        user_id = requester.user_id
        body: dict[str, Any] = {
            "required_state": [self.rooms.serialize(room.state[k]) for k in keys],
            "timeline": [self.rooms.serialize(ev, requester) for _, ev in timeline],
            "limited": limited,
            "prev_batch": f"s{timeline[0][0] - 1 if timeline else upto}",
            "num_live": len(timeline) if since is not None else 0,
            "bump_stamp": stamp,
        }
        if since is None:
            body["initial"] = True
        name = rules.room_name(room.state)
        if name is not None:
            body["name"] = name
        elif since is None or any(k[0] == "m.room.member" for k in keys):
            body["heroes"] = rules.heroes(room.state, user_id)
        avatar = rules.room_avatar(room.state)
        if avatar is not None:
            body["avatar"] = avatar
        body["joined_count"], body["invited_count"] = rules.member_counts(room.state)
        body["notification_count"], body["highlight_count"] = await self.hs.push.unread_counts(user_id, room_id)
        await self.rooms.relations.bundle_rooms(requester, {room_id: body["timeline"]})
        return body

    # -- extensions -----------------------------------------------------------------------------

    async def _threads(self, requester: Requester, name: str, ext: dict[str, Any], prev: ConnState | None,
                       upto: int, joined: list[str], covered: dict[str, int]) -> dict[str, Any] | None:
        """MSC4360's threads extension: the threads of the joined rooms with replies since the
        connection's previous answer, one entry each (the newest first, at most `limit`), with a
        `prev_batch` for /relations when more than one reply was missed, and a top-level
        `prev_batch` for /thread_updates when threads were left out. None (the section left out)
        when there is nothing, and on the first answer with the extension on: there is no "last
        sync" to have missed anything since."""
        if prev is None or not prev.extensions.get(name, {}).get("enabled"):
            return None
        since = prev.events_pos
        limit = min(int(ext.get("limit") or rules.THREADS_LIMIT), rules.THREADS_LIMIT)
        relation_rooms = self.rooms.relations.persister.relation_rooms
        replies: dict[str, list[tuple[str, int]]] = {}
        cut = False
        for room_id in joined:
            if room_id not in relation_rooms or self.bumps.quiet_since(room_id, since):
                continue  # dict lookups: no query for a room without new threads
            rows = await relation_rows.thread_replies(self.hs.db, room_id, since, upto, THREAD_SCAN)
            if not rows:
                continue
            cut |= len(rows) == THREAD_SCAN
            access = await self.rooms.read_access(requester, room_id)
            replies[room_id] = [(root, pos) for root, pos, etype in rows if access.visible_at(pos, etype)]
        include_roots = ext.get("include_roots") is True
        chosen, more = rules.thread_updates(replies, covered, include_roots, limit)
        if not chosen:
            return None
        answer: dict[str, Any] = {"updates": await self._thread_entries(
            requester, [(u.room_id, u.root_id, u.latest, u.missed) for u in chosen], include_roots)}
        if more or cut:
            answer["prev_batch"] = rules.threads_token(chosen[-1].latest - 1, upto)
        return answer

    async def _thread_entries(self, requester: Requester, chosen: list[tuple[str, str, int, int]],
                              include_roots: bool) -> dict[str, dict[str, dict[str, Any]]]:
        """room -> root -> {thread_root (bundled), prev_batch} for (room, root, newest reply's
        position, replies) of updated threads."""
        updates: dict[str, dict[str, dict[str, Any]]] = {}
        roots: dict[str, list[dict[str, Any]]] = {}
        for room_id, root_id, latest, missed in chosen:
            entry: dict[str, Any] = {}
            if missed > 1:
                entry["prev_batch"] = f"s{latest - 1}"
            if include_roots:
                found = await self.rooms.fetch_event(root_id)
                access = await self.rooms.read_access(requester, room_id)
                if found is not None and found[0].room_id == room_id and access.event_visible(found[1], found[0]):
                    entry["thread_root"] = self.rooms.serialize(found[0], requester)
                    roots.setdefault(room_id, []).append(entry["thread_root"])
            updates.setdefault(room_id, {})[root_id] = entry
        await self.rooms.relations.bundle_rooms(requester, roots)
        return updates

    async def thread_updates(self, requester: Requester, from_token: str | None, to_token: str | None,
                             limit: int) -> dict[str, Any]:
        """MSC4360's /thread_updates: the user's joined rooms' updated threads backwards from
        `from` (a threads `prev_batch`/`next_batch`; the present without one) down to `to` (the
        `pos` of the sliding sync request whose answer gave the `prev_batch`, or an `s` token),
        each thread once, the most recently updated first, each with its bundled root."""
        if from_token is not None:
            before, ceiling = rules.parse_threads_token(from_token)
        else:
            before = ceiling = self.stream.position
        after = 0 if to_token is None else self._position_of(requester, to_token)
        relation_rooms = self.rooms.relations.persister.relation_rooms
        found: list[tuple[str, str, int, int]] = []
        # A room whose query was cut at limit + 1 rows may have more threads older than its last
        # row; those rows may also be ones the user may not see (left out below), so a page only
        # goes down to the newest such cut, and a next_batch leads on from there.
        complete_from = 0
        for room_id, (membership, _) in list(self.rooms.memberships.get(requester.user_id, {}).items()):
            if membership != "join" or room_id not in relation_rooms:
                continue
            rows = await relation_rows.updated_threads(self.hs.db, room_id, after, ceiling, before, limit + 1)
            if len(rows) > limit:
                complete_from = max(complete_from, rows[-1][1])
            if rows:
                access = await self.rooms.read_access(requester, room_id)
                found += [(room_id, root, latest, count) for root, latest, etype, count in rows
                          if access.visible_at(latest, etype)]
        found = [f for f in found if f[2] >= complete_from]
        found.sort(key=lambda t: (-t[2], t[0], t[1]))
        page = found[:limit]
        body: dict[str, Any] = {"chunk": await self._thread_entries(requester, page, True)}
        if len(found) > limit:
            body["next_batch"] = rules.threads_token(page[-1][2] - 1, ceiling)
        elif complete_from > after:
            body["next_batch"] = rules.threads_token((page[-1][2] if page else complete_from) - 1, ceiling)
        return body

    def _position_of(self, requester: Requester, token: str) -> int:
        """The events position a `to` names: a sliding sync `pos` of this device's connections
        (where its answer started from), or an `s<position>` token."""
        if token.startswith("s"):
            return max(params.stream_token(token) or 0, 0)
        nonce, number = rules.parse_pos(token)
        for (user_id, device_id, _), conn in self._conns.items():
            if (user_id, device_id) == (requester.user_id, requester.device_id) and conn.nonce == nonce \
                    and number in conn.states:
                return conn.states[number].events_pos
        raise rules.unknown_pos()

    async def _extensions(self, requester: Requester, extensions: dict[str, dict[str, Any]],
                          prev: ConnState | None, side_upto: dict[str, int],
                          shown_rooms: list[str]) -> tuple[dict[str, Any], bool]:
        """Each enabled extension through its /sync source, from where this connection left it
        (0, everything current, when the extension is new to the connection)."""
        out_ext: dict[str, Any] = {}
        news = False

        def enabled(name: str) -> bool:
            return bool(extensions.get(name, {}).get("enabled"))

        def since_of(name: str, stream: str) -> int:
            if prev is None or not prev.extensions.get(name, {}).get("enabled"):
                return 0
            return min(prev.side.get(stream, 0), side_upto[stream])

        async def run(stream: str, since: int, rooms: list[str]) -> SyncOutput:
            out = SyncOutput()
            source = self.hs.sync.source(stream)
            if source is not None and (since == 0 or since < side_upto[stream]):
                ctx = SyncContext(requester, rooms, since == 0, False, {})
                await source.collect(ctx, since, side_upto[stream], out)
            return out

        if enabled("to_device"):
            raw = extensions["to_device"].get("since")
            since = int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 16 else since_of("to_device", "to_device")
            since = min(since, side_upto["to_device"])
            out = await run("to_device", since, [])
            events = out.top.get("to_device", [])
            out_ext["to_device"] = {"next_batch": str(side_upto["to_device"]), "events": events}
            news |= bool(events)
        if enabled("e2ee"):
            out = await run("device_lists", since_of("e2ee", "device_lists"), [])
            source = self.hs.sync.source("device_lists")
            if source is not None:
                await source.every_answer(SyncContext(requester, [], prev is None, False, {}), out)
            lists = out.top_fields.get("device_lists") or {"changed": [], "left": []}
            out_ext["e2ee"] = {
                "device_lists": lists,
                "device_one_time_keys_count": out.top_fields.get("device_one_time_keys_count", {}),
                "device_unused_fallback_key_types": out.top_fields.get("device_unused_fallback_key_types", []),
            }
            news |= bool(lists.get("changed") or lists.get("left"))
        if enabled("account_data"):
            out = await run("account_data", since_of("account_data", "account_data"), shown_rooms)
            rules_out = await run("push_rules", since_of("account_data", "push_rules"), [])
            global_events = rules_out.top.get("account_data", []) + out.top.get("account_data", [])
            per_room = {r: s["account_data"] for r, s in out.rooms.items() if s.get("account_data")}
            out_ext["account_data"] = {"global": global_events, "rooms": per_room}
            news |= bool(global_events or per_room)
        for name in ("receipts", "typing"):
            if enabled(name):
                out = await run(name, since_of(name, name), shown_rooms)
                kind = "m.receipt" if name == "receipts" else "m.typing"
                by_room = {r: ev for r, s in out.rooms.items() for ev in s.get("ephemeral", []) if ev.get("type") == kind}
                out_ext[name] = {"rooms": by_room}
                news |= bool(by_room)
        return out_ext, news
