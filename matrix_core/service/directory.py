"""The user directory (POST /user_directory/search) and a room's local aliases
(GET /rooms/{roomId}/aliases).

The user directory follows Synapse's default (`user_directory.search_all_users: false`): a
search finds local users who share a joined room with the requester or are joined to a public
room (join rule `public`, or history `world_readable`). Users of other servers are found when
they share a joined room with the requester (by their member event's name); no other server is
queried.
"""
from __future__ import annotations

from typing import Any

from .. import errors
from ..store import Database
from ..store import accounts as account_rows
from ..store import rooms as room_rows
from .accounts import Requester
from .rooms import Rooms


def _matches(terms: list[str], user_id: str, displayname: str | None) -> bool:
    haystack = f"{user_id} {displayname or ''}".lower()
    return all(term in haystack for term in terms)


def _rank(terms: list[str], user_id: str, displayname: str | None) -> tuple[int, str]:
    """Users whose name or localpart starts with the first term first, then by user id."""
    first = terms[0]
    starts = (displayname or "").lower().startswith(first) or user_id[1:].lower().startswith(first)
    return (0 if starts else 1, user_id)


class Directory:
    def __init__(self, db: Database, rooms: Rooms) -> None:
        self.db = db
        self.rooms = rooms

    async def _is_public(self, room_id: str, cache: dict[str, bool]) -> bool:
        known = cache.get(room_id)
        if known is None:
            room = self.rooms.loaded_room(room_id) or await self.rooms.get_room(room_id)
            known = (room.state_content("m.room.join_rules").get("join_rule") == "public"
                     or room.state_content("m.room.history_visibility").get("history_visibility")
                     == "world_readable")
            cache[room_id] = known
        return known

    async def _in_public_room(self, room_ids: list[str], cache: dict[str, bool]) -> bool:
        for room_id in room_ids:
            if await self._is_public(room_id, cache):
                return True
        return False

    async def search_users(self, requester: Requester, search_term: str, limit: int) -> dict[str, Any]:
        terms = search_term.lower().split()
        if not terms:
            return {"results": [], "limited": False}
        mine = set(self.rooms.joined_room_ids(requester.user_id))
        public: dict[str, bool] = {}
        found: list[tuple[tuple[int, str], dict[str, Any]]] = []
        for user_id, displayname, avatar_url in await account_rows.all_profiles(self.db):
            if not _matches(terms, user_id, displayname):
                continue
            joined = self.rooms.joined_room_ids(user_id)
            if not joined:
                continue
            if mine.isdisjoint(joined) and not await self._in_public_room(joined, public):
                continue
            entry: dict[str, Any] = {"user_id": user_id}
            if displayname is not None:
                entry["display_name"] = displayname
            if avatar_url is not None:
                entry["avatar_url"] = avatar_url
            found.append((_rank(terms, user_id, displayname), entry))
        found += await self._remote_peers(requester, terms)
        found.sort(key=lambda item: item[0])
        return {"results": [entry for _, entry in found[:limit]], "limited": len(found) > limit}

    async def _remote_peers(self, requester: Requester, terms: list[str]
                            ) -> list[tuple[tuple[int, str], dict[str, Any]]]:
        """Users of other servers joined to the requester's rooms who match, named as their
        member events name them."""
        local_suffix = ":" + self.rooms.server_name
        seen: dict[str, dict[str, Any]] = {}
        for room_id in self.rooms.joined_room_ids(requester.user_id):
            room = self.rooms.loaded_room(room_id) or await self.rooms.get_room(room_id)
            for (event_type, user_id), ev in room.state.items():
                if event_type != "m.room.member" or ev.membership != "join" or user_id.endswith(local_suffix) \
                        or user_id in seen:
                    continue
                name = ev.content.get("displayname")
                name = name if isinstance(name, str) else None
                if _matches(terms, user_id, name):
                    entry: dict[str, Any] = {"user_id": user_id}
                    if name is not None:
                        entry["display_name"] = name
                    avatar = ev.content.get("avatar_url")
                    if isinstance(avatar, str):
                        entry["avatar_url"] = avatar
                    seen[user_id] = entry
        return [(_rank(terms, user_id, entry.get("display_name")), entry) for user_id, entry in seen.items()]

    async def local_aliases(self, requester: Requester, room_id: str) -> list[str]:
        """The room's local aliases, for its members (departed ones too, as Synapse allows), anyone
        when it is world readable, and hub admins."""
        if requester.is_admin:
            await self.rooms.get_room(room_id)  # M_NOT_FOUND for a room this hub does not hold
        else:
            try:
                await self.rooms.read_access(requester, room_id)
            except errors.MatrixError as exc:
                if exc.errcode == "M_FORBIDDEN":
                    raise errors.forbidden("You are not a member of the room") from None
                raise
        return await room_rows.aliases_of(self.db, room_id)
