"""Which room a topic lives in, and which topic a room speaks on. Pure: no I/O, no clock.

Rules come from two places: the hub admin (`matrix-gateway mqtt map FILTER ROOM`, kept in the
`mqtt_rules` table) and rooms themselves (a `BINDING_TYPE` state event whose state key is the
topic filter). A room's binding counts only if `binding_authority` says its sender may bind that
filter: a hub admin may bind anything; anyone else only topics of a tree whose default room the
broker made for them (they own it), and such owner bindings apply only where no rule of the hub's
authority matches. Among rules of the same authority the most specific matching filter wins (see
`specificity`); admin rules beat room bindings of equal specificity. A topic no rule matches falls
to the default rule: its first `levels` levels name a room, found by its alias (reserved for the
broker) or created by the publisher, who then owns that tree (docs/mqtt.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import AbstractSet, Callable, Mapping

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
    # None: the hub's authority (the CLI, or a binding sent by a hub admin). Else the non-admin
    # owner of the topic tree who bound it: such a rule applies only to topics no rule of the
    # hub's authority matches, so an owner can never take traffic from a room an admin chose.
    owner: str | None = None


def specificity(rule: Rule) -> tuple[int, int, int, int, int, int, str]:
    """Sort key, first match wins: rules of the hub's authority before owners' bindings; then most
    specific first: no wildcard at all; more literal levels before the first wildcard; no '#';
    fewer '+'; admin rules; then by filter and room for a stable order."""
    levels = rule.topic_filter.split("/")
    literal = 0
    for level in levels:
        if level in ("+", "#"):
            break
        literal += 1
    wild = literal != len(levels)
    return (int(rule.owner is not None), int(wild), -literal, int("#" in levels), levels.count("+"),
            int(not rule.admin), rule.topic_filter + "\x00" + rule.room_id)


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

    def set_bindings(self, rules: list[Rule]) -> bool:
        """Swap in the rooms' bindings that count (`effective_bindings`); True if anything changed."""
        new = [r for r in self._rules if r.admin] + rules
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


# -- who may bind what ---------------------------------------------------------------------------

HUB = "hub"  # a hub admin's binding: a rule like the CLI's
OWNER = "owner"  # the owner of the filter's topic tree: applies where no hub rule does


#: Topic trees whose conventions put one device per level-2 topic, one default room each: with the
#: default 2 levels a Zigbee2MQTT network of 100 devices became 101 rooms (issue 16). Their
#: default room is the whole tree: `zigbee2mqtt/#` (the bridge and every device) and
#: `homeassistant/#` (MQTT discovery and Home Assistant's birth message). docs/mqtt.md.
CONVENTION_TREES: Mapping[str, int] = {"zigbee2mqtt": 1, "homeassistant": 1}


def tree_levels(first_level: str, levels: int) -> int:
    """How many levels name the default room of topics starting with `first_level`."""
    return CONVENTION_TREES.get(first_level, levels)


def tree_key(topic_filter: str, levels: int) -> str | None:
    """The default rule's room key that every topic the filter matches falls under (what
    `default_binding` gives each), or None when they span several keys: a wildcard within the
    first `levels` levels (`#`, `+/temp`, `home/#` with levels=2)."""
    parts = topic_filter.split("/")
    literal: list[str] = []
    for part in parts:
        if part in ("+", "#"):
            break
        literal.append(part)
    if len(literal) == len(parts):  # no wildcard: one topic
        return default_binding(topic_filter, levels)[0]
    if literal:
        levels = tree_levels(literal[0], levels)
    if len(literal) >= levels:
        return "/".join(literal[:levels])
    return None


def binding_authority(topic_filter: str, sender: str, admins: AbstractSet[str],
                      tree_owner: Callable[[str], str | None], levels: int) -> str | None:
    """Whether a room's binding of `topic_filter` sent by `sender` counts, and as what: HUB for a
    hub admin; OWNER when every topic of the filter lies in one default-rule tree (`tree_key`)
    whose default room the broker made for `sender` (`tree_owner(key)`); else None: the binding
    is ignored, whoever could send the state event in their own room. So nobody can bind `#`,
    `+/...` or another user's tree (the hijack and the hub-wide denial of service of issue 20)."""
    key = tree_key(topic_filter, levels)
    owns_tree = key is not None and tree_owner(key) == sender
    if owns_tree and key is not None and topic_filter in (key, key + "/#"):
        # The broker's own binding of the tree's default room (made for its first publisher):
        # the default rule, even when that publisher is an admin, so an admin's explicit rule
        # into the tree (`mqtt map 'garden/+/moisture' ...`) wins over it, whichever came first.
        return OWNER
    if sender in admins:
        return HUB
    if owns_tree:
        return OWNER
    return None


def effective_bindings(bindings: Mapping[tuple[str, str], str], admins: AbstractSet[str],
                       tree_owner: Callable[[str], str | None], levels: int) -> list[Rule]:
    """The rules the rooms' bindings make: `bindings` maps (room id, filter) to the sender of the
    binding in force; those `binding_authority` refuses are left out."""
    out = []
    for (room_id, topic_filter), sender in bindings.items():
        authority = binding_authority(topic_filter, sender, admins, tree_owner, levels)
        if authority == HUB:
            out.append(Rule(topic_filter, room_id, False))
        elif authority == OWNER:
            out.append(Rule(topic_filter, room_id, False, owner=sender))
    return out


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
    levels is its own key and its own (exact) filter: `test` -> ("test", "test"). The trees of
    CONVENTION_TREES have their own levels: `zigbee2mqtt/lamp/set` -> ("zigbee2mqtt", "zigbee2mqtt/#")."""
    parts = topic.split("/")
    levels = tree_levels(parts[0], levels)
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
