"""Cross-signing keys (master, self-signing, user-signing: one of each per user, the latest upload)
and the signatures uploaded through /keys/signatures/upload.

`cross_signing_signatures.target_key` is a device id for a device's key, or the master key's key
id ("ed25519:<public key>") for a master key: a replaced master key's signatures then simply stop
matching, as the spec wants (a new master key starts trust from scratch). `stream_id` rises with
every key change (MAX + 1 in the writer's transaction), for the device-list stream and the
federation `m.signing_key_update` that will read changes after a position.
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "cross_signing"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE cross_signing_keys (
            user_id TEXT NOT NULL,
            usage TEXT NOT NULL,
            key_json TEXT NOT NULL,
            stream_id INTEGER NOT NULL,
            PRIMARY KEY (user_id, usage)
        );
        CREATE INDEX cross_signing_keys_stream ON cross_signing_keys (stream_id);
        CREATE TABLE cross_signing_signatures (
            target_user TEXT NOT NULL,
            target_key TEXT NOT NULL,
            signer_user TEXT NOT NULL,
            signer_key_id TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (target_user, target_key, signer_user, signer_key_id)
        );
        """,
    ),
]

# (target user, target key (device id or master key id), signer user, signer key id, signature)
SignatureRow = tuple[str, str, str, str, str]


def put_keys(conn: sqlite3.Connection, user_id: str, keys: dict[str, str]) -> int:
    """Store the user's keys (usage -> key JSON text) in one transaction; returns the new stream
    position."""
    stream_id = int(conn.execute("SELECT COALESCE(MAX(stream_id), 0) + 1 FROM cross_signing_keys").fetchone()[0])
    for usage, text in keys.items():
        conn.execute(
            "INSERT INTO cross_signing_keys (user_id, usage, key_json, stream_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, usage) DO UPDATE SET key_json = excluded.key_json, stream_id = excluded.stream_id",
            (user_id, usage, text, stream_id))
    return stream_id


def put_signatures(conn: sqlite3.Connection, rows: Iterable[SignatureRow]) -> None:
    conn.executemany(
        "INSERT INTO cross_signing_signatures (target_user, target_key, signer_user, signer_key_id, signature) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user, target_key, signer_user, signer_key_id) "
        "DO UPDATE SET signature = excluded.signature", list(rows))


async def keys_of(db: Database, user_ids: list[str]) -> dict[str, dict[str, str]]:
    """user -> usage -> key JSON text, for the users that have keys."""
    out: dict[str, dict[str, str]] = {}
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start:start + 500]
        rows = await db.fetchall(
            f"SELECT user_id, usage, key_json FROM cross_signing_keys WHERE user_id IN ({','.join('?' * len(chunk))})",
            chunk)
        for user, usage, text in rows:
            out.setdefault(str(user), {})[str(usage)] = str(text)
    return out


async def signatures_on(db: Database, target_user: str, target_key: str,
                        signer_user: str | None = None) -> list[tuple[str, str, str]]:
    """(signer user, signer key id, signature) on one key, optionally by one signer only."""
    sql = ("SELECT signer_user, signer_key_id, signature FROM cross_signing_signatures "
           "WHERE target_user = ? AND target_key = ?")
    args: list[str] = [target_user, target_key]
    if signer_user is not None:
        sql += " AND signer_user = ?"
        args.append(signer_user)
    return [(str(a), str(b), str(c)) for a, b, c in await db.fetchall(sql, args)]


def delete_device_signatures(conn: sqlite3.Connection, user_id: str, device_id: str) -> None:
    """A deleted device's signatures go with it (for the device code's deletion)."""
    conn.execute("DELETE FROM cross_signing_signatures WHERE target_user = ? AND target_key = ?",
                 (user_id, device_id))
