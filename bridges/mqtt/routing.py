"""Which room a topic lives in, and which topic a room speaks on. Pure: no I/O, no clock.

Rules come from two places: the hub admin (`matrix-gateway mqtt map FILTER ROOM`, kept in the
`mqtt_rules` table) and rooms themselves (a `BINDING_TYPE` state event whose state key is the
topic filter, sent by anyone with the power to send that state event, e.g. a room admin in
Element). The most specific matching filter wins (see `specificity`); admin rules beat room
bindings of equal specificity. A topic no rule matches falls to the default rule: its first
`levels` levels name a room, found by its alias or created by the publisher (docs/mqtt.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .topics import topic_matches

# Event types (namespaced: these are not Matrix spec types).
MESSAGE_MSGTYPE = "org.matrix_gateway.mqtt"
BINDING_TYPE = "org.matrix_gateway.mqtt.binding"
RETAINED_TYPE = "org.matrix_gateway.mqtt.retained"

ALIAS_PREFIX = "mqtt/"
_ALIAS_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
MAX_ALIAS_LOCALPART = 200


@dataclass(frozen=True, slots=True)
class Rule:
    topic_filter: str
    room_id: str
    admin: bool  # set with the CLI (True) or bound from inside the room (False)


def specificity(rule: Rule) -> tuple[int, int, int, int, str, str]:
    """Sort key, most specific first: no wildcard at all; more literal levels before the first
    wildcard; no '#'; fewer '+'; admin rules; then by filter and room for a stable order."""
    levels = rule.topic_filter.split("/")
    literal = 0
    for level in levels:
        if level in ("+", "#"):
            break
        literal += 1
    wild = literal != len(levels)
    return (int(wild), -literal, int("#" in levels), levels.count("+"), int(not rule.admin),
            rule.topic_filter + "\x00" + rule.room_id)


class TopicRules:
    """The current rules, with a cache of topic -> room answers."""

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self._rules: list[Rule] = []
        self._cache: dict[str, str | None] = {}
        self._room_topic: dict[str, str | None] = {}
        self.replace(rules or [])

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def replace(self, rules: list[Rule]) -> None:
        self._rules = sorted(set(rules), key=specificity)
        self._cache.clear()
        self._room_topic.clear()

    def set_admin_rules(self, rules: list[Rule]) -> bool:
        """Swap in the admin rules; True if anything changed."""
        new = [r for r in self._rules if not r.admin] + rules
        if set(new) == set(self._rules):
            return False
        self.replace(new)
        return True

    def bind(self, topic_filter: str, room_id: str) -> None:
        self.replace([r for r in self._rules if r.admin or r.topic_filter != topic_filter or r.room_id != room_id]
                     + [Rule(topic_filter, room_id, False)])

    def unbind(self, topic_filter: str, room_id: str) -> None:
        self.replace([r for r in self._rules
                      if r.admin or r.topic_filter != topic_filter or r.room_id != room_id])

    def resolve(self, topic: str) -> str | None:
        """The room of a topic name, or None when only the default rule applies."""
        cache = self._cache
        if topic in cache:
            return cache[topic]
        found = None
        for rule in self._rules:
            if topic_matches(rule.topic_filter, topic):
                found = rule.room_id
                break
        if len(cache) > 50_000:
            cache.clear()
        cache[topic] = found
        return found

    def topic_of_room(self, room_id: str) -> str | None:
        """The topic a room's non-MQTT events are published on: the literal levels of its most
        specific rule's filter, before any wildcard (None if that leaves nothing)."""
        if room_id in self._room_topic:
            return self._room_topic[room_id]
        topic = None
        for rule in self._rules:
            if rule.room_id == room_id:
                topic = literal_prefix(rule.topic_filter)
                if topic:
                    break
        self._room_topic[room_id] = topic
        return topic


def literal_prefix(topic_filter: str) -> str | None:
    levels = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        levels.append(level)
    return "/".join(levels) if levels else None


def default_binding(topic: str, levels: int) -> tuple[str, str]:
    """(room key, filter bound in the new room) for a topic under the default rule.

    `home/kitchen/temp` (levels=2) -> ("home/kitchen", "home/kitchen/#"); a topic with fewer
    levels is its own key and its own (exact) filter: `test` -> ("test", "test")."""
    parts = topic.split("/")
    if len(parts) <= levels:
        if len(parts) == levels:
            return topic, topic + "/#"
        return topic, topic
    key = "/".join(parts[:levels])
    return key, key + "/#"


def alias_localpart(key: str) -> str:
    """An alias localpart for a room key, injective and readable: `home/kitchen` ->
    `mqtt/home/kitchen`; other characters become `=XX` (UTF-8 bytes), long keys are cut and
    suffixed with a hash."""
    out = []
    for ch in key:
        if ch in _ALIAS_SAFE:
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    local = ALIAS_PREFIX + "".join(out)
    if len(local) > MAX_ALIAS_LOCALPART:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        local = local[: MAX_ALIAS_LOCALPART - 20] + "=h" + digest
    return local
