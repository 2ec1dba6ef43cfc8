"""Fan-out: which session gets which message when a room event is committed. Pure.

`FanOut` is handed the broker's tables as data, by reference (the sessions, the subscription
index, the keys of the sessions online, the topic rules, the deny rules, the broker's own
publishes being stored, by event id) and a membership lookup the core answers
(`Rooms.is_joined`); the time comes in as arguments. It says, per session, the `Outgoing`
message a committed event becomes; the broker (`broker.py`) delivers or queues them. No
sockets, no database, no clock: tests/test_mqtt_fanout.py builds the tables by hand.

This is the hot path of every publish with a subscriber: no awaits, and nothing allocated for a
session that gets nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Mapping

from matrix_core.events import Event

from .constants import MQTT_5
from .deny import DenyRules
from .messages import matrix_event_payload, parse_mqtt
from .packets import NO_PROPERTIES, Publish, Subscription
from .routing import MESSAGE_MSGTYPE, RETAINED_TYPE, TopicRules
from .session import Outgoing, SessionState
from .subscriptions import SubscriptionIndex
from .topics import parse_shared_subscription, topic_matches

#: msgtypes an MQTT publish kept in the media repository is sent as (messages.media_message_content)
MEDIA_MSGTYPES = frozenset({"m.image", "m.file"})


def _is_media_msgtype(msgtype: Any) -> bool:
    """m.image / m.file (anything else, a list included, is not: content is what a sender wrote)."""
    return type(msgtype) is str and msgtype in MEDIA_MSGTYPES


Targets = list[tuple[str, Outgoing]]  # (session key, message for that session)
IsJoined = Callable[[str, str], bool]  # (user id, room id) -> whether the user is joined
StateKey = tuple[str, str]


class OwnPublish:
    """A PUBLISH of one of our clients being stored as a room event, registered under the event
    id the core gave back for it (the handle): its fan-out reuses the exact bytes and honours No
    Local, without decoding the content again."""

    __slots__ = ("publish", "session_key")

    def __init__(self, publish: Publish, session_key: str) -> None:
        self.publish = publish
        self.session_key = session_key


class FanOut:
    """The fan-out over one broker's tables (each read at call time, never copied)."""

    __slots__ = ("sessions", "index", "online", "rules", "deny", "is_joined", "own", "blobs")

    def __init__(self, sessions: Mapping[str, SessionState], index: SubscriptionIndex, online: Collection[str],
                 rules: TopicRules, deny: DenyRules, is_joined: IsJoined, own: Mapping[str, OwnPublish],
                 blobs: Mapping[str, bytes] | None = None) -> None:
        self.sessions = sessions
        self.index = index
        self.online = online
        self.rules = rules
        self.deny = deny
        self.is_joined = is_joined
        self.own = own
        # mxc URL -> bytes of payloads kept in the media repository, read by the broker before
        # it asks (fan-out stays synchronous); our own publishes never need it (`own`)
        self.blobs: Mapping[str, bytes] = blobs if blobs is not None else {}

    def messages_for(self, pos: int, event: Event, wall_ms: float, now: float, only: str | None = None) -> Targets:
        """Per session, the message (if any) a committed event becomes. `wall_ms`: the time now
        (ms since the epoch), for message expiry; `now`: the monotonic time its deadlines count
        from. `only`: just this session (a replay after a restart)."""
        room_id = event.room_id
        etype = event.type
        content = event.content
        origin = ""
        retain = False
        props: Any
        if etype == "m.room.message" and (content.get("msgtype") == MESSAGE_MSGTYPE or (
                "mqtt" in content and _is_media_msgtype(content.get("msgtype")))):
            own = self.own.get(event.event_id)
            if own is not None:
                pub = own.publish
                topic, payload, qos, props, origin = pub.topic, pub.payload, pub.qos, pub.properties, own.session_key
            else:
                parsed = parse_mqtt(content.get("mqtt"), self.blobs.get)
                if parsed is None and _is_media_msgtype(content.get("msgtype")):
                    return []  # its bytes could not be read back: nothing rather than a stand-in
                if parsed is None or self.rules.resolve(parsed[0]) != room_id:
                    parsed = None
                if parsed is None:
                    return self._generic(pos, event, wall_ms, now, only)
                topic, payload, qos, props = parsed
        elif etype == RETAINED_TYPE and event.is_state:
            topic = event.state_key or ""
            if self.rules.resolve(topic) != room_id:
                return []
            retain = True
            own = self.own.get(event.event_id)
            if own is not None:
                pub = own.publish
                payload, qos, props, origin = pub.payload, pub.qos, pub.properties, own.session_key
            elif not content:
                payload, qos, props = b"", 0, {}
            else:
                parsed = parse_mqtt(content, self.blobs.get)
                if parsed is None or parsed[0] != topic:
                    return []
                _, payload, qos, props = parsed
        elif event.is_state:
            return []
        else:
            return self._generic(pos, event, wall_ms, now, only)
        return self.targets(room_id, topic, payload, qos, retain, props, pos, origin, event.origin_server_ts,
                            wall_ms, now, only)

    def _generic(self, pos: int, event: Event, wall_ms: float, now: float, only: str | None) -> Targets:
        """A room event that did not come from MQTT (a text from Element): JSON on the room's topic."""
        if event.type == "m.room.redaction":
            return []
        topic = self.rules.topic_of_room(event.room_id)
        if topic is None:
            return []
        payload = matrix_event_payload(event.event_id, event.sender, event.type, event.content,
                                       event.origin_server_ts)
        return self.targets(event.room_id, topic, payload, 1, False, {"content_type": "application/json"},
                            pos, "", event.origin_server_ts, wall_ms, now, only)

    def targets(self, room_id: str, topic: str, payload: bytes, qos: int, retain: bool, props: Any,
                pos: int, origin: str, ts: int, wall_ms: float, now: float, only: str | None) -> Targets:
        """The sessions joined to the room with a subscription matching `topic` (one member per
        share group, online ones first), each with its message. `origin`: the publishing session
        (No Local)."""
        out: Targets = []
        if self.deny and self.deny.hides(topic):
            return out
        is_joined = self.is_joined
        expires_at = None
        if props and "message_expiry_interval" in props:
            remaining = props["message_expiry_interval"] - max(0, (wall_ms - ts) / 1000)
            if remaining <= 0:
                return []
            expires_at = now + remaining
            props = {k: v for k, v in props.items() if k != "message_expiry_interval"}
        sessions = self.sessions
        index = self.index
        for key, subs in index.match(topic).items():
            if only is not None and key != only:
                continue
            session = sessions.get(key)
            if session is None:
                continue
            if not is_joined(session.user_id, room_id):
                continue
            granted = -1
            rap = False
            sub_ids: list[int] = []
            for sub in subs:
                if sub.no_local and key == origin:
                    continue
                if sub.qos > granted:
                    granted = sub.qos
                rap = rap or sub.retain_as_published
                sid = session.subscription_ids.get(sub.topic_filter)
                if sid:
                    sub_ids.append(sid)
            if granted < 0:
                continue
            out.append((key, outgoing(session, topic, payload, min(qos, granted), retain and rap, props,
                                      sub_ids, pos, expires_at)))
        for group, members in index.match_shared(topic):
            eligible = []
            for key in members:
                session = sessions.get(key)
                if session is None or (only is not None and key != only):
                    continue
                if is_joined(session.user_id, room_id):
                    eligible.append(key)
            online = [k for k in eligible if k in self.online]
            if not (online or eligible):
                continue
            key = index.pick(group, online or eligible)
            session = sessions[key]
            sub = members[key]
            sid = session.subscription_ids.get(sub.topic_filter)
            out.append((key, outgoing(session, topic, payload, min(qos, sub.qos), False, props,
                                      [sid] if sid else [], pos, expires_at)))
        return out

    def retained(self, session: SessionState, sub: Subscription, room_id: str, state: Mapping[StateKey, Event],
                 wall_ms: float, now: float) -> list[Outgoing]:
        """The retained messages (retained state of a room the session's user is joined to) a new
        subscription gets; none for a shared subscription."""
        out: list[Outgoing] = []
        if parse_shared_subscription(sub.topic_filter) is not None:
            return out
        sid = session.subscription_ids.get(sub.topic_filter)
        for (etype, state_key), event in list(state.items()):
            if etype != RETAINED_TYPE or not event.content or not topic_matches(sub.topic_filter, state_key):
                continue
            if self.deny and self.deny.hides(state_key):
                continue
            if self.rules.resolve(state_key) != room_id:
                continue
            parsed = parse_mqtt(event.content, self.blobs.get)
            if parsed is None or parsed[0] != state_key:
                continue
            topic, payload, qos, props = parsed
            expires_at = None
            if "message_expiry_interval" in props:
                remaining = props.pop("message_expiry_interval") - (wall_ms - event.origin_server_ts) / 1000
                if remaining <= 0:
                    continue
                expires_at = now + remaining
            out.append(outgoing(session, topic, payload, min(qos, sub.qos), True, props,
                                [sid] if sid else [], 0, expires_at))
        return out


def outgoing(session: SessionState, topic: str, payload: bytes, qos: int, retain: bool, props: Any,
             sub_ids: list[int], pos: int, expires_at: float | None) -> Outgoing:
    """The message as this session receives it: properties only for MQTT 5, with its
    subscription identifiers."""
    if session.protocol_level != MQTT_5:
        props = NO_PROPERTIES
    elif sub_ids:
        props = dict(props or {})
        props["subscription_identifier"] = sub_ids
    return Outgoing(topic, payload, qos, retain, props or NO_PROPERTIES, pos, expires_at)
