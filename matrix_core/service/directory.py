"""The user directory (POST /user_directory/search) and a room's local aliases
(GET /rooms/{roomId}/aliases).

The user directory follows Synapse's default (`user_directory.search_all_users: false`): a
search finds local users who share a joined room with the requester or are joined to a public
room (join rule `public`, or history `world_readable`). Users of other servers are not searched
(no federation query; a client can still invite a full user id it was given).
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
        found.sort(key=lambda item: item[0])
        return {"results": [entry for _, entry in found[:limit]], "limited": len(found) > limit}

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
