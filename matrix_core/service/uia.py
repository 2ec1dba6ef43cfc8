"""User-interactive authentication sessions, kept in memory with an expiry (matrix_core/uia.py
is the state machine; this is its I/O: the sessions, the clock, the password check).

Why in memory: a session lives minutes, between a client's 401 and its retry with the
password; after a restart the client is asked again, which the flow allows. Bounded: at most
`MAX_SESSIONS_PER_USER` per account (the oldest goes) and `MAX_SESSIONS` in the hub.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import errors, uia
from ..clock import now_ms
from ..identifiers import random_string
from .accounts import Accounts, Requester

MAX_SESSIONS_PER_USER = 8
MAX_SESSIONS = 2000


class UserInteractiveAuth:
    def __init__(self, accounts: Accounts, clock: Callable[[], int] = now_ms) -> None:
        self.accounts = accounts
        self.clock = clock
        self._sessions: dict[str, uia.Session] = {}  # insertion order: oldest first

    async def check(self, requester: Requester, body: dict[str, Any], op: str, address: str | None) -> None:
        """Return when the request's `auth` completes a flow; otherwise raise its 401 (UIA body),
        or a plain error for a malformed `auth` (400) or a session that is not this request's.
        Nothing is stored but the session itself."""
        auth = uia.parse_auth(body.get("auth"))
        now = self.clock()
        self._expire(now)
        if auth is not None and auth.session_id is not None:
            session = self._sessions.get(auth.session_id)
            if session is None:
                raise errors.MatrixError(400, "M_UNKNOWN", "Unknown or expired authentication session")
        else:
            session = self._new(requester.user_id, op, now)
        action = uia.step(session, auth, requester.user_id, op)
        if isinstance(action, uia.AuthRequired):
            raise action
        # The password throttle (per account and address) applies here as at login.
        user_id = self.accounts.local_user_id(action.user)
        if user_id != requester.user_id:
            raise errors.forbidden("Invalid auth: the identifier names another user")
        if await self.accounts.check_credentials(user_id, action.password, address) != requester.user_id:
            raise uia.wrong_password(session)
        session = uia.completed(session, uia.PASSWORD)
        if not uia.done(session):  # (one flow of one stage: never, but the machine allows more)
            self._sessions[session.session_id] = session
            raise uia.AuthRequired(session)
        self._sessions.pop(session.session_id, None)

    def _new(self, user_id: str, op: str, now: int) -> uia.Session:
        mine = [s.session_id for s in self._sessions.values() if s.user_id == user_id]
        for session_id in mine[: max(0, len(mine) - MAX_SESSIONS_PER_USER + 1)]:
            del self._sessions[session_id]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = uia.new_session(random_string(24), user_id, op, now)
        self._sessions[session.session_id] = session
        return session

    def _expire(self, now: int) -> None:
        for session_id in [s.session_id for s in self._sessions.values() if uia.expired(s, now)]:
            del self._sessions[session_id]
