"""Server-side key backup (`/room_keys/...`): backup versions and the encrypted Megolm session
keys in them. The hub stores what the clients encrypted; it never sees a key (key_backup_rules.py
has the shapes and the spec's replace rule, store/key_backup.py the rows)."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import errors
from .. import key_backup_rules as rules
from ..canonical_json import encode_canonical_json
from ..store import Database
from ..store import key_backup as rows


def _text(obj: dict[str, Any]) -> str:
    return encode_canonical_json(obj).decode("utf-8")


def _key_json(row: rows.KeyRow) -> dict[str, Any]:
    _, _, first, forwarded, verified, data = row
    return {"first_message_index": first, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": json.loads(data)}


class KeyBackup:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- versions -----------------------------------------------------------------------------------

    async def create_version(self, user_id: str, body: dict[str, Any]) -> str:
        info = rules.check_version_body(body)
        auth_data = _text(info.auth_data)
        version = await self.db.write(lambda conn: rows.create_version(conn, user_id, info.algorithm, auth_data))
        return str(version)

    async def get_version(self, user_id: str, raw: str | None) -> dict[str, Any]:
        """The current version (raw None) or a named one: M_NOT_FOUND when there is none."""
        number = None if raw is None else rules.parse_version(raw)
        if raw is not None and number is None:
            raise rules.no_backup(raw)
        row = await rows.version(self.db, user_id, number)
        if row is None:
            raise rules.no_backup(raw)
        version, algorithm, auth_data, etag = row
        return {"algorithm": algorithm, "auth_data": json.loads(auth_data), "version": str(version),
                "etag": str(etag), "count": await rows.count(self.db, user_id, version)}

    async def update_version(self, user_id: str, raw: str, body: dict[str, Any]) -> None:
        """Only `auth_data` may change; the algorithm must stay and a `version` in the body must
        be the path's (M_INVALID_PARAM otherwise)."""
        info = rules.check_version_body(body)
        if "version" in body and body["version"] != raw:
            raise errors.invalid_param("'version' must match the version in the path")
        number = rules.parse_version(raw)
        if number is None:
            raise rules.no_backup(raw)
        auth_data = _text(info.auth_data)

        def write(conn: sqlite3.Connection) -> None:
            row = rows.version_in(conn, user_id, number)
            if row is None:
                raise rules.no_backup(raw)
            if row[1] != info.algorithm:
                raise errors.invalid_param("The algorithm of a backup version cannot change")
            rows.update_auth_data(conn, user_id, number, auth_data)

        await self.db.write(write)

    async def delete_version(self, user_id: str, raw: str) -> None:
        number = rules.parse_version(raw)
        if number is None or not await self.db.write(lambda conn: rows.delete_version(conn, user_id, number)):
            raise rules.no_backup(raw)

    # -- keys ----------------------------------------------------------------------------------------

    @staticmethod
    def _version_param(raw: str | None) -> int:
        if raw is None:
            raise errors.missing_param("The 'version' query parameter is required")
        number = rules.parse_version(raw)
        if number is None:
            raise rules.no_backup(raw)
        return number

    async def _live(self, user_id: str, raw: str | None) -> int:
        number = self._version_param(raw)
        if await rows.version(self.db, user_id, number) is None:
            raise rules.no_backup(raw)
        return number

    async def upload(self, user_id: str, raw: str | None,
                     keys: dict[str, dict[str, rules.KeyBackupData]]) -> dict[str, Any]:
        """Store each session's key where the replace rule says so; only into the current
        version (M_WRONG_ROOM_KEYS_VERSION, 403, naming it; M_NOT_FOUND when there is none)."""
        number = self._version_param(raw)

        def wrong(current: int | None) -> Exception:
            return rules.no_backup(raw) if current is None else rules.wrong_version(str(current))

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            rows.in_current(conn, user_id, number, wrong)
            changed = False
            for room_id, sessions in keys.items():
                for session_id, data in sessions.items():
                    old = rows.key_in(conn, user_id, number, room_id, session_id)
                    stored = None if old is None else rules.KeyBackupData(old[2], old[3], old[4], {})
                    if rules.should_replace(data, stored):
                        rows.put_key(conn, user_id, number, (room_id, session_id, data.first_message_index,
                                                             data.forwarded_count, data.is_verified,
                                                             _text(data.session_data)))
                        changed = True
            if changed:
                rows.bump_etag(conn, user_id, number)
            return rows.count_in(conn, user_id, number)

        count, etag = await self.db.write(write)
        return {"count": count, "etag": str(etag)}

    async def get_keys(self, user_id: str, raw: str | None, room_id: str | None = None,
                       session_id: str | None = None) -> dict[str, Any]:
        number = await self._live(user_id, raw)
        found = await rows.keys(self.db, user_id, number, room_id, session_id)
        if session_id is not None:
            if not found:
                raise errors.not_found("No key backed up for this session")
            return _key_json(found[0])
        if room_id is not None:
            return {"sessions": {row[1]: _key_json(row) for row in found}}
        out: dict[str, Any] = {}
        for row in found:
            out.setdefault(row[0], {"sessions": {}})["sessions"][row[1]] = _key_json(row)
        return {"rooms": out}

    async def delete_keys(self, user_id: str, raw: str | None, room_id: str | None = None,
                          session_id: str | None = None) -> dict[str, Any]:
        number = self._version_param(raw)

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            if rows.version_in(conn, user_id, number) is None:
                raise rules.no_backup(raw)
            if rows.delete_keys(conn, user_id, number, room_id, session_id):
                rows.bump_etag(conn, user_id, number)
            return rows.count_in(conn, user_id, number)

        count, etag = await self.db.write(write)
        return {"count": count, "etag": str(etag)}
