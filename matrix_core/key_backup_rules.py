"""Server-side key backup (the spec's "Server-side key backups"): shapes and the replace rule,
without I/O.

Why the replace rule matters: several devices back up the same Megolm session; the server keeps
the most useful copy, so a restore can decrypt the most history with the most trust: a verified
key over an unverified one, then the lower `first_message_index` (it decrypts earlier messages),
then the lower `forwarded_count` (fewer hops, closer to the sender). On a full tie the stored
copy stays (no needless etag change).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import errors

MAX_ID_BYTES = 255  # room ids and session ids: the spec's identifier limit
MAX_SESSIONS_PER_REQUEST = 10_000


def wrong_version(current: str | None) -> errors.MatrixError:
    """403 M_WRONG_ROOM_KEYS_VERSION: keys for a backup that is not the current one."""
    extra = {} if current is None else {"current_version": current}
    return errors.MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION",
                              "The version given does not match the current backup version", **extra)


def no_backup(version: str | None = None) -> errors.MatrixError:
    return errors.not_found("No current backup version" if version is None else f"Unknown backup version {version!r}")


def parse_version(raw: str | None) -> int | None:
    """A backup version string as stored (a positive integer); None when it cannot be one (an
    unknown version: the caller answers M_NOT_FOUND)."""
    if raw is None or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    algorithm: str
    auth_data: dict[str, Any]


def check_version_body(body: dict[str, Any]) -> VersionInfo:
    """POST/PUT /room_keys/version's body: `algorithm` (string), `auth_data` (object)."""
    algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
    if not isinstance(algorithm, str) or not algorithm:
        raise errors.bad_json("'algorithm' must be a non-empty string")
    if len(algorithm) > MAX_ID_BYTES:
        raise errors.bad_json("'algorithm' is too long")
    if not isinstance(auth_data, dict):
        raise errors.bad_json("'auth_data' must be an object")
    return VersionInfo(algorithm, auth_data)


@dataclass(frozen=True, slots=True)
class KeyBackupData:
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]


def check_key_data(data: Any, where: str) -> KeyBackupData:
    """One KeyBackupData; M_BAD_JSON naming `where` when it is not of the spec's shape."""
    if not isinstance(data, dict):
        raise errors.bad_json(f"{where} must be an object")
    first, forwarded, verified, session = (data.get("first_message_index"), data.get("forwarded_count"),
                                           data.get("is_verified"), data.get("session_data"))
    for name, value in (("first_message_index", first), ("forwarded_count", forwarded)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise errors.bad_json(f"{where}.{name} must be a non-negative integer")
    assert isinstance(first, int) and isinstance(forwarded, int)  # (for the type checker)
    if not isinstance(verified, bool):
        raise errors.bad_json(f"{where}.is_verified must be a boolean")
    if not isinstance(session, dict):
        raise errors.bad_json(f"{where}.session_data must be an object")
    return KeyBackupData(first, forwarded, verified, session)


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise errors.invalid_param(f"Invalid {what}")
    return value


def check_room_id(value: str) -> str:
    return _check_id(value, "room id")


def check_session_id(value: str) -> str:
    return _check_id(value, "session id")


def check_sessions(body: Any, room_id: str) -> dict[str, KeyBackupData]:
    """A RoomKeyBackup: {"sessions": {session id: KeyBackupData}}."""
    if not isinstance(body, dict) or not isinstance(body.get("sessions"), dict):
        raise errors.bad_json(f"The keys of {room_id} must be {{\"sessions\": {{...}}}}")
    return {check_session_id(sid): check_key_data(data, f"sessions[{sid!r}]")
            for sid, data in body["sessions"].items()}


def check_rooms(body: dict[str, Any]) -> dict[str, dict[str, KeyBackupData]]:
    """PUT /room_keys/keys's body: {"rooms": {room id: RoomKeyBackup}}, all checked before any is
    stored; at most MAX_SESSIONS_PER_REQUEST sessions."""
    rooms = body.get("rooms")
    if not isinstance(rooms, dict):
        raise errors.bad_json("'rooms' must be an object")
    out = {check_room_id(rid): check_sessions(backup, rid) for rid, backup in rooms.items()}
    if sum(len(s) for s in out.values()) > MAX_SESSIONS_PER_REQUEST:
        raise errors.bad_json(f"At most {MAX_SESSIONS_PER_REQUEST} sessions at once")
    return out


def should_replace(new: KeyBackupData, old: KeyBackupData | None) -> bool:
    """The spec's rule (module docstring): does `new` replace the stored `old`?"""
    if old is None:
        return True
    if new.is_verified != old.is_verified:
        return new.is_verified
    if new.first_message_index != old.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


def key_data_json(data: KeyBackupData) -> dict[str, Any]:
    return {"first_message_index": data.first_message_index, "forwarded_count": data.forwarded_count,
            "is_verified": data.is_verified, "session_data": data.session_data}
