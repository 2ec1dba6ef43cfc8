"""Account rows: users, devices, access tokens. Plain sqlite3 functions, usable from the writer
thread and from the CLI (which may run beside a live hub: WAL lets both write)."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from ..clock import now_ms
from ..identifiers import new_access_token

if TYPE_CHECKING:
    from .database import Database


def user_exists(conn: sqlite3.Connection, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def has_admin(conn: sqlite3.Connection) -> bool:
    """Whether any hub admin exists (first-run provisioning creates one only once)."""
    return conn.execute("SELECT 1 FROM users WHERE admin = 1 LIMIT 1").fetchone() is not None


def _check_hash(password_hash: str | None) -> None:
    # A plain password passed here by mistake would be stored as if hashed: refuse it loudly.
    if password_hash is not None and not password_hash.startswith("scrypt$"):
        raise ValueError("insert_user/set_password take passwords.hash_password(...), not a password")


def insert_user(conn: sqlite3.Connection, user_id: str, password_hash: str | None, admin: bool,
                household: bool = True) -> None:
    """A new account; `password_hash` from passwords.hash_password (None: no password login).
    Hashed by the caller beforehand: scrypt costs ~50 ms of CPU, which inside a write would hold
    the single writer thread (and every other write) that long. `household`: whether it shares
    the broker's topic rooms (False: a guest, `user add --guest`)."""
    _check_hash(password_hash)
    conn.execute(
        "INSERT INTO users (user_id, password_hash, admin, displayname, created_ts, household) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, password_hash, int(admin), user_id[1:].split(":")[0], now_ms(), int(household)),
    )


def set_password(conn: sqlite3.Connection, user_id: str, password_hash: str) -> None:
    _check_hash(password_hash)
    conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id))


def clear_password(conn: sqlite3.Connection, user_id: str) -> None:
    """No password login any more (a deactivated account)."""
    conn.execute("UPDATE users SET password_hash = NULL WHERE user_id = ?", (user_id,))


#: Profile fields and their columns (the only columns `set_profile_field` writes).
PROFILE_COLUMNS = {"displayname": "displayname", "avatar_url": "avatar_url"}


def set_profile_field(conn: sqlite3.Connection, user_id: str, field: str, value: str | None) -> None:
    column = PROFILE_COLUMNS[field]
    conn.execute(f"UPDATE users SET {column} = ? WHERE user_id = ?", (value, user_id))


async def token_owner(db: Database, token: str) -> tuple[str, str, bool] | None:
    """(user id, device id, is admin) of an access token, or None if no such token."""
    row = await db.fetchone(
        "SELECT t.user_id, t.device_id, u.admin FROM access_tokens t JOIN users u ON u.user_id = t.user_id "
        "WHERE t.token = ?",
        (token,),
    )
    return None if row is None else (row[0], row[1], bool(row[2]))


async def device_token(db: Database, user_id: str, device_id: str) -> str | None:
    """One access token of the device (a coaps PSK identity names the device, not a token)."""
    row = await db.fetchone(
        "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ? LIMIT 1", (user_id, device_id))
    return None if row is None else str(row[0])


async def user_known(db: Database, user_id: str) -> bool:
    return await db.fetchone("SELECT 1 FROM users WHERE user_id = ?", (user_id,)) is not None


async def admin_user_ids(db: Database) -> set[str]:
    return {row[0] for row in await db.fetchall("SELECT user_id FROM users WHERE admin = 1")}


async def household_user_ids(db: Database) -> set[str]:
    """The household: local accounts that share the broker's topic rooms (not guests)."""
    return {row[0] for row in await db.fetchall("SELECT user_id FROM users WHERE household = 1")}


async def password_hash(db: Database, user_id: str) -> str | None:
    """The stored hash; None for no such user or an account without password login."""
    row = await db.fetchone("SELECT password_hash FROM users WHERE user_id = ?", (user_id,))
    return row[0] if row is not None and row[0] else None


def insert_device_token(
    conn: sqlite3.Connection, user_id: str, device_id: str, display_name: str | None = None
) -> str:
    """Create (or keep) the device and give it a fresh access token."""
    ts = now_ms()
    conn.execute(
        "INSERT OR IGNORE INTO devices (user_id, device_id, display_name, created_ts) VALUES (?, ?, ?, ?)",
        (user_id, device_id, display_name, ts),
    )
    while True:
        token = new_access_token()
        try:
            conn.execute(
                "INSERT INTO access_tokens (token, user_id, device_id, created_ts) VALUES (?, ?, ?, ?)",
                (token, user_id, device_id, ts),
            )
            return token
        except sqlite3.IntegrityError:  # astronomically unlikely collision: draw again
            continue


def delete_token(conn: sqlite3.Connection, token: str) -> None:
    conn.execute("DELETE FROM access_tokens WHERE token = ?", (token,))


def delete_all_tokens(conn: sqlite3.Connection, user_id: str) -> list[str]:
    """Delete every access token of the user; returns them (live sessions opened with them end)."""
    tokens = [row[0] for row in conn.execute("SELECT token FROM access_tokens WHERE user_id = ?", (user_id,))]
    conn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
    return tokens


async def profile(db: Database, user_id: str) -> tuple[str | None, str | None] | None:
    """(displayname, avatar_url) of a local account, None if there is no such account."""
    row = await db.fetchone("SELECT displayname, avatar_url FROM users WHERE user_id = ?", (user_id,))
    return None if row is None else (row[0], row[1])


async def all_profiles(db: Database) -> list[tuple[str, str | None, str | None]]:
    """(user id, displayname, avatar_url) of every local account: the user directory's search
    matches over them (a hub has tens of accounts, not millions)."""
    return [(str(r[0]), r[1], r[2]) for r in await db.fetchall("SELECT user_id, displayname, avatar_url FROM users")]
