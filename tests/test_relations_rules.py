"""The relation rules (matrix_core/relations.py), pure: what counts as a relation, which children
a bundled aggregation counts and shows, which edit wins; and the index row an event gets."""
from __future__ import annotations

from typing import Any

import pytest

from matrix_core.relations import (
    Child,
    Parent,
    aggregate,
    bundle_json,
    context_split,
    edit_shape_ok,
    lazy_members,
    relation_of,
    thread_start_error,
    valid_replacement,
)

ME, OTHER = "@me:hub", "@other:hub"


def parent(**kw: Any) -> Parent:
    facts: dict[str, Any] = dict(event_id="$p", type="m.room.message", sender=ME, is_state=False, rel_type=None,
                                 redacted=False)
    facts.update(kw)
    return Parent(**facts)


def child(eid: str, rel: str, pos: int, sender: str = ME, ts: int = 0, etype: str = "m.room.message",
          edit_ok: bool = True, parent_id: str = "$p") -> Child:
    return Child(eid, parent_id, rel, pos, sender, etype, ts, edit_ok)


def everything(_: Child) -> bool:
    return True


def test_relation_of_reads_only_well_formed_relations() -> None:
    assert relation_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}).rel_type == "m.thread"
    reaction = relation_of({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}})
    assert reaction is not None and reaction.key == "👍" and reaction.parent_id == "$e"
    assert relation_of({"m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}}) is None  # a reply: no rel_type
    for bad in ({}, {"m.relates_to": "x"}, {"m.relates_to": {"rel_type": 1, "event_id": "$e"}},
                {"m.relates_to": {"rel_type": "m.thread"}}, {"m.relates_to": {"rel_type": "", "event_id": "$e"}},
                {"m.relates_to": {"rel_type": "m.thread", "event_id": "$" + "x" * 300}}, "not content"):
        assert relation_of(bad) is None, bad
    # only annotations carry a key
    assert relation_of({"m.relates_to": {"rel_type": "m.reference", "event_id": "$e", "key": "k"}}).key is None


def test_edit_shape() -> None:
    assert edit_shape_ok("m.room.message", False, {"m.new_content": {"body": "x"}})
    assert not edit_shape_ok("m.room.message", False, {"body": "* x"}), "m.new_content is required"
    assert not edit_shape_ok("m.room.message", True, {"m.new_content": {}}), "state events cannot edit"
    assert edit_shape_ok("m.room.encrypted", False, {"ciphertext": "..."}), "the new content is encrypted"


def test_the_most_recent_valid_edit_wins() -> None:
    kids = [child("$a", "m.replace", 2, ts=10), child("$c", "m.replace", 3, ts=20), child("$b", "m.replace", 4, ts=20),
            child("$late_but_old", "m.replace", 5, ts=5)]
    # greatest origin_server_ts; equal timestamps: the lexicographically largest event id
    assert aggregate(parent(), kids, ME, everything).replace == "$c"


@pytest.mark.parametrize("bad_edit,bad_parent", [
    (dict(sender=OTHER), {}),                       # someone else's message
    (dict(etype="m.sticker"), {}),                  # a change of type
    (dict(edit_ok=False), {}),                      # no m.new_content, or a state event
    ({}, dict(is_state=True)),                      # state events cannot be edited
    ({}, dict(rel_type="m.replace")),               # an edit cannot be edited
    ({}, dict(redacted=True)),                      # a redacted original shows no edit
])
def test_invalid_edits_are_not_bundled(bad_edit: dict[str, Any], bad_parent: dict[str, Any]) -> None:
    edit = child("$e", "m.replace", 2, **bad_edit)
    assert aggregate(parent(**bad_parent), [edit], ME, everything).replace is None
    if not bad_parent:
        assert not valid_replacement(parent(), edit)


def test_thread_summary_counts_what_the_reader_may_see() -> None:
    kids = [child("$t1", "m.thread", 2, sender=OTHER), child("$t2", "m.thread", 5, sender=ME),
            child("$t3", "m.thread", 7, sender=OTHER)]
    agg = aggregate(parent(sender=OTHER), kids, ME, everything)
    assert (agg.thread_latest, agg.thread_count, agg.participated) == ("$t3", 3, True)
    # a reader who may see only up to position 5 (they left there): the later reply is neither
    # the latest nor counted
    agg = aggregate(parent(sender=OTHER), kids, ME, lambda c: c.pos <= 5)
    assert (agg.thread_latest, agg.thread_count) == ("$t2", 2)
    # participation: the root's sender, or a reply's
    assert aggregate(parent(sender=OTHER), kids[:1], ME, everything).participated is False
    assert aggregate(parent(sender=ME), kids[:1], ME, everything).participated is True


def test_redacted_parent_keeps_its_thread_and_references_but_not_its_edit() -> None:
    kids = [child("$t", "m.thread", 2), child("$r", "m.reference", 3), child("$e", "m.replace", 4)]
    agg = aggregate(parent(redacted=True), kids, ME, everything)
    assert (agg.thread_latest, agg.references, agg.replace) == ("$t", ["$r"], None)


def test_no_bundles_for_state_events_annotations_or_threads_off_relations() -> None:
    kids = [child("$t", "m.thread", 2), child("$x", "m.annotation", 3)]
    assert aggregate(parent(is_state=True), kids, ME, everything).is_empty()
    assert aggregate(parent(), [kids[1]], ME, everything).is_empty(), "reactions are not aggregated since v1.7"
    assert aggregate(parent(rel_type="m.thread"), [kids[0]], ME, everything).is_empty(), "threads do not nest"
    assert aggregate(parent(), [child("$other", "m.thread", 2, parent_id="$q")], ME, everything).is_empty()


def test_bundle_json_shape() -> None:
    agg = aggregate(parent(), [child("$t", "m.thread", 2), child("$e", "m.replace", 3, ts=1),
                               child("$r2", "m.reference", 9), child("$r1", "m.reference", 4)], ME, everything)
    shown = {"$t": {"event_id": "$t"}, "$e": {"event_id": "$e"}}
    assert bundle_json(agg, shown) == {
        "m.thread": {"latest_event": {"event_id": "$t"}, "count": 1, "current_user_participated": True},
        "m.replace": {"event_id": "$e"},
        "m.reference": {"chunk": [{"event_id": "$r1"}, {"event_id": "$r2"}]},
    }
    assert bundle_json(agg, {}) == {"m.reference": {"chunk": [{"event_id": "$r1"}, {"event_id": "$r2"}]}}, \
        "an event that could not be fetched (purged) is left out, not shown as null"


def test_parent_facts_from_client_events() -> None:
    facts = Parent.from_client_event({"event_id": "$x", "type": "m.room.message", "sender": ME,
                                      "content": {"m.relates_to": {"rel_type": "m.replace", "event_id": "$y"}},
                                      "unsigned": {"redacted_because": {}}})
    assert (facts.rel_type, facts.redacted, facts.is_state) == ("m.replace", True, False)
    assert Parent.from_client_event({"event_id": "$s", "type": "m.room.topic", "sender": ME, "state_key": "",
                                     "content": {}}).is_state


def test_threads_do_not_start_from_relations() -> None:
    assert thread_start_error({"body": "root"}) is None
    assert thread_start_error({"m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}}) is None, "a reply may be a root"
    assert thread_start_error({"m.relates_to": {"rel_type": "m.thread", "event_id": "$e"}})


def test_context_split_and_lazy_members() -> None:
    assert [context_split(n) for n in (0, 1, 2, 5, 10)] == [(0, 0), (0, 1), (1, 1), (2, 3), (5, 5)]
    state = [{"type": "m.room.member", "state_key": ME}, {"type": "m.room.member", "state_key": OTHER},
             {"type": "m.room.create", "state_key": ""}]
    assert lazy_members(state, {OTHER}) == state[1:]


def test_index_row_only_for_relations() -> None:
    """The store's row for an event being placed: None without a relation (the send path's case)."""
    from matrix_core.events import Event
    from matrix_core.room_versions import KNOWN_ROOM_VERSIONS
    from matrix_core.store.relations import relation_json, row_for

    version = KNOWN_ROOM_VERSIONS["10"]

    def ev(content: dict[str, Any], **extra: Any) -> Event:
        return Event({"type": "m.room.message", "room_id": "!r:hub", "sender": ME, "content": content,
                      "origin_server_ts": 7, **extra}, "$c", version)

    assert row_for(3, ev({"body": "21.5"})) is None
    assert row_for(3, ev({"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}})) is None
    edit = {"m.new_content": {"body": "y"}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$p"}}
    assert row_for(3, ev(edit)) == ("$c", "$p", "m.replace", "!r:hub", 3, ME, "m.room.message", 7, None, 1)
    assert row_for(3, ev(edit, state_key=""))[-1] == 0
    # the backfill's SQL function reads the same from stored JSON (text or the packed form)
    from matrix_core.store.event_json import pack
    stored = pack(b'{"content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$p","key":"k"}},'
                  b'"type":"m.reaction"}')
    assert relation_json(stored, 0) == '["$p", "m.annotation", "k", 0]'
    assert relation_json(pack(b'{"content":{"body":"x"},"type":"m.room.message"}'), 0) is None
    # a row that does not decode is skipped: one bad row must not stop the migration (and the hub)
    assert relation_json('{"content": {"m.relates_to": trunc', 0) is None
    assert relation_json(b"\x07 m.relates_to", 0) is None
    assert relation_json('["m.relates_to"]', 0) is None
