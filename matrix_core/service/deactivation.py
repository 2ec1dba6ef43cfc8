"""Deactivating an account, by the user (`POST /account/deactivate`) or by an admin
(`POST /_synapse/admin/v1/deactivate/{userId}`): one path for both, as Synapse has.

What it does, in Synapse's order: the password, every device and token go (accounts.deactivate:
live MQTT connections and CoAP observations end, pushers with the tokens), then the account
leaves every room it is in, declines its pending invites (a room hosted elsewhere is told through
federation) and withdraws its knocks, so the rooms' member lists stop naming a dead account and
no invite waits for it forever. A room that refuses the leave (a remote server down) is logged
and skipped: the account is deactivated all the same.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .accounts import Requester

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

PARTED = ("join", "invite", "knock")  # memberships a deactivated account gives up


class Deactivation:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs

    async def deactivate(self, user_id: str) -> int:
        """Deactivate `user_id` (local, existing: the caller checked) and part it from its rooms;
        returns how many rooms it left."""
        hs = self.hs
        hs.devices.forget(user_id, [d["device_id"] for d in await hs.devices.of_user(user_id)])
        await hs.accounts.deactivate(user_id)
        return await self.part_from_rooms(user_id)

    async def part_from_rooms(self, user_id: str) -> int:
        hs = self.hs
        acting = Requester(user_id=user_id, device_id="", is_admin=False, access_token="")
        parted = 0
        rooms = [room_id for room_id, (membership, _) in hs.rooms.memberships.get(user_id, {}).items()
                 if membership in PARTED]
        remote_invites = [room_id for (invitee, room_id) in hs.rooms.remote_invites if invitee == user_id]
        for room_id in dict.fromkeys(rooms + remote_invites):
            try:
                if (user_id, room_id) in hs.rooms.remote_invites and hs.rooms.room_version(room_id) is None:
                    await hs.rooms.leave_remote_invite(acting, room_id)
                else:
                    await hs.rooms.update_membership(acting, room_id, user_id, "leave", rate_limit=False)
                parted += 1
            except Exception as exc:  # one room's refusal must not leave the rest joined
                log.warning("deactivating %s: could not leave %s: %s", user_id, room_id, exc)
        return parted
