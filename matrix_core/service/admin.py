"""Hub administration behind the admin API (Synapse's paths and shapes under /_synapse/admin, the
hub's own under /_gateway/admin/v1) and the Devices page: accounts, their devices, rooms.

It reuses what the client API already does for the same acts, so an admin's act has the same
effects as the user's own: account creation and deactivation (service/accounts.py), a device's
deletion with its tokens and live sessions (service/devices.py, the revocation listeners), the
CLI's `device add --psk` key (injected: frontends/coap/psk.py is a front end's)."""
from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any

from .. import admin_rules, device_setup, errors
from ..identifiers import is_valid_localpart, split_id
from ..passwords import hash_password
from ..store import account_admin as admin_rows
from ..store import accounts as account_rows
from ..store import devices as device_rows
from ..store import rooms as room_rows

if TYPE_CHECKING:
    from ..homeserver import Homeserver

MAX_PASSWORD = 512
MAX_DISPLAYNAME = 256


class HubAdmin:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.ops = hs.hub_ops  # the listeners that are on and the coaps key maker (service/hub_ops.py)

    # -- users -----------------------------------------------------------------------------------

    def local_user(self, user_id: str) -> str:
        """A well-formed local user id, else 400 (Synapse: admin operations are for local users)."""
        try:
            localpart, server = split_id(user_id, "@")
        except ValueError:
            raise errors.invalid_param(f"Invalid user id {user_id[:60]!r}") from None
        if server != self.server_name:
            raise errors.invalid_param("This endpoint can only be used with local users")
        return user_id

    @staticmethod
    def _user_json(row: admin_rows.UserRow) -> dict[str, Any]:
        """Synapse's user object; `is_guest` is the hub's guest (not household) account."""
        return {"name": row.user_id, "is_guest": not row.household, "admin": row.admin, "user_type": None,
                "deactivated": row.deactivated, "erased": False, "shadow_banned": False, "locked": False,
                "displayname": row.displayname, "avatar_url": row.avatar_url, "creation_ts": row.creation_ts,
                "last_seen_ts": row.last_seen_ts, "household": row.household}

    async def list_users(self, query: dict[str, list[str]]) -> dict[str, Any]:
        users = [self._user_json(row) for row in await admin_rows.all_users(self.hs.db)]
        return admin_rules.list_users(users, query)

    async def user(self, user_id: str) -> dict[str, Any]:
        row = await admin_rows.user(self.hs.db, self.local_user(user_id))
        if row is None:
            raise errors.not_found("User not found")
        details = self._user_json(row)
        details.update({"threepids": [], "external_ids": [], "appservice_id": None, "consent_server_notice_sent": None,
                        "consent_version": None, "consent_ts": None, "suspended": False})
        return details

    async def put_user(self, requester_id: str, user_id: str, body: dict[str, Any]) -> bool:
        """Create (True) or modify (False) an account: Synapse's `PUT /_synapse/admin/v2/users/{id}`
        with `password`, `logout_devices`, `displayname`, `avatar_url`, `admin`, `deactivated`,
        and the hub's `household` (default true, as `matrix-gateway user add`). Every field is
        checked before anything is written."""
        self.local_user(user_id)
        password = _optional(body, "password", str)
        if password is not None and (not password or len(password) > MAX_PASSWORD):
            raise errors.invalid_param(f"'password' must be 1-{MAX_PASSWORD} characters")
        displayname = _optional(body, "displayname", str)
        if displayname is not None and len(displayname) > MAX_DISPLAYNAME:
            raise errors.invalid_param(f"'displayname' must be at most {MAX_DISPLAYNAME} characters")
        avatar_url = _optional(body, "avatar_url", str)
        if avatar_url and not avatar_url.startswith("mxc://"):
            raise errors.invalid_param("'avatar_url' must be an mxc:// URI")
        admin = _optional(body, "admin", bool)
        deactivated = _optional(body, "deactivated", bool)
        household = _optional(body, "household", bool)
        logout_devices = _optional(body, "logout_devices", bool)
        row = await admin_rows.user(self.hs.db, user_id)
        if row is None:
            if not is_valid_localpart(user_id[1:].split(":", 1)[0]):
                raise errors.invalid_param("The user id's localpart may hold only a-z, 0-9 and ._=-/+")
            if deactivated:
                raise errors.invalid_param("A new account cannot be deactivated")
            await self.hs.accounts.create_user(user_id, password, admin=bool(admin),
                                               household=True if household is None else household)
            await self._set_profile(user_id, displayname, avatar_url)
            return True
        reactivating = row.deactivated and deactivated is False
        if reactivating and password is None:
            raise errors.invalid_param("Must provide a password to re-activate an account.")
        if row.deactivated and not reactivating and password is not None:
            raise errors.invalid_param("The account is deactivated: set 'deactivated': false with the password")
        if admin is False and user_id == requester_id:
            raise errors.invalid_param("You may not demote yourself.")
        if password is not None and not row.deactivated:
            await self.hs.accounts.change_password(user_id, password, None, logout_devices is not False)
        if reactivating:
            hashed = await asyncio.to_thread(hash_password, password or "")

            def reactivate(conn: sqlite3.Connection) -> None:
                account_rows.set_password(conn, user_id, hashed)
                admin_rows.clear_deactivated(conn, user_id)

            await self.hs.db.write(reactivate)
        if admin is not None or household is not None:
            def flags(conn: sqlite3.Connection) -> None:
                if admin is not None:
                    admin_rows.set_admin(conn, user_id, admin)
                if household is not None:
                    admin_rows.set_household(conn, user_id, household)

            await self.hs.db.write(flags)
            self.hs.accounts.forget_user(user_id)  # cached requesters carry the old admin flag
        await self._set_profile(user_id, displayname, avatar_url)
        if deactivated and not row.deactivated:
            await self.deactivate(user_id)
        return False

    async def _set_profile(self, user_id: str, displayname: str | None, avatar_url: str | None) -> None:
        if displayname is not None:
            await self.hs.accounts.set_profile_field(user_id, "displayname", displayname or None)
        if avatar_url is not None:
            await self.hs.accounts.set_profile_field(user_id, "avatar_url", avatar_url or None)

    async def deactivate(self, user_id: str) -> None:
        """As the user's own `/account/deactivate` (service/deactivation.py): no password, no
        device, no token, every live session ended, every room left; marked deactivated."""
        await self._existing(user_id)
        await self.hs.deactivation.deactivate(user_id)

    async def _existing(self, user_id: str) -> admin_rows.UserRow:
        row = await admin_rows.user(self.hs.db, self.local_user(user_id))
        if row is None:
            raise errors.not_found("User not found")
        return row

    async def joined_rooms(self, user_id: str) -> dict[str, Any]:
        await self._existing(user_id)
        rooms = sorted(self.hs.rooms.joined_room_ids(user_id))
        return {"joined_rooms": rooms, "total": len(rooms)}

    # -- devices ---------------------------------------------------------------------------------

    async def devices(self, user_id: str) -> dict[str, Any]:
        await self._existing(user_id)
        devices = [dict(d, user_id=user_id, last_seen_user_agent=None, dehydrated=False)
                   for d in await self.hs.devices.of_user(user_id)]
        return {"devices": devices, "total": len(devices)}

    async def add_device(self, user_id: str, device_id: str, display_name: str | None, psk: bool = False,
                         exist_ok: bool = False) -> tuple[str, tuple[str, str] | None] | None:
        """A new device with a fresh access token (and a coaps key when asked), in one
        transaction: a PSK identity already taken leaves nothing behind. A device id in use is
        refused (None with `exist_ok`, as Synapse's admin API does nothing then)."""
        row = await self._existing(user_id)
        if row.deactivated:
            raise errors.invalid_param(f"{user_id} is deactivated")
        if psk and self.ops.make_psk is None:
            raise errors.invalid_param("This hub cannot make coaps keys")
        if await device_rows.device(self.hs.db, user_id, device_id) is not None:
            if exist_ok:
                return None
            raise errors.invalid_param(f"The device {device_id} exists already")
        make_psk = self.ops.make_psk

        def write(conn: sqlite3.Connection) -> tuple[str, tuple[str, str] | None]:
            token = account_rows.insert_device_token(conn, user_id, device_id, display_name)
            if not psk or make_psk is None:
                return token, None
            try:
                return token, make_psk(conn, user_id, device_id)
            except ValueError as exc:  # the identity belongs to another account's device
                raise errors.invalid_param(str(exc)) from None

        return await self.hs.db.write(write)

    async def revoke_device(self, user_id: str, device_id: str) -> None:
        """Delete the device: its tokens die now, and with them its live MQTT connections and CoAP
        observations (as a logout); its coaps key answers 4.01 from then on."""
        await self._existing(user_id)
        if not await self.hs.devices.delete(user_id, [device_id]):
            raise errors.not_found("Device not found")

    def device_setup(self, host_header: str | None, user_id: str, device_id: str, token: str,
                     psk: tuple[str, str] | None) -> dict[str, Any]:
        """The page's once-only answer: settings, snippets and their QR code."""
        conf = device_setup.settings(device_setup.hub_host(host_header, self.server_name), self.server_name,
                                     self.ops.listeners)
        return {"settings": conf,
                "snippets": device_setup.snippets(conf, user_id, device_id, token, psk),
                "qr_code": device_setup.qr_svg_data_uri(device_setup.qr_payload(conf, user_id, device_id, token, psk))}

    # -- rooms -----------------------------------------------------------------------------------

    async def _room_summaries(self) -> list[dict[str, Any]]:
        public = set(await room_rows.public_room_ids(self.hs.db))
        out = []
        for room_id, version in await room_rows.room_versions(self.hs.db):
            out.append(await self._summary(room_id, version, room_id in public))
        return out

    async def _summary(self, room_id: str, version: str, public: bool) -> dict[str, Any]:
        room = await self.hs.rooms.get_room(room_id)
        state: dict[tuple[str, str], dict[str, Any]] = {key: ev.content for key, ev in room.state.items()}
        create = room.state.get(("m.room.create", ""))
        if create is not None:
            state[("m.room.create", "")] = dict(create.content, _sender=create.sender)
        return admin_rules.room_summary(room_id, version, state, room.joined_users(), self.server_name, public)

    async def list_rooms(self, query: dict[str, list[str]]) -> dict[str, Any]:
        admin_rules.list_rooms([], query)  # bad parameters answer 400 before any room is read
        return admin_rules.list_rooms(await self._room_summaries(), query)

    async def room(self, room_id: str) -> dict[str, Any]:
        if not room_id.startswith("!"):
            raise errors.invalid_param(f"{room_id[:60]!r} is not a room id")
        versions = dict(await room_rows.room_versions(self.hs.db))
        if room_id not in versions:
            raise errors.not_found("Room not found")
        summary = await self._summary(room_id, versions[room_id],
                                      room_id in set(await room_rows.public_room_ids(self.hs.db)))
        room = await self.hs.rooms.get_room(room_id)
        joined = room.joined_users()
        summary.update({
            "avatar": room.state_content("m.room.avatar").get("url"),
            "topic": room.state_content("m.room.topic").get("topic"),
            "joined_local_devices": 0,
            "forgotten": False,
        })
        local = [u for u in joined if u.endswith(":" + self.server_name)]
        for user in local:
            summary["joined_local_devices"] += len(await self.hs.devices.of_user(user))
        return summary


def _optional(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise errors.invalid_param(f"'{key}' must be a {'boolean' if kind is bool else 'string'}")
    return value
