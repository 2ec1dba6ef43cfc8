"""Push rules per user: their own rules (in priority order per kind), the enabled flag and actions
they set on any rule, and the push-rules stream position (/sync's `m.push_rules` account data).

Writes run in the one writer (store/database.py) and check what they depend on (the `before` /
`after` rule, the rule to change) inside the same transaction, raising a Matrix error that undoes
the write: nothing is stored on any error.
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:  # database.py imports migrations, which imports this module
    from .database import Database

COMPONENT = "push_rules"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE push_rules (
            user_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            priority INTEGER NOT NULL,
            rule_json TEXT NOT NULL,
            PRIMARY KEY (user_id, kind, rule_id)
        );
        CREATE TABLE push_rule_settings (
            user_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            enabled INTEGER,
            actions_json TEXT,
            PRIMARY KEY (user_id, kind, rule_id)
        );
        CREATE TABLE push_rules_stream (
            user_id TEXT PRIMARY KEY,
            position INTEGER NOT NULL
        )
        """,
    ),
]

# One user's stored rules: kind -> [rule json] in priority order; (kind, rule_id) -> (enabled, actions).
Settings = dict[tuple[str, str], tuple[bool | None, list[Any] | None]]


async def load_user(db: Database, user_id: str) -> tuple[dict[str, list[dict[str, Any]]], Settings]:
    rules: dict[str, list[dict[str, Any]]] = {}
    for kind, rule_json in await db.fetchall(
            "SELECT kind, rule_json FROM push_rules WHERE user_id = ? ORDER BY kind, priority", (user_id,)):
        rules.setdefault(kind, []).append(json.loads(rule_json))
    settings: Settings = {}
    for kind, rule_id, enabled, actions_json in await db.fetchall(
            "SELECT kind, rule_id, enabled, actions_json FROM push_rule_settings WHERE user_id = ?", (user_id,)):
        settings[(kind, rule_id)] = (None if enabled is None else bool(enabled),
                                     None if actions_json is None else json.loads(actions_json))
    return rules, settings


async def stream_position(db: Database) -> int:
    row = await db.fetchone("SELECT MAX(position) FROM push_rules_stream")
    return int(row[0]) if row and row[0] is not None else 0


async def user_positions(db: Database) -> dict[str, int]:
    """Each user whose rules changed: the stream position of their latest change."""
    return {str(u): int(p) for u, p in await db.fetchall("SELECT user_id, position FROM push_rules_stream")}


def _bump(conn: sqlite3.Connection, user_id: str, position: int) -> None:
    conn.execute("INSERT INTO push_rules_stream (user_id, position) VALUES (?, ?) "
                 "ON CONFLICT (user_id) DO UPDATE SET position = excluded.position", (user_id, position))


def _ordered_ids(conn: sqlite3.Connection, user_id: str, kind: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT rule_id FROM push_rules WHERE user_id = ? AND kind = ? ORDER BY priority", (user_id, kind))]


def put_rule(conn: sqlite3.Connection, user_id: str, kind: str, rule: dict[str, Any], before: str | None,
             after: str | None, max_rules: int, position: int) -> None:
    """Add or replace the user's rule. With `before`/`after` (another of the user's rules of the
    same kind) it goes just there; else a new rule goes first in its kind (highest priority: the
    spec's "most recently added" among equals) and a replaced one keeps its place unless moved."""
    rule_id = rule["rule_id"]
    ids = _ordered_ids(conn, user_id, kind)
    exists = rule_id in ids
    for anchor in (before, after):
        if anchor is not None and (anchor == rule_id or anchor not in ids):
            raise errors.MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {anchor[:80]}")
    if not exists:
        total = conn.execute("SELECT COUNT(*) FROM push_rules WHERE user_id = ?", (user_id,)).fetchone()[0]
        if total >= max_rules:
            raise errors.resource_limit_exceeded(f"At most {max_rules} push rules per user", "")
    if before is not None or after is not None or not exists:
        if exists:
            ids.remove(rule_id)
        if before is not None:
            ids.insert(ids.index(before), rule_id)
        elif after is not None:
            ids.insert(ids.index(after) + 1, rule_id)
        else:
            ids.insert(0, rule_id)
    conn.execute("INSERT INTO push_rules (user_id, kind, rule_id, priority, rule_json) VALUES (?, ?, ?, 0, ?) "
                 "ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET rule_json = excluded.rule_json",
                 (user_id, kind, rule_id, json.dumps(rule, separators=(",", ":"))))
    conn.executemany("UPDATE push_rules SET priority = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                     [(i, user_id, kind, rid) for i, rid in enumerate(ids)])
    # A rule put again starts enabled with the actions it was given.
    conn.execute("DELETE FROM push_rule_settings WHERE user_id = ? AND kind = ? AND rule_id = ?",
                 (user_id, kind, rule_id))
    _bump(conn, user_id, position)


def delete_rule(conn: sqlite3.Connection, user_id: str, kind: str, rule_id: str, position: int) -> None:
    cur = conn.execute("DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                       (user_id, kind, rule_id))
    if cur.rowcount == 0:
        raise errors.not_found("Unknown push rule")
    conn.execute("DELETE FROM push_rule_settings WHERE user_id = ? AND kind = ? AND rule_id = ?",
                 (user_id, kind, rule_id))
    _bump(conn, user_id, position)


def _require(conn: sqlite3.Connection, user_id: str, kind: str, rule_id: str) -> None:
    if conn.execute("SELECT 1 FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                    (user_id, kind, rule_id)).fetchone() is None:
        raise errors.not_found("Unknown push rule")


def set_enabled(conn: sqlite3.Connection, user_id: str, kind: str, rule_id: str, enabled: bool,
                custom: bool, position: int) -> None:
    if custom:
        _require(conn, user_id, kind, rule_id)
    conn.execute("INSERT INTO push_rule_settings (user_id, kind, rule_id, enabled) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET enabled = excluded.enabled",
                 (user_id, kind, rule_id, int(enabled)))
    _bump(conn, user_id, position)


def set_actions(conn: sqlite3.Connection, user_id: str, kind: str, rule_id: str, actions: list[Any],
                custom: bool, position: int) -> None:
    """A user rule's actions are part of its row; a server-default rule's go into its settings."""
    if custom:
        row = conn.execute("SELECT rule_json FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                           (user_id, kind, rule_id)).fetchone()
        if row is None:
            raise errors.not_found("Unknown push rule")
        rule = json.loads(row[0])
        rule["actions"] = actions
        conn.execute("UPDATE push_rules SET rule_json = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                     (json.dumps(rule, separators=(",", ":")), user_id, kind, rule_id))
    else:
        conn.execute("INSERT INTO push_rule_settings (user_id, kind, rule_id, actions_json) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET actions_json = excluded.actions_json",
                     (user_id, kind, rule_id, json.dumps(actions, separators=(",", ":"))))
    _bump(conn, user_id, position)
