"""Accounts: authentication of access tokens, password login, devices, profiles."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .. import errors
from ..identifiers import random_string, user_id_for
from ..passwords import check_password, hash_password
from ..ratelimit import LoginThrottle
from ..store import Database
from ..store import account_admin as account_admin_rows
from ..store import accounts as account_rows
from ..store import devices as device_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is calling: the authenticated user and device behind an access token."""

    user_id: str
    device_id: str
    is_admin: bool
    access_token: str


@dataclass(frozen=True, slots=True)
class TokensRevoked:
    """Access tokens that stopped working (logout, logout all): every live session opened with
    one of them (an MQTT connection, a CoAP observation) must end now, not at its next request.

    `device_id` is None when every device of the user lost its tokens. `tokens` names exactly the
    tokens revoked, so a listener decides without a database read; sessions authenticated with
    the account password are not covered (the password still works)."""

    user_id: str
    device_id: str | None
    tokens: frozenset[str]


#: Told, synchronously after the COMMIT and before the revoking request is answered.
RevocationListener = Callable[[TokensRevoked], None]


class Accounts:
    def __init__(self, db: Database, server_name: str, login_throttle: LoginThrottle | None = None) -> None:
        self.db = db
        self.server_name = server_name
        self.login_throttle = login_throttle or LoginThrottle()
        self._token_cache: dict[str, Requester] = {}
        self._revocation_listeners: list[RevocationListener] = []
        # Bumped at every revocation: a token lookup that was reading while one happened reads
        # again, so a revoked token is never cached (nor handed to a front end) after the fact.
        self._revocations = 0
        # Set by the federation front end: a remote user's profile via /query/profile.
        self.remote_profile: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        # Set by the application services (service/appservice.py) when any is registered: the
        # requester of an as_token (None: not one), and asking an AS about an unknown user of its.
        self.appservice_requester: Callable[[str], Awaitable[Requester | None]] | None = None
        self.query_user: Callable[[str], Awaitable[bool]] | None = None

    def local_user_id(self, localpart_or_id: str) -> str:
        return user_id_for(localpart_or_id, self.server_name)

    async def authenticate(self, token: str | None) -> Requester:
        if not token:
            raise errors.missing_token()
        cached = self._token_cache.get(token)
        if cached is not None:
            return cached
        if self.appservice_requester is not None:
            as_requester = await self.appservice_requester(token)
            if as_requester is not None:
                return as_requester
        while True:
            revocations = self._revocations
            row = await account_rows.token_owner(self.db, token)
            if revocations == self._revocations:
                break
        if row is None:
            raise errors.unknown_token()
        requester = Requester(row[0], row[1], row[2], token)
        if len(self._token_cache) > 10_000:
            self._token_cache.clear()
        self._token_cache[token] = requester
        return requester

    async def user_exists(self, user_id: str) -> bool:
        return await account_rows.user_known(self.db, user_id)

    async def admin_user_ids(self) -> set[str]:
        """The hub admins (`matrix-gateway user add --admin`)."""
        return await account_rows.admin_user_ids(self.db)

    async def household_user_ids(self) -> set[str]:
        """The household (`matrix-gateway user add`, not `--guest`): who shares the topic rooms."""
        return await account_rows.household_user_ids(self.db)

    async def device_token(self, user_id: str, device_id: str) -> str:
        """An access token of the device (coaps: the PSK identity names the device)."""
        token = await account_rows.device_token(self.db, user_id, device_id)
        if token is None:
            raise errors.unknown_token()
        return token

    async def add_device(self, user_id: str, device_id: str, display_name: str | None) -> str:
        """Create a device with a fresh access token: the CLI's `device add` (insert_device_token),
        for the web page's "Add device". A device id already in use is refused, not re-issued."""
        if not await self.user_exists(user_id):
            raise errors.not_found(f"No such user {user_id}")
        if await device_rows.device(self.db, user_id, device_id) is not None:
            raise errors.invalid_param(f"The device {device_id} exists already")
        return await self.db.write(
            lambda conn: account_rows.insert_device_token(conn, user_id, device_id, display_name))

    async def create_user(self, user_id: str, password: str | None, admin: bool = False,
                          household: bool = True) -> None:
        """Store a new account. scrypt runs first, in a worker thread: inside the write it would
        hold the single writer thread (and every other write) for its ~50 ms. `household`: False
        for an account that joins only rooms it is invited to (a guest, an application service's
        users)."""
        hashed = await asyncio.to_thread(hash_password, password) if password else None
        await self.db.write(lambda conn: account_rows.insert_user(conn, user_id, hashed, admin, household))

    async def issue_token(self, user_id: str, device_id: str | None, display_name: str | None) -> dict[str, Any]:
        """A new access token for an existing account, no password (an application service's
        `m.login.application_service` registration)."""
        device = device_id or random_string(10).upper()
        token = await self.db.write(
            lambda conn: account_rows.insert_device_token(conn, user_id, device, display_name))
        return {"user_id": user_id, "access_token": token, "device_id": device, "home_server": self.server_name}

    async def check_credentials(self, localpart_or_id: str, password: str, address: str | None) -> str | None:
        """The user id if the password is right, else None (scrypt runs off the event loop).

        `address` is the client's IP, whatever the protocol: password guessing is throttled here
        for all of them (ratelimit.LoginThrottle), raising M_LIMIT_EXCEEDED; None only for a
        password the hub itself just set (registration).
        """
        user_id = self.local_user_id(localpart_or_id)
        attempt = self.login_throttle.attempt(user_id, address) if address is not None else None
        stored = await account_rows.password_hash(self.db, user_id)
        if stored is None:
            return None
        ok = await asyncio.get_running_loop().run_in_executor(None, check_password, password, stored)
        if not ok:
            return None
        if attempt is not None:
            self.login_throttle.succeeded(attempt)
        return user_id

    async def login(self, localpart_or_id: str, password: str, device_id: str | None,
                    display_name: str | None, address: str | None) -> dict[str, Any]:
        user_id = await self.check_credentials(localpart_or_id, password, address)
        if user_id is None:
            raise errors.forbidden("Invalid username or password")
        device = device_id or random_string(10).upper()
        token = await self.db.write(
            lambda conn: account_rows.insert_device_token(conn, user_id, device, display_name)
        )
        return {
            "user_id": user_id,
            "access_token": token,
            "device_id": device,
            "home_server": self.server_name,
        }

    def on_revoked(self, listener: RevocationListener) -> Callable[[], None]:
        """Register a front end to be told of revoked tokens (at its start-up); returns the
        function that unregisters it."""
        self._revocation_listeners.append(listener)

        def remove() -> None:
            if listener in self._revocation_listeners:
                self._revocation_listeners.remove(listener)

        return remove

    def _revoked(self, revoked: TokensRevoked) -> None:
        """After the tokens' deletion is committed: forget them, then tell every listener."""
        self._revocations += 1
        for token in revoked.tokens:
            self._token_cache.pop(token, None)
        for listener in list(self._revocation_listeners):
            try:
                listener(revoked)
            except Exception:  # one front end's bug must not keep the others' sessions open
                log.exception("token revocation listener failed")

    async def logout(self, requester: Requester) -> None:
        """Revoke the token, and delete its device when that was the device's last token (Synapse
        deletes a logged-out client's device: it leaves the device list)."""
        await self.db.write(lambda conn: device_rows.delete_token_and_lone_device(
            conn, requester.user_id, requester.device_id, requester.access_token))
        self._revoked(TokensRevoked(requester.user_id, requester.device_id, frozenset([requester.access_token])))

    async def logout_all(self, requester: Requester) -> None:
        """Every token and every device of the user goes (Synapse's /logout/all)."""
        def delete(conn: Any) -> list[str]:
            tokens = account_rows.delete_all_tokens(conn, requester.user_id)
            device_rows.delete_devices(conn, requester.user_id, None)
            return tokens

        tokens = await self.db.write(delete)
        self._forget_user(requester.user_id)
        self._revoked(TokensRevoked(requester.user_id, None, frozenset(tokens) | {requester.access_token}))

    def forget_user(self, user_id: str) -> None:
        """Drop the user's cached requesters: an admin changed a flag they carry (`is_admin`)."""
        self._forget_user(user_id)

    def _forget_user(self, user_id: str) -> None:
        for token, cached in list(self._token_cache.items()):
            if cached.user_id == user_id:
                del self._token_cache[token]

    def cached(self, token: str) -> Requester | None:
        """The requester of a token already authenticated (no database read): for bookkeeping
        that must cost nothing per request, such as a device's last-seen time."""
        return self._token_cache.get(token)

    async def delete_devices(self, user_id: str, device_ids: list[str] | None, keep_token: str | None = None) -> list[str]:
        """Delete devices (None: all of the user's) with their tokens, except the device that
        holds `keep_token` when given, whose other tokens go but which stays (a password change
        keeps the session that made it). Live sessions of the revoked tokens end through the
        revocation listeners, one TokensRevoked per device. Returns the deleted device ids."""
        deleted = await self.db.write(
            lambda conn: device_rows.delete_devices_keeping(conn, user_id, device_ids, keep_token))
        self._revoked_devices(user_id, deleted)
        return [device_id for device_id in deleted.devices if device_id != deleted.kept_device]

    def _revoked_devices(self, user_id: str, deleted: device_rows.Deleted) -> None:
        for device_id, tokens in deleted.devices.items():
            self._revoked(TokensRevoked(user_id, device_id, frozenset(tokens)))

    async def change_password(self, user_id: str, new_password: str, keep_token: str | None,
                              logout_devices: bool) -> None:
        """Set a new password and, with `logout_devices` (the spec's default), delete every other
        device, ending its sessions; one transaction. scrypt runs first, off the writer."""
        hashed = await asyncio.to_thread(hash_password, new_password)

        def write(conn: Any) -> device_rows.Deleted:
            account_rows.set_password(conn, user_id, hashed)
            if not logout_devices:
                return device_rows.Deleted({}, None)
            return device_rows.delete_devices_keeping(conn, user_id, None, keep_token)

        self._revoked_devices(user_id, await self.db.write(write))

    async def deactivate(self, user_id: str) -> None:
        """No login again: the password goes and every device with its tokens, in one
        transaction. The user id stays taken (it can never be given to someone else)."""
        def write(conn: Any) -> tuple[device_rows.Deleted, list[str]]:
            account_rows.clear_password(conn, user_id)
            account_admin_rows.mark_deactivated(conn, user_id)  # the admin API shows it (issue 18)
            deleted = device_rows.delete_devices_keeping(conn, user_id, None, None)
            return deleted, account_rows.delete_all_tokens(conn, user_id)  # tokens without a device row

        deleted, rest = await self.db.write(write)
        self._forget_user(user_id)
        self._revoked_devices(user_id, deleted)
        if rest:
            self._revoked(TokensRevoked(user_id, None, frozenset(rest)))

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        if not user_id.endswith(":" + self.server_name) and self.remote_profile is not None:
            return await self.remote_profile(user_id)
        row = await account_rows.profile(self.db, user_id)
        if row is None and self.query_user is not None and await self.query_user(user_id):
            row = await account_rows.profile(self.db, user_id)  # an application service made it now
        if row is None:
            raise errors.not_found("Profile was not found.")
        profile: dict[str, Any] = {}
        if row[0] is not None:
            profile["displayname"] = row[0]
        if row[1] is not None:
            profile["avatar_url"] = row[1]
        return profile

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        account_rows.PROFILE_COLUMNS[field]  # KeyError for an unknown field, before any write
        await self.db.write(lambda conn: account_rows.set_profile_field(conn, user_id, field, value))
