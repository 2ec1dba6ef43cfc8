"""First run (issue 18): while the hub has no admin, the web page's setup view creates the first
one with the one-time setup code the hub printed (matrix_core/setup_rules.py has the code and the
throttle). gateway/setup_code.py makes the code at start-up and arms this service with its digest;
the service keeps only that digest, and once an admin exists (made here, or by the CLI) the code is
dead for good."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .. import errors, setup_rules
from ..identifiers import is_valid_localpart, user_id_for
from .accounts import Accounts

log = logging.getLogger(__name__)


class FirstRunSetup:
    def __init__(self, accounts: Accounts, throttle: setup_rules.SetupThrottle | None = None) -> None:
        self.accounts = accounts
        self.throttle = throttle or setup_rules.SetupThrottle()
        self._digest: bytes | None = None  # None: not armed (an admin existed at start, or setup is done)
        self._on_done: Callable[[], None] = lambda: None
        # One setup at a time: concurrent right codes create exactly one admin.
        self._lock = asyncio.Lock()

    def arm(self, code_digest: bytes, on_done: Callable[[], None]) -> None:
        """Accept the code with this digest until an admin exists; `on_done` then forgets it (the
        code file in the data dir)."""
        self._digest = code_digest
        self._on_done = on_done

    async def needed(self) -> bool:
        """Whether the page should show the setup view: armed and still no admin."""
        if self._digest is None:
            return False
        if await self.accounts.admin_user_ids():  # `matrix-gateway user add --admin` meanwhile
            self._finish()
            return False
        return True

    async def complete(self, code: str, localpart: str, password: str, address: str) -> dict[str, Any]:
        """Check the code (throttled), create the admin, and sign it in like /login does."""
        if not await self.needed():
            raise errors.forbidden("This hub is already set up: sign in with the admin account")
        self.throttle.check(address)
        assert self._digest is not None
        if not setup_rules.matches(code, self._digest):
            self.throttle.failed(address)
            log.warning("wrong setup code from %s", address)
            raise errors.forbidden("Wrong setup code: use the code the hub printed on its console and in its log "
                                   "(`matrix-gateway setup-code` prints it again)")
        async with self._lock:
            if not await self.needed():  # another request with the right code got here first
                raise errors.forbidden("This hub is already set up: sign in with the admin account")
            user_id = user_id_for(localpart, self.accounts.server_name)
            if await self.accounts.user_exists(user_id):
                raise errors.MatrixError(400, "M_USER_IN_USE", f"{user_id} exists already: choose another user name")
            await self.accounts.create_user(user_id, password, admin=True, household=True)
            self._finish()
        log.info("first run: created the admin account %s; the setup code is no longer valid", user_id)
        return await self.accounts.issue_token(user_id, None, "Hub web page")

    def _finish(self) -> None:
        if self._digest is None:
            return
        self._digest = None
        try:
            self._on_done()
        except OSError as exc:
            log.warning("could not remove the setup code file: %s", exc)


def check_new_admin(localpart: Any, password: Any) -> tuple[str, str]:
    """The user name and password of a first admin, or the 400 that names the rule."""
    if not isinstance(localpart, str) or not is_valid_localpart(localpart) or len(localpart) > 64:
        raise errors.MatrixError(400, "M_INVALID_USERNAME", "The user name must be 1-64 characters of "
                                                            "a-z, 0-9 and . _ = - / +")
    if not isinstance(password, str):
        raise errors.MatrixError(400, "M_WEAK_PASSWORD", "The password must be a string")
    problem = setup_rules.password_problem(password)
    if problem is not None:
        raise errors.MatrixError(400, "M_WEAK_PASSWORD", problem)
    return localpart, password
