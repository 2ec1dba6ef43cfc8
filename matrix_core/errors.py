"""Typed Matrix errors: the core raises these, each front end maps them once to its own wire form."""
from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error with a Matrix errcode and the HTTP status the client-server API answers with."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.error}
        body.update(self.extra)
        return body


def not_json(error: str = "Content not JSON.") -> MatrixError:
    return MatrixError(400, "M_NOT_JSON", error)


def bad_json(error: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", error)


def invalid_param(error: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", error)


def missing_param(error: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", error)


def missing_token() -> MatrixError:
    return MatrixError(401, "M_MISSING_TOKEN", "Missing access token.")


def unknown_token() -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token.", soft_logout=False)


def forbidden(error: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", error)


def not_found(error: str = "Not found.") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", error)


def too_large(error: str) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", error)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests.", retry_after_ms=retry_after_ms)


def unknown(error: str) -> MatrixError:
    """400 M_UNKNOWN: the spec's answer where it names no errcode (a thread started from an event
    that is itself a relation, a relation to an event the server does not know)."""
    return MatrixError(400, "M_UNKNOWN", error)


def duplicate_annotation() -> MatrixError:
    """A second identical annotation (reaction) by the same user on the same event."""
    return MatrixError(400, "M_DUPLICATE_ANNOTATION", "You already sent this annotation.")


def unrecognized(error: str = "Unrecognized request.") -> MatrixError:
    return MatrixError(404, "M_UNRECOGNIZED", error)


def unsupported_room_version(version: str) -> MatrixError:
    return MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"Room version {version!r} is not supported.")


def exclusive(error: str) -> MatrixError:
    """An alias in a namespace reserved for a component (Synapse's answer for an appservice's)."""
    return MatrixError(400, "M_EXCLUSIVE", error)


def resource_limit_exceeded(error: str, admin_contact: str) -> MatrixError:
    """A per-account quota is full. The spec requires `admin_contact` (whom to ask); Synapse
    answers its resource limits with 403."""
    return MatrixError(403, "M_RESOURCE_LIMIT_EXCEEDED", error, admin_contact=admin_contact)


class AuthError(Exception):
    """An event failed the room's authorization rules (pure-logic verdict, not an HTTP answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def as_matrix_error(self) -> MatrixError:
        return forbidden(self.reason)


class StorageFull(MatrixError):
    """The disk holding the database is full: the write was refused whole and nothing of it was
    stored. A subclass so front ends can tell it from other limits (MQTT 3.1.1 holds back the
    client it disconnected; see frontends/mqtt/full_disk.py)."""


# How long a client should wait before trying a refused write again (CoAP Max-Age, MQTT hold-back).
STORAGE_RETRY_MS = 60_000


def storage_full(admin_contact: str = "") -> StorageFull:
    """HTTP 507 Insufficient Storage; CoAP 5.03 with Max-Age; MQTT 5 reason 0x97 Quota exceeded.
    `admin_contact` as in resource_limit_exceeded (the config's, whom to tell)."""
    return StorageFull(507, "M_RESOURCE_LIMIT_EXCEEDED",
                       "The hub's storage is full: nothing was stored. Try again once its owner has freed "
                       "disk space.", admin_contact=admin_contact, retry_after_ms=STORAGE_RETRY_MS)
