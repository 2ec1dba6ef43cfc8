"""Event relationships (client-server API "Forming relationships between events"): what an event's
`m.relates_to` says, which children count towards a parent's bundled aggregation, and the bundle
itself. Pure: the service (service/relations.py) fetches the rows and events, this decides.

The rules kept here, from the spec (v1.10, with the v1.7 changes to edits and reactions):

- a relation is `content["m.relates_to"]` with string `rel_type` and `event_id` (a rich reply,
  `m.in_reply_to` alone, has no `rel_type` and is not a relation for these purposes);
- bundled aggregations (`unsigned["m.relations"]`) exist for `m.thread` (latest event, count,
  whether the reader participated), `m.replace` (the most recent *valid* edit, as a whole event:
  the original's content is left as it is) and `m.reference` (a chunk of event ids);
  `m.annotation` is not aggregated by the server since v1.7; state events get no bundle;
- an edit is valid when original and edit share sender and type, neither is a state event, the
  original is not itself an edit, and the edit carries an `m.new_content` object (unless it is
  encrypted: then that is inside the ciphertext); the most recent is the greatest
  (origin_server_ts, event_id); a redacted original gets no `m.replace` bundle;
- a thread cannot start from an event that itself has a `rel_type` (the server refuses to send
  one, and ignores such threads arriving over federation);
- a redacted child no longer relates to anything (its `m.relates_to` is gone); a redacted parent
  keeps its children.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

THREAD = "m.thread"
REPLACE = "m.replace"
ANNOTATION = "m.annotation"
REFERENCE = "m.reference"
# The rel_types the server bundles, in the order their bundles are built.
BUNDLED = (THREAD, REPLACE, REFERENCE)

ENCRYPTED = "m.room.encrypted"
MAX_ID = 255  # an event id or rel_type longer than this is not one (params.MAX_ID_LENGTH)

# recurse=true on /relations: how many levels of relationships are followed (the spec
# recommends at least 3).
RECURSION_DEPTH = 3


@dataclass(frozen=True, slots=True)
class Relation:
    """What one event's `m.relates_to` says about its parent."""
    parent_id: str
    rel_type: str
    key: str | None = None  # an annotation's key (the reaction's emoji)


def relation_of(content: Any) -> Relation | None:
    """The relation an event content declares, or None (no `m.relates_to`, a reply without
    `rel_type`, or a malformed one: "relationships which don't match the schema are ignored")."""
    if not isinstance(content, dict):
        return None
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    rel_type, parent = relates.get("rel_type"), relates.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str) or not rel_type or not parent:
        return None
    if len(rel_type) > MAX_ID or len(parent) > MAX_ID:
        return None
    key = relates.get("key") if rel_type == ANNOTATION else None
    return Relation(parent, rel_type, key if isinstance(key, str) else None)


def edit_shape_ok(event_type: str, is_state: bool, content: Any) -> bool:
    """The half of an edit's validity that depends on the edit alone: not a state event, and an
    `m.new_content` object (which an encrypted edit carries inside its ciphertext)."""
    if is_state:
        return False
    if event_type == ENCRYPTED:
        return True
    return isinstance(content, dict) and isinstance(content.get("m.new_content"), dict)


def thread_start_error(parent_content: Any) -> str | None:
    """Why a thread may not start from this parent (None: it may): a thread root cannot itself
    be a child of a relationship, so threads never nest."""
    if relation_of(parent_content) is not None:
        return "Cannot start a thread from an event with a relation"
    return None


@dataclass(frozen=True, slots=True)
class Child:
    """One row of the relations index: an event that relates to a parent."""
    event_id: str
    parent_id: str
    rel_type: str
    pos: int
    sender: str
    type: str
    origin_server_ts: int
    edit_ok: bool  # edit_shape_ok held for it


@dataclass(frozen=True, slots=True)
class Parent:
    """The facts about a parent event its bundle depends on, read from its client form."""
    event_id: str
    type: str
    sender: str
    is_state: bool
    rel_type: str | None  # its own relation's type, if it is itself a child
    redacted: bool

    @classmethod
    def from_client_event(cls, event: dict[str, Any]) -> "Parent":
        relation = relation_of(event.get("content"))
        unsigned = event.get("unsigned")
        return cls(event["event_id"], event["type"], event["sender"], "state_key" in event,
                   relation.rel_type if relation is not None else None,
                   isinstance(unsigned, dict) and "redacted_because" in unsigned)


def valid_replacement(parent: Parent, child: Child) -> bool:
    """The spec's "Validity of replacement events" (the room was checked by the lookup)."""
    return (child.rel_type == REPLACE and child.edit_ok and child.sender == parent.sender
            and child.type == parent.type and not parent.is_state and parent.rel_type != REPLACE)


@dataclass(slots=True)
class Aggregation:
    """A parent's bundle before the events in it are fetched: ids and counts."""
    thread_latest: str | None = None
    thread_count: int = 0
    participated: bool = False
    replace: str | None = None
    references: list[str] = field(default_factory=list)

    def needed_events(self) -> list[str]:
        """The children whose whole events the bundle shows."""
        return [eid for eid in (self.thread_latest, self.replace) if eid is not None]

    def is_empty(self) -> bool:
        return self.thread_latest is None and self.replace is None and not self.references


def aggregate(parent: Parent, children: Iterable[Child], user_id: str,
              visible: Callable[[Child], bool]) -> Aggregation:
    """The bundle of `parent` for `user_id` from its (non-redacted) children; `visible` says
    which children the user may see (history visibility): others are neither counted nor shown.
    A state event gets no bundle."""
    agg = Aggregation()
    if parent.is_state:
        return agg
    latest_pos: int | None = None
    best_edit: tuple[int, str] | None = None
    references: list[tuple[int, str]] = []
    participated = False
    for child in children:
        if child.parent_id != parent.event_id:
            continue
        if child.rel_type == THREAD:
            if parent.rel_type is not None:
                continue  # not a valid thread root
            participated = participated or child.sender == user_id
            if not visible(child):
                continue
            agg.thread_count += 1
            if latest_pos is None or child.pos > latest_pos:
                latest_pos, agg.thread_latest = child.pos, child.event_id
        elif child.rel_type == REPLACE:
            if parent.redacted or not valid_replacement(parent, child) or not visible(child):
                continue
            rank = (child.origin_server_ts, child.event_id)
            if best_edit is None or rank > best_edit:
                best_edit = rank
        elif child.rel_type == REFERENCE:
            if visible(child):
                references.append((child.pos, child.event_id))
    if agg.thread_count:
        agg.participated = participated or parent.sender == user_id
    if best_edit is not None:
        agg.replace = best_edit[1]
    agg.references = [eid for _, eid in sorted(references)]
    return agg


def bundle_json(agg: Aggregation, events: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`unsigned["m.relations"]` for an aggregation, given the client form of the events it
    shows (a child missing from `events`, say purged, leaves its part out)."""
    out: dict[str, Any] = {}
    latest = events.get(agg.thread_latest) if agg.thread_latest is not None else None
    if latest is not None:
        out[THREAD] = {"latest_event": latest, "count": agg.thread_count,
                       "current_user_participated": agg.participated}
    edit = events.get(agg.replace) if agg.replace is not None else None
    if edit is not None:
        out[REPLACE] = edit
    if agg.references:
        out[REFERENCE] = {"chunk": [{"event_id": eid} for eid in agg.references]}
    return out


def context_split(limit: int) -> tuple[int, int]:
    """How /context shares `limit` between events before and after the event (as Synapse does:
    the smaller half before)."""
    before = limit // 2
    return before, limit - before


def lazy_members(state: Iterable[Any], senders: set[str]) -> list[Any]:
    """A lazy-loading filter's state: member events only for the senders of the events returned
    (items are client-form events)."""
    return [ev for ev in state if ev.get("type") != "m.room.member" or ev.get("state_key") in senders]
