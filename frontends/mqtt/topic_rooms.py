"""Which room a topic goes to: the hub admin's rules, the rooms' bindings, the default rooms.

The pure part (rule matching, who may bind what) is routing.py; this is its stateful edge:
the default rooms the broker makes for topic trees (under its reserved `#mqtt/...` aliases, the
publisher as the tree's owner), the binding state events of the rooms, and the hub admins they
are judged against. See docs/mqtt.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any, Callable

from matrix_core import errors
from matrix_core.events import Event
from matrix_core.homeserver import Homeserver
from matrix_core.service.accounts import Requester
from matrix_core.store import mqtt as mqtt_store

from . import persistence
from .constants import ReasonCode
from .refusals import PublishRefused
from .routing import BINDING_TYPE, TopicRules, alias_localpart, default_binding, effective_bindings
from .topics import is_valid_topic_filter

log = logging.getLogger("frontends.mqtt")

#: The power level household members get in the broker's rooms (users_default): the rooms'
#: state_default, so every member may publish retained messages (state events).
HOUSEHOLD_LEVEL = 50


class TopicRooms:
    """The rooms topics go to, kept in `rules` (the broker's TopicRules, shared with the fan-out)."""

    def __init__(self, hs: Homeserver, rules: TopicRules, room_levels: int,
                 background: Callable[[Any], "asyncio.Future[Any]"]) -> None:
        self.hs = hs
        self.rules = rules
        self.room_levels = room_levels
        self.background = background
        self._room_locks: dict[str, asyncio.Lock] = {}
        self.admins: set[str] = set()  # hub admins, polled with the admin rules
        # alias -> (owner, room id) of the default rooms the broker made (None: being created)
        self.default_rooms: dict[str, tuple[str, str | None]] = {}
        self._creating: set[str] = set()  # aliases of default rooms being created now
        self._trusted: dict[str, str] = {}  # alias -> room id checked by _check_default_alias
        self._logged_untrusted: set[str] = set()
        # (room id, topic filter) -> sender of each room's binding in force, counted or not: whether
        # it counts (routing.binding_authority) is worked out again when admins or owners change.
        self._bindings: dict[tuple[str, str], str] = {}
        self._logged_ignored: set[tuple[str, str, str]] = set()
        self.household: set[str] = set()  # accounts that share the default rooms (not guests)

    async def load(self) -> None:
        """At start-up: the admin rules, the hub admins, the default rooms, the rooms' bindings."""
        db = self.hs.db
        rules = persistence.rules_of(await mqtt_store.load_rules(db))
        self.admins = await self.hs.accounts.admin_user_ids()
        self.default_rooms = await mqtt_store.load_default_rooms(db)
        for alias, (owner, room_id) in list(self.default_rooms.items()):
            if room_id is None:  # the hub stopped while creating it: made, or not
                found = await self.hs.rooms.resolve_alias_local(alias)
                if found is None:
                    del self.default_rooms[alias]
                    await db.write(lambda c: mqtt_store.forget_default_room(c, alias))  # awaited: alias is current
                else:
                    self.default_rooms[alias] = (owner, found)
                    await db.write(lambda c: mqtt_store.set_default_room(c, alias, found))
        for room_id, state_key, content, sender in await mqtt_store.load_room_bindings(db, BINDING_TYPE):
            if content and valid_binding(state_key):
                self._bindings[(room_id, state_key)] = sender
        self.rules.replace(rules)
        self._apply_bindings()
        self.household = await self.hs.accounts.household_user_ids()

    async def start_household(self) -> None:
        """At start-up, once the rooms are loaded: rooms made before the household are opened to
        it (once), and every member is in every default room (members added while the hub was
        stopped, or before the household existed)."""
        await self.upgrade_old_rooms()
        await self._add_members(self.household)

    async def poll_admin_rules(self) -> None:
        """The CLI's rules (`matrix-gateway mqtt map`) and the hub admins, as they are now."""
        if self.rules.set_admin_rules(persistence.rules_of(await mqtt_store.load_rules(self.hs.db))):
            log.info("MQTT topic rules changed: %d rules", len(self.rules.rules))
        await self.refresh_admins()
        await self.refresh_household()

    async def refresh_household(self) -> None:
        """New household members (`matrix-gateway user add` beside the running hub) join the
        default rooms."""
        household = await self.hs.accounts.household_user_ids()
        new = household - self.household
        self.household = household
        if new:
            await self._add_members(new)

    def _actor(self, user_id: str) -> Requester:
        return Requester(user_id, "", user_id in self.admins, "")

    async def _add_members(self, members: set[str]) -> None:
        """Each member joins each default room it has never been in: invited by the room's owner,
        then joined (they are local accounts). One who left, or was kicked, stays out."""
        rooms = self.hs.rooms
        for alias, (owner, room_id) in list(self.default_rooms.items()):
            if room_id is None:
                continue
            for member in sorted(members):
                if member == owner or rooms.membership_of(member, room_id) is not None:
                    continue
                try:
                    await rooms.update_membership(self._actor(owner), room_id, member, "invite", rate_limit=False)
                    await rooms.update_membership(self._actor(member), room_id, member, "join", rate_limit=False)
                except errors.MatrixError as exc:
                    log.warning("MQTT: could not add household member %s to %s (%s): %s", member, alias, room_id, exc)
                    continue
                log.info("MQTT: household member %s joined %s (%s)", member, alias, room_id)

    async def upgrade_old_rooms(self) -> None:
        """Default rooms made before the household gave members power level 0: too little to
        publish retained messages. Raised once (mqtt_household_upgrade lists them) by the owner."""
        db = self.hs.db
        for alias in sorted(await mqtt_store.rooms_to_upgrade(db)):
            owner, room_id = self.default_rooms.get(alias, ("", None))
            if room_id is not None:
                try:
                    room = await self.hs.rooms.get_room(room_id)
                    levels = dict(room.state_content("m.room.power_levels"))
                    if int(levels.get("users_default", 0)) < HOUSEHOLD_LEVEL:
                        levels["users_default"] = HOUSEHOLD_LEVEL
                        await self.hs.rooms.send_event(self._actor(owner), room_id, "m.room.power_levels",
                                                       levels, state_key="", rate_limit=False)
                        log.info("MQTT: %s (%s) opened to the household (users_default %d)",
                                 alias, room_id, HOUSEHOLD_LEVEL)
                except errors.MatrixError as exc:
                    log.warning("MQTT: could not open %s (%s) to the household: %s", alias, room_id, exc)
            await db.write(functools.partial(mqtt_store.room_upgraded, alias=alias))

    async def room_for_topic(self, requester: Requester, topic: str) -> str:
        if topic.startswith("$"):
            raise PublishRefused(ReasonCode.NOT_AUTHORIZED, "topics starting with $ are reserved")
        room_id = self.rules.resolve(topic)
        if room_id is not None:
            return room_id
        return await self._default_room(requester, topic)

    async def _default_room(self, requester: Requester, topic: str) -> str:
        """The default rule: the room named by the topic's first levels, found by its alias or
        created with the publisher as its creator (and a binding for its topic filter)."""
        key, topic_filter = default_binding(topic, self.room_levels)
        lock = self._room_locks.setdefault(key, asyncio.Lock())
        async with lock:
            room_id = self.rules.resolve(topic)
            if room_id is not None:
                return room_id
            local = alias_localpart(key)
            alias = f"#{local}:{self.hs.server_name}"
            rooms = self.hs.rooms
            room_id = await rooms.resolve_alias_local(alias)
            if room_id is None:
                room_id = await self._create_default_room(requester, key, topic_filter, local, alias)
            else:
                await self._check_default_alias(alias, room_id)
            self._room_locks.pop(key, None)
            return room_id

    async def _create_default_room(self, requester: Requester, key: str, topic_filter: str, local: str,
                                   alias: str) -> str:
        """The publisher's new room for a topic tree, under the broker's reserved alias; the
        publisher owns the tree (docs/mqtt.md). The claim is written first, so an alias made just
        before a crash is still recognised as the broker's."""
        owner = requester.user_id
        if not requester.is_admin and owner in self.admins:  # a password login: its admin flag is not on it
            requester = dataclasses.replace(requester, is_admin=True)
        if owner not in self.household:  # added since the last poll?
            self.household = await self.hs.accounts.household_user_ids()
        if owner not in self.household:
            # A guest (or an application service's user) reaches only rooms it is invited to: its
            # first publish to a new tree would otherwise make that tree's room, owned by it.
            raise PublishRefused(ReasonCode.NOT_AUTHORIZED, f"{owner} is not a household member: no room "
                                 f"is made for {topic_filter} by its publish (docs/mqtt.md)")
        members = sorted(m for m in self.household if m != owner)
        db = self.hs.db
        self._creating.add(alias)
        try:
            await db.write(lambda c: mqtt_store.claim_default_room(c, alias, owner))
            self.default_rooms[alias] = (owner, None)
            result = await self.hs.rooms.create_room(requester, {
                "preset": "private_chat",
                "room_alias_name": local,
                "name": f"MQTT {key}",
                "topic": f"MQTT topic filter {topic_filter}",
                "initial_state": [{"type": BINDING_TYPE, "state_key": topic_filter,
                                   "content": {"topic_filter": topic_filter}}],
                # the household shares it, every member able to publish retained messages
                "invite": members,
                "power_level_content_override": {"users_default": HOUSEHOLD_LEVEL},
            }, reserved_alias_ok=True, rate_limit=False)  # the broker's room: the publish is what counts
        except BaseException:
            self.default_rooms.pop(alias, None)
            await db.write(lambda c: mqtt_store.forget_default_room(c, alias))
            raise
        finally:
            self._creating.discard(alias)
        room_id: str = result["room_id"]
        self.default_rooms[alias] = (owner, room_id)
        self._trusted[alias] = room_id
        await db.write(lambda c: mqtt_store.set_default_room(c, alias, room_id))
        self._bindings[(room_id, topic_filter)] = owner  # its binding event may still be on its way
        self._apply_bindings()
        log.info("created room %s (%s) for MQTT topics %s", room_id, alias, topic_filter)
        for member in members:  # local accounts: the hub joins them (they were invited above)
            try:
                await self.hs.rooms.update_membership(self._actor(member), room_id, member, "join", rate_limit=False)
            except errors.MatrixError as exc:
                log.warning("MQTT: household member %s could not join %s: %s", member, alias, exc)
        return room_id

    async def _check_default_alias(self, alias: str, room_id: str) -> None:
        """Route by a #mqtt/... alias only if the broker made it (or a hub admin did): one made
        by anyone else (before the namespace was reserved, or written into the database behind
        the hub's back) would collect other users' first publishes in its maker's room."""
        if self._trusted.get(alias) == room_id:
            return
        entry = self.default_rooms.get(alias)
        if entry is not None and entry[1] == room_id:
            self._trusted[alias] = room_id
            return
        creator = await mqtt_store.alias_creator(self.hs.db, alias)
        if creator is not None and creator in self.admins:
            if entry is not None:  # an admin pointed the alias elsewhere: the old owner's tree is gone
                self.default_rooms.pop(alias, None)
                await self.hs.db.write(lambda c: mqtt_store.forget_default_room(c, alias))
                self._apply_bindings()
            self._trusted[alias] = room_id
            return
        if alias not in self._logged_untrusted:
            self._logged_untrusted.add(alias)
            log.warning("MQTT: not routing to %s (%s): the alias was made by %s, not by the broker or a hub admin; "
                        "a hub admin can delete it (DELETE /_matrix/client/v3/directory/room/...)",
                        alias, room_id, creator)
        raise PublishRefused(ReasonCode.NOT_AUTHORIZED, f"{alias} was not made by the broker")


    def on_binding(self, event: Event) -> None:
        """A binding state event was committed: the rules follow it."""
        state_key = event.state_key or ""
        if not valid_binding(state_key):
            return
        if event.content:
            self._bindings[(event.room_id, state_key)] = event.sender
        else:
            self._bindings.pop((event.room_id, state_key), None)
        self._apply_bindings()
        if event.content and event.sender not in self.admins and event.sender.endswith(":" + self.hs.server_name):
            self.background(self.refresh_admins())  # made an admin since the last poll?

    async def refresh_admins(self) -> None:
        """Hub admins are polled with the admin rules; a change re-decides the rooms' bindings."""
        admins = await self.hs.accounts.admin_user_ids()
        if admins != self.admins:
            self.admins = admins
            self._trusted.clear()
            self._apply_bindings()

    def _tree_owner(self, key: str) -> str | None:
        """Who owns a topic tree: the user the broker made its default room for (while it is
        being made, too: its own binding arrives before create_room returns)."""
        alias = f"#{alias_localpart(key)}:{self.hs.server_name}"
        entry = self.default_rooms.get(alias)
        if entry is None or (entry[1] is None and alias not in self._creating):
            return None
        return entry[0]

    def _apply_bindings(self) -> None:
        """The rules the rooms' bindings make, from who sent each (routing.effective_bindings);
        a binding that does not count is logged once."""
        rules = effective_bindings(self._bindings, self.admins, self._tree_owner, self.room_levels)
        self.rules.set_bindings(rules)
        if len(rules) == len(self._bindings):
            return
        counted = {(rule.room_id, rule.topic_filter) for rule in rules}
        for (room_id, topic_filter), sender in self._bindings.items():
            ident = (room_id, topic_filter, sender)
            if (room_id, topic_filter) in counted or ident in self._logged_ignored:
                continue
            if len(self._logged_ignored) > 10_000:
                self._logged_ignored.clear()
            self._logged_ignored.add(ident)
            log.info("MQTT binding of %r in %s by %s ignored: only a hub admin, or the owner of the topic "
                     "tree it lies in, may bind topics (docs/mqtt.md)", topic_filter, room_id, sender)



def valid_binding(topic_filter: str) -> bool:
    return (is_valid_topic_filter(topic_filter, allow_shared=False) and not topic_filter.startswith("$")
            and not topic_filter.startswith("$share/"))
