"""The fan-out (frontends/mqtt/fanout.py) as the pure function it is: tables in, messages out, no
sockets, no database, no clock. Which session gets which message for a committed room event:
membership (asked of a lookup, as the core's `Rooms.is_joined` answers it), QoS downgrade, No
Local through the broker's own-publish handle, share groups, message expiry, MQTT 5 properties."""
from __future__ import annotations

import itertools
from typing import Any

from frontends.mqtt.deny import DenyRules
from frontends.mqtt.fanout import FanOut, OwnPublish
from frontends.mqtt.messages import message_content, publish_content
from frontends.mqtt.packets import NO_PROPERTIES, Publish, Subscription
from frontends.mqtt.routing import RETAINED_TYPE, Rule, TopicRules
from frontends.mqtt.session import SessionState
from frontends.mqtt.subscriptions import SubscriptionIndex
from matrix_core.events import Event
from matrix_core.room_versions import ROOM_V10

ROOM = "!garden:hub"
OTHER_ROOM = "!attic:hub"
TS = 1_700_000_000_000
_ids = itertools.count(1)


def event(type: str, content: dict[str, Any], state_key: str | None = None, room_id: str = ROOM,
          sender: str = "@alice:hub") -> Event:
    pdu: dict[str, Any] = {"type": type, "room_id": room_id, "sender": sender, "content": content,
                           "origin_server_ts": TS, "depth": 5, "prev_events": [], "auth_events": []}
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, f"$e{next(_ids)}", ROOM_V10)


def reading(topic: str, payload: bytes, qos: int = 1, props: Any = NO_PROPERTIES, room_id: str = ROOM) -> Event:
    return event("m.room.message", message_content(publish_content(topic, payload, qos, props)), room_id=room_id)


class Tables:
    """A broker's tables, built by hand."""

    def __init__(self, joined: set[tuple[str, str]] | None = None) -> None:
        self.sessions: dict[str, SessionState] = {}
        self.index = SubscriptionIndex()
        self.online: set[str] = set()
        self.rules = TopicRules([Rule("garden/#", ROOM, True), Rule("attic/#", OTHER_ROOM, True)])
        self.joined = joined if joined is not None else set()
        self.own: dict[str, OwnPublish] = {}
        self.fanout = FanOut(self.sessions, self.index, self.online, self.rules, DenyRules(["garden/secret"]),
                             lambda user, room: (user, room) in self.joined, self.own)

    def session(self, key: str, user: str, *subs: Subscription, level: int = 5, online: bool = True,
                ids: dict[str, int] | None = None) -> SessionState:
        session = SessionState(key, user, level, 0)
        for sub in subs:
            session.subscriptions[sub.topic_filter] = sub
            self.index.add(key, sub)
        session.subscription_ids.update(ids or {})
        self.sessions[key] = session
        if online:
            self.online.add(key)
        return session

    def out(self, ev: Event, wall_ms: float = TS, now: float = 100.0, only: str | None = None) -> dict[str, Any]:
        return dict(self.fanout.messages_for(7, ev, wall_ms, now, only))


def test_only_sessions_of_joined_users_get_a_message_at_the_lower_qos() -> None:
    t = Tables(joined={("@bob:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/+", 0))
    t.session("eve", "@eve:hub", Subscription("#", 2))  # subscribed to everything, not in the room
    out = t.out(reading("garden/temp", b"21.5", qos=1))
    assert list(out) == ["bob"]
    message = out["bob"]
    assert (message.topic, message.payload, message.qos, message.position) == ("garden/temp", b"21.5", 0, 7)


def test_membership_is_asked_of_the_lookup_at_call_time() -> None:
    t = Tables()
    t.session("bob", "@bob:hub", Subscription("garden/temp", 1))
    ev = reading("garden/temp", b"1")
    assert t.out(ev) == {}
    t.joined.add(("@bob:hub", ROOM))
    assert list(t.out(ev)) == ["bob"]


def test_own_publish_is_found_by_event_id_and_no_local_skips_its_session() -> None:
    t = Tables(joined={("@alice:hub", ROOM), ("@bob:hub", ROOM)})
    t.session("alice phone", "@alice:hub", Subscription("garden/#", 1, no_local=True))
    t.session("bob", "@bob:hub", Subscription("garden/#", 1))
    ev = reading("garden/temp", b"stored copy")
    publish = Publish("garden/temp", b"as sent", 1, False, False, 5, {"content_type": "text/plain"})
    t.own[ev.event_id] = OwnPublish(publish, "alice phone")
    out = t.out(ev)
    assert list(out) == ["bob"]
    assert out["bob"].payload == b"as sent"  # the publish's own bytes, not the content decoded again
    assert out["bob"].properties == {"content_type": "text/plain"}
    del t.own[ev.event_id]  # without the handle: decoded from the content, No Local cannot apply
    out = t.out(ev)
    assert sorted(out) == ["alice phone", "bob"] and out["bob"].payload == b"stored copy"


def test_a_share_group_gets_one_copy_online_members_first() -> None:
    t = Tables(joined={("@bob:hub", ROOM), ("@carol:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("$share/g/garden/#", 1), online=False)
    t.session("carol", "@carol:hub", Subscription("$share/g/garden/#", 1))
    for _ in range(3):
        assert list(t.out(reading("garden/temp", b"1"))) == ["carol"]
    t.online.discard("carol")
    picked = [next(iter(t.out(reading("garden/temp", b"1")))) for _ in range(2)]
    assert sorted(picked) == ["bob", "carol"]  # nobody online: round-robin over the members


def test_message_expiry_counts_from_the_event_time() -> None:
    t = Tables(joined={("@bob:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/#", 1))
    ev = reading("garden/temp", b"1", props={"message_expiry_interval": 60})
    message = t.out(ev, wall_ms=TS + 20_000, now=500.0)["bob"]
    assert message.expires_at == 540.0
    assert "message_expiry_interval" not in message.properties
    assert t.out(ev, wall_ms=TS + 61_000) == {}


def test_properties_only_for_mqtt5_with_subscription_identifiers() -> None:
    t = Tables(joined={("@bob:hub", ROOM), ("@old:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/#", 1), ids={"garden/#": 42})
    t.session("old", "@old:hub", Subscription("garden/#", 1), level=4)
    out = t.out(reading("garden/temp", b"1", props={"content_type": "text/plain"}))
    assert out["bob"].properties == {"content_type": "text/plain", "subscription_identifier": [42]}
    assert out["old"].properties is NO_PROPERTIES


def test_denied_topics_reach_nobody_and_misrouted_ones_stay_in_their_room() -> None:
    t = Tables(joined={("@bob:hub", ROOM), ("@bob:hub", OTHER_ROOM)})
    t.session("bob", "@bob:hub", Subscription("#", 1))
    assert t.out(reading("garden/secret", b"1")) == {}
    # an MQTT message in a room its topic is not routed to is not replayed on that topic: it goes
    # out as any other room event would, as JSON on the room's own topic
    ev = reading("attic/light", b"on")
    message = t.out(ev)["bob"]
    assert message.topic == "garden" and ev.event_id.encode() in message.payload


def test_a_text_from_a_matrix_client_goes_out_as_json_on_the_rooms_topic() -> None:
    t = Tables(joined={("@bob:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden", 2))
    ev = event("m.room.message", {"msgtype": "m.text", "body": "hello"}, sender="@carol:hub")
    message = t.out(ev)["bob"]
    assert (message.topic, message.qos) == ("garden", 1)
    assert b'"body":"hello"' in message.payload and ev.event_id.encode() in message.payload
    assert t.out(event("m.room.redaction", {"redacts": ev.event_id})) == {}


def test_retained_state_is_a_retained_message_and_only_the_replayed_session_gets_it() -> None:
    t = Tables(joined={("@bob:hub", ROOM), ("@carol:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/#", 1, retain_as_published=True))
    t.session("carol", "@carol:hub", Subscription("garden/#", 1))
    ev = event(RETAINED_TYPE, publish_content("garden/door", b"open", 1, NO_PROPERTIES), state_key="garden/door")
    out = t.out(ev)
    assert out["bob"].retain is True and out["carol"].retain is False  # Retain As Published
    assert list(t.out(ev, only="carol")) == ["carol"]


def test_retained_for_a_new_subscription() -> None:
    t = Tables(joined={("@bob:hub", ROOM)})
    sub = Subscription("garden/+", 1)
    session = t.session("bob", "@bob:hub", sub, ids={"garden/+": 3})
    door = event(RETAINED_TYPE, publish_content("garden/door", b"open", 2, NO_PROPERTIES), state_key="garden/door")
    cleared = event(RETAINED_TYPE, {}, state_key="garden/gate")
    deep = event(RETAINED_TYPE, publish_content("garden/a/b", b"x", 1, NO_PROPERTIES), state_key="garden/a/b")
    state = {(RETAINED_TYPE, "garden/door"): door, (RETAINED_TYPE, "garden/gate"): cleared,
             (RETAINED_TYPE, "garden/a/b"): deep}
    out = t.fanout.retained(session, sub, ROOM, state, TS, 0.0)
    assert [(m.topic, m.payload, m.qos, m.retain, m.properties) for m in out] == [
        ("garden/door", b"open", 1, True, {"subscription_identifier": [3]})]
    assert t.fanout.retained(session, Subscription("$share/g/garden/+", 1), ROOM, state, TS, 0.0) == []
