"""Room aliases of this hub: resolving, creating and deleting them, and the alias namespaces a
component reserves (the MQTT broker's `#mqtt/...`, which routes topics by them)."""
from __future__ import annotations

from typing import Awaitable, Callable

from .. import auth_rules, errors
from ..identifiers import split_id
from ..store import Database
from ..store import rooms as room_rows
from .accounts import Requester
from .room_registry import RoomRegistry


class RoomAliases:
    def __init__(self, db: Database, server_name: str, registry: RoomRegistry) -> None:
        self.db = db
        self.server_name = server_name
        self.registry = registry
        self._aliases: dict[str, str] = {}  # alias -> room id, of aliases looked up or made
        # Alias localpart prefixes a component owns (the MQTT broker's "mqtt/", which routes topics
        # by them): only that component and hub admins create or delete aliases there.
        self.reserved_alias_prefixes: list[str] = []
        # Application services (service/appservice.py): refuses an alias in another's exclusive
        # namespace (M_EXCLUSIVE), and asks the AS owning an unknown alias to create its room.
        self.exclusive_alias_check: Callable[[Requester, str], None] | None = None
        self.query_alias: Callable[[str], Awaitable[bool]] | None = None
        self.alias_listeners: list[Callable[[str, str], None]] = []  # told (alias, room id) once created

    async def resolve_alias_local(self, alias: str) -> str | None:
        cached = self._aliases.get(alias)
        if cached is not None:
            return cached
        row = await room_rows.alias_room(self.db, alias)
        if row is None:
            return None
        self._aliases[alias] = row[0]
        return row[0]

    async def resolve_room(self, room_id_or_alias: str) -> str:
        """A room id for an id or a (local) alias; M_NOT_FOUND if there is no such room."""
        if room_id_or_alias.startswith("#"):
            room_id = await self.resolve_alias_local(room_id_or_alias)
            if room_id is None and self.query_alias is not None and await self.query_alias(room_id_or_alias):
                room_id = await self.resolve_alias_local(room_id_or_alias)  # the AS made it just now
            if room_id is None:
                raise errors.not_found(f"Room alias {room_id_or_alias} not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise errors.invalid_param(f"Not a room id or alias: {room_id_or_alias!r}")
        if room_id_or_alias not in self.registry.versions:
            raise errors.not_found(f"Unknown room {room_id_or_alias}")
        return room_id_or_alias

    def reserve_alias_namespace(self, localpart_prefix: str) -> None:
        """Reserve aliases whose localpart starts with `localpart_prefix` for the calling component
        (which passes reserved_ok / reserved_alias_ok) and hub admins, as an appservice's
        exclusive namespace is: an alias there is trusted to be the component's."""
        if localpart_prefix not in self.reserved_alias_prefixes:
            self.reserved_alias_prefixes.append(localpart_prefix)

    def check_alias_namespace(self, requester: Requester, localpart: str) -> None:
        if self.exclusive_alias_check is not None:
            self.exclusive_alias_check(requester, f"#{localpart}:{self.server_name}")
        if requester.is_admin:
            return
        for prefix in self.reserved_alias_prefixes:
            if localpart.startswith(prefix):
                raise errors.exclusive(f"Aliases starting with #{prefix} are reserved for the hub")

    async def create_alias(self, requester: Requester, alias: str, room_id: str, *, reserved_ok: bool = False) -> None:
        try:
            localpart, server = split_id(alias, "#")
        except ValueError:
            raise errors.invalid_param(f"Invalid alias {alias!r}") from None
        if server != self.server_name:
            raise errors.invalid_param("Alias must be on this server")
        if not reserved_ok:
            self.check_alias_namespace(requester, localpart)
        if room_id not in self.registry.versions:
            raise errors.not_found("Unknown room")
        if await self.resolve_alias_local(alias) is not None:
            raise errors.MatrixError(409, "M_UNKNOWN", "Room alias already exists")
        await self.db.write(lambda c: room_rows.insert_alias(c, alias, room_id, requester.user_id))
        self._aliases[alias] = room_id
        for listener in self.alias_listeners:
            listener(alias, room_id)

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        row = await room_rows.alias_room(self.db, alias)
        if row is None:
            raise errors.not_found("Alias not found")
        self.check_alias_namespace(requester, alias[1:].split(":", 1)[0])
        if row[1] != requester.user_id and not requester.is_admin:
            room = await self.registry.get_room(row[0])
            level = auth_rules.get_user_power_level(requester.user_id, room.state)
            if level < auth_rules.get_required_level("m.room.canonical_alias", True, room.state):
                raise errors.forbidden("You may not delete this alias")
        await self.db.write(lambda c: room_rows.delete_alias(c, alias))
        self._aliases.pop(alias, None)
