"""Account rows the admin API reads and writes (`/_synapse/admin/v2/users...`, service/admin.py):
every account with its flags for the list, the admin flag, and which accounts are deactivated.

Why a table of its own for deactivation: the core's `users` row cannot tell a deactivated
account from one that never had a password (an application service's users), and Synapse's
admin API (and its tools) show `deactivated`. The row is written in the same transaction as the
deactivation itself (service/accounts.py), and removed when an admin reactivates the account.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import now_ms

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "account_admin"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE deactivated_users (
            user_id TEXT PRIMARY KEY,
            deactivated_ts INTEGER NOT NULL
        )
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    admin: bool
    household: bool
    displayname: str | None
    avatar_url: str | None
    creation_ts: int
    deactivated: bool
    last_seen_ts: int | None


_SELECT = (
    "SELECT u.user_id, u.admin, u.household, u.displayname, u.avatar_url, u.created_ts, "
    "d.user_id IS NOT NULL, (SELECT MAX(s.ts) FROM device_last_seen s WHERE s.user_id = u.user_id) "
    "FROM users u LEFT JOIN deactivated_users d ON d.user_id = u.user_id "
)


def _row(row: tuple[Any, ...]) -> UserRow:
    return UserRow(str(row[0]), bool(row[1]), bool(row[2]), row[3], row[4], int(row[5]), bool(row[6]), row[7])


async def all_users(db: Database) -> list[UserRow]:
    """Every local account (a hub has tens, not millions: the admin list filters and pages them
    in memory, admin_rules.py)."""
    return [_row(r) for r in await db.fetchall(_SELECT + "ORDER BY u.user_id")]


async def user(db: Database, user_id: str) -> UserRow | None:
    row = await db.fetchone(_SELECT + "WHERE u.user_id = ?", (user_id,))
    return None if row is None else _row(row)


def mark_deactivated(conn: sqlite3.Connection, user_id: str) -> None:
    """Inside the deactivation's transaction (service/accounts.py deactivate)."""
    conn.execute("INSERT OR IGNORE INTO deactivated_users (user_id, deactivated_ts) VALUES (?, ?)",
                 (user_id, now_ms()))


def clear_deactivated(conn: sqlite3.Connection, user_id: str) -> None:
    """An admin reactivated the account (with a new password, in the same transaction)."""
    conn.execute("DELETE FROM deactivated_users WHERE user_id = ?", (user_id,))


def set_admin(conn: sqlite3.Connection, user_id: str, admin: bool) -> None:
    conn.execute("UPDATE users SET admin = ? WHERE user_id = ?", (int(admin), user_id))


def set_household(conn: sqlite3.Connection, user_id: str, household: bool) -> None:
    conn.execute("UPDATE users SET household = ? WHERE user_id = ?", (int(household), user_id))
