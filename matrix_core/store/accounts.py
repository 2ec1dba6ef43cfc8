"""Account rows: users, devices, access tokens. Plain sqlite3 functions, usable from the writer
thread and from the CLI (which may run beside a live hub: WAL lets both write)."""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from ..clock import now_ms
from ..identifiers import new_access_token
from ..passwords import hash_password

if TYPE_CHECKING:
    from .database import Database


def user_exists(conn: sqlite3.Connection, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def insert_user(conn: sqlite3.Connection, user_id: str, password: str | None, admin: bool) -> None:
    conn.execute(
        "INSERT INTO users (user_id, password_hash, admin, displayname, created_ts) VALUES (?, ?, ?, ?, ?)",
        (user_id, hash_password(password) if password else None, int(admin), user_id[1:].split(":")[0], now_ms()),
    )


def set_password(conn: sqlite3.Connection, user_id: str, password: str) -> None:
    conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", (hash_password(password), user_id))


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
