"""User-interactive authentication (the spec's UIA): the state machine, without I/O.

Why UIA at all: deleting a device, changing the password or deactivating the account must not
be possible with a stolen access token alone; the account password is asked again. The hub
offers one flow, `m.login.password`. A session binds the user and the operation (method and
path) it was opened for, so a password entered to delete one device cannot be replayed to
deactivate the account; it expires (`SESSION_LIFETIME_MS`).

`step` decides what a request with its `auth` dict means for a session: answer the 401
challenge (with an error when the attempt was wrong), or check this password (the caller does
the check: it needs the database and scrypt). The caller keeps the sessions (service/uia.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import errors

PASSWORD = "m.login.password"
#: The flows offered: one, the account password.
FLOWS: tuple[tuple[str, ...], ...] = ((PASSWORD,),)
SESSION_LIFETIME_MS = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    user_id: str
    operation: str  # "METHOD path": what the session authorises
    expires_ms: int
    completed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthDict:
    """A request's `auth` parameter, checked for shape."""

    session_id: str | None
    type: str | None
    user: str | None  # the identifier's user (localpart or user id), for m.login.password
    password: str | None


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """The caller checks this password for this user; then `completed(session, PASSWORD)`."""

    session: Session
    user: str
    password: str


class AuthRequired(errors.MatrixError):
    """The 401 answer of UIA: the flows, params and session, with `completed` stages, and an
    errcode only when an attempt failed. A MatrixError so every front end maps it once."""

    def __init__(self, session: Session, errcode: str | None = None, error: str = "") -> None:
        super().__init__(401, errcode or "M_UNAUTHORIZED", error or "Additional authentication is required")
        self.body: dict[str, Any] = {
            "flows": [{"stages": list(flow)} for flow in FLOWS],
            "params": {},
            "session": session.session_id,
            "completed": list(session.completed),
        }
        if errcode is not None:
            self.body.update(errcode=errcode, error=error)

    def to_json(self) -> dict[str, Any]:
        return dict(self.body)


def operation(method: str, segments: list[str]) -> str:
    return f"{method} /{'/'.join(segments)}"


def parse_auth(auth: Any) -> AuthDict | None:
    """The `auth` parameter; None when absent. M_BAD_JSON for a malformed one."""
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise errors.bad_json("'auth' must be an object")
    session_id, kind, password = auth.get("session"), auth.get("type"), auth.get("password")
    if session_id is not None and not isinstance(session_id, str):
        raise errors.bad_json("'auth.session' must be a string")
    if kind is not None and not isinstance(kind, str):
        raise errors.bad_json("'auth.type' must be a string")
    user: str | None = None
    if kind == PASSWORD:
        if not isinstance(password, str):
            raise errors.bad_json("'auth.password' must be a string")
        identifier = auth.get("identifier")
        if isinstance(identifier, dict):
            if identifier.get("type") != "m.id.user" or not isinstance(identifier.get("user"), str):
                raise errors.bad_json("Only m.id.user identifiers are supported")
            user = identifier["user"]
        elif isinstance(auth.get("user"), str):  # the deprecated top-level form
            user = auth["user"]
        else:
            raise errors.bad_json("'auth.identifier' must be an m.id.user identifier")
    return AuthDict(session_id, kind, user, password if isinstance(password, str) else None)


def new_session(session_id: str, user_id: str, op: str, now_ms: int) -> Session:
    return Session(session_id, user_id, op, now_ms + SESSION_LIFETIME_MS)


def expired(session: Session, now_ms: int) -> bool:
    return now_ms >= session.expires_ms


def step(session: Session, auth: AuthDict | None, user_id: str, op: str) -> AuthRequired | CheckPassword:
    """What the request means for its session: a challenge to answer, or a password to check.

    Raises M_FORBIDDEN (403) when the session belongs to another user or operation: that is not
    an attempt the client may retry within the session."""
    if session.user_id != user_id:
        raise errors.forbidden("This authentication session belongs to another user")
    if session.operation != op:
        raise errors.forbidden("Requested operation has changed during the UI authentication session")
    if auth is None or auth.type is None:
        return AuthRequired(session)
    if auth.type != PASSWORD:
        return AuthRequired(session, "M_UNRECOGNIZED", f"Unknown authentication type {auth.type!r}")
    assert auth.user is not None and auth.password is not None  # parse_auth checked them
    return CheckPassword(session, auth.user, auth.password)


def completed(session: Session, stage: str) -> Session:
    return session if stage in session.completed else replace(session, completed=session.completed + (stage,))


def done(session: Session) -> bool:
    """Whether some flow has all its stages completed."""
    return any(all(stage in session.completed for stage in flow) for flow in FLOWS)


def wrong_password(session: Session) -> AuthRequired:
    return AuthRequired(session, "M_FORBIDDEN", "Invalid password")
