"""POST /rooms/{roomId}/forget: a user who left a room stops remembering it.

Forgetting takes the room out of the user's membership index (`Rooms.memberships`, which
declining a remote invite already does): /sync then has no `leave` entry for it and every read
path (`/messages`, `/event`, `/state`, `/members`, `/rooms/{roomId}/aliases`) answers as to a
stranger (M_FORBIDDEN unless the room is world readable), which is what the spec asks ("a user
will no longer be able to retrieve history for this room") and what Synapse does. The forget is
stored (store/forgotten_rooms.py) and applied again at start-up; a later invite or join is a new
membership and brings the room back.
"""
from __future__ import annotations

from .. import errors
from ..store import Database
from ..store import forgotten_rooms as rows
from .accounts import Requester
from .rooms import Rooms

FORGETTABLE = ("leave", "ban")


class ForgottenRooms:
    def __init__(self, db: Database, rooms: Rooms) -> None:
        self.db = db
        self.rooms = rooms

    async def load(self) -> None:
        """After Rooms.load: drop the forgotten memberships that are still the ones forgotten."""
        for user_id, room_id, pos in await rows.all_rows(self.db):
            self._drop(user_id, room_id, pos)

    def _drop(self, user_id: str, room_id: str, pos: int) -> None:
        entries = self.rooms.memberships.get(user_id)
        entry = entries.get(room_id) if entries is not None else None
        if entries is not None and entry is not None and entry[1] == pos and entry[0] in FORGETTABLE:
            del entries[room_id]

    async def forget(self, requester: Requester, room_id: str) -> None:
        """Forget a room the user left or was banned from. Joined, invited or knocking: 400
        M_UNKNOWN (the spec's answer), nothing stored. Already forgotten (or never a member):
        nothing to do."""
        user_id = requester.user_id
        entry = self.rooms.membership_of(user_id, room_id)
        if entry is None:
            return
        if entry[0] not in FORGETTABLE:
            raise errors.MatrixError(400, "M_UNKNOWN", f"User {user_id} is in room {room_id} "
                                     f"(membership {entry[0]}): leave it before forgetting it")
        await self.db.write(lambda conn: rows.put(conn, user_id, room_id, entry[1]))
        self._drop(user_id, room_id, entry[1])  # unless a new membership arrived meanwhile
