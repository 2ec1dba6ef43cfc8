"""The MQTT broker's own tables (frontends/mqtt): topic rules set with `matrix-gateway mqtt map`,
persistent sessions (clean session 0 / session expiry) with their subscriptions, the stream
position each has handled up to and its incoming QoS 2 packet ids awaiting PUBREL, and the
default rooms the broker made for topic trees. Retained messages are room state (the core's).

The component brings its own schema (`MIGRATIONS`, component "mqtt", registered in
migrations.COMPONENTS like every store module's). Writes are plain functions of a sqlite3
connection, run through the core's group commit (`Database.write`) by the hub, or directly by
the CLI (which may run beside a live hub: WAL). Rows are plain values: the store knows nothing
of the broker's classes. A session's row key is `user_id + " " + client_id` (`session_key`), so
two accounts can never share (or take over) each other's session by choosing the same client id.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database, WriteFn

COMPONENT = "mqtt"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE mqtt_rules (
            topic_filter TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            created_ts INTEGER NOT NULL
        );
        CREATE TABLE mqtt_sessions (
            client_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            protocol_level INTEGER NOT NULL,
            expiry_interval INTEGER NOT NULL,
            disconnected_ts INTEGER,
            cursor INTEGER NOT NULL
        );
        CREATE TABLE mqtt_subscriptions (
            client_id TEXT NOT NULL,
            topic_filter TEXT NOT NULL,
            qos INTEGER NOT NULL,
            no_local INTEGER NOT NULL DEFAULT 0,
            retain_as_published INTEGER NOT NULL DEFAULT 0,
            retain_handling INTEGER NOT NULL DEFAULT 0,
            subscription_id INTEGER,
            PRIMARY KEY (client_id, topic_filter)
        );
        CREATE TABLE mqtt_incoming_qos2 (
            client_id TEXT NOT NULL,
            packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)
        );
        """,
    ),
    # Default rooms the broker made for topic trees (alias #mqtt/KEY, the publisher it made the room
    # for: the tree's owner, who may bind topics under it). The broker routes by such an alias only
    # if it made it (or a hub admin did). Aliases from before this step are taken as the broker's:
    # it cannot tell them apart from a squatter's made when the namespace was open (docs/mqtt.md).
    # room_id is NULL from just before the room is created until it is.
    (
        2,
        """
        CREATE TABLE mqtt_default_rooms (
            alias TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            room_id TEXT,
            created_ts INTEGER NOT NULL
        );
        INSERT OR IGNORE INTO mqtt_default_rooms (alias, owner, room_id, created_ts)
            SELECT alias, creator, room_id, 0 FROM room_aliases WHERE substr(alias, 1, 6) = '#mqtt/'
        """,
    ),
    # The household (docs/mqtt.md): default rooms made before it are upgraded once at the next
    # start (topic_rooms.TopicRooms.upgrade_old_rooms): publishing retained messages (state events)
    # is opened to every member. Listed here so a later, deliberate change is never undone.
    (
        3,
        """
        CREATE TABLE IF NOT EXISTS mqtt_household_upgrade (alias TEXT PRIMARY KEY);
        INSERT OR IGNORE INTO mqtt_household_upgrade (alias) SELECT alias FROM mqtt_default_rooms
        """,
    ),
]


def session_key(user_id: str, client_id: str) -> str:
    return f"{user_id} {client_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


# -- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


@dataclass(slots=True)
class SessionRow:
    """One persistent session as stored: what survives a restart (queued messages do not: they
    are read back from the rooms' history after `cursor`)."""

    key: str  # session_key(user_id, client_id)
    user_id: str
    protocol_level: int
    expiry_interval: int
    cursor: int
    disconnected_ts: int | None = None
    subscriptions: list[SubscriptionRow] = field(default_factory=list)
    incoming_qos2: set[int] = field(default_factory=set)

    @property
    def client_id(self) -> str:
        return self.key.split(" ", 1)[1] if " " in self.key else self.key


def save_session(conn: sqlite3.Connection, row: SessionRow) -> None:
    key = row.key
    conn.execute(
        "INSERT OR REPLACE INTO mqtt_sessions (client_id, user_id, protocol_level, expiry_interval, "
        "disconnected_ts, cursor) VALUES (?, ?, ?, ?, ?, ?)",
        (key, row.user_id, row.protocol_level, row.expiry_interval, row.disconnected_ts, row.cursor),
    )
    conn.execute("DELETE FROM mqtt_subscriptions WHERE client_id = ?", (key,))
    conn.executemany(
        "INSERT INTO mqtt_subscriptions (client_id, topic_filter, qos, no_local, retain_as_published, "
        "retain_handling, subscription_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(key, s.topic_filter, s.qos, int(s.no_local), int(s.retain_as_published), s.retain_handling,
          s.subscription_id) for s in row.subscriptions],
    )
    # Added, never replaced: an id committed with its event (add_incoming_qos2) whose PUBREC is
    # not out yet is not in memory yet, and must survive this save. PUBREL removes an id.
    conn.executemany("INSERT OR IGNORE INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES (?, ?)",
                     [(key, pid) for pid in sorted(row.incoming_qos2)])


def save_cursor(conn: sqlite3.Connection, key: str, cursor: int) -> None:
    conn.execute("UPDATE mqtt_sessions SET cursor = ? WHERE client_id = ?", (cursor, key))


def delete_session(conn: sqlite3.Connection, key: str) -> None:
    for table in ("mqtt_sessions", "mqtt_subscriptions", "mqtt_incoming_qos2"):
        conn.execute(f"DELETE FROM {table} WHERE client_id = ?", (key,))


def add_incoming_qos2(conn: sqlite3.Connection, key: str, packet_id: int) -> None:
    conn.execute("INSERT OR IGNORE INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES (?, ?)", (key, packet_id))


def remove_incoming_qos2(conn: sqlite3.Connection, key: str, packet_id: int) -> None:
    conn.execute("DELETE FROM mqtt_incoming_qos2 WHERE client_id = ? AND packet_id = ?", (key, packet_id))


async def load_sessions(db: "Database") -> list[SessionRow]:
    """Every stored persistent session, with its subscriptions and QoS 2 packet ids."""
    out: dict[str, SessionRow] = {}
    for key, user_id, level, expiry, disconnected, cursor in await db.fetchall(
        "SELECT client_id, user_id, protocol_level, expiry_interval, disconnected_ts, cursor FROM mqtt_sessions"
    ):
        out[key] = SessionRow(key, user_id, level, expiry, cursor, disconnected)
    for key, topic_filter, qos, no_local, rap, rh, sub_id in await db.fetchall(
        "SELECT client_id, topic_filter, qos, no_local, retain_as_published, retain_handling, subscription_id "
        "FROM mqtt_subscriptions"
    ):
        row = out.get(key)
        if row is not None:
            row.subscriptions.append(SubscriptionRow(topic_filter, qos, bool(no_local), bool(rap), rh, sub_id))
    for key, pid in await db.fetchall("SELECT client_id, packet_id FROM mqtt_incoming_qos2"):
        row = out.get(key)
        if row is not None:
            row.incoming_qos2.add(pid)
    return list(out.values())


# -- admin rules ----------------------------------------------------------------------------------


async def load_rules(db: "Database") -> list[tuple[str, str]]:
    """(topic filter, room id) of every rule the hub admin set."""
    rows = await db.fetchall("SELECT topic_filter, room_id FROM mqtt_rules")
    return [(f, r) for f, r in rows]


def _transaction(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement in a write transaction of its own (BEGIN IMMEDIATE: the CLI's autocommit
    connection waits for a live hub's writer instead of failing half-way); its rowcount."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        count = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return count


_SET_RULE = "INSERT OR REPLACE INTO mqtt_rules (topic_filter, room_id, created_ts) VALUES (?, ?, ?)"
_DELETE_RULE = "DELETE FROM mqtt_rules WHERE topic_filter = ?"


def set_rule(conn: sqlite3.Connection, topic_filter: str, room_id: str) -> None:
    """Add or replace a rule (the CLI's `mqtt map`), committed."""
    _transaction(conn, _SET_RULE, (topic_filter, room_id, now_ms()))


def delete_rule(conn: sqlite3.Connection, topic_filter: str) -> bool:
    """Remove a rule (the CLI's `mqtt unmap`), committed; whether there was one."""
    return _transaction(conn, _DELETE_RULE, (topic_filter,)) > 0


def put_rule(topic_filter: str, room_id: str) -> "WriteFn":
    """`set_rule` through the hub's group commit (the admin API, web pages); the broker's rule
    poll picks it up as it does the CLI's."""
    ts = now_ms()

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(_SET_RULE, (topic_filter, room_id, ts))
    return write


def remove_rule(topic_filter: str) -> "WriteFn":
    """`delete_rule` through the hub's group commit; the write's result: whether there was one."""
    def write(conn: sqlite3.Connection) -> bool:
        return conn.execute(_DELETE_RULE, (topic_filter,)).rowcount > 0
    return write


def list_rules(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(topic filter, room id) of every rule, by topic filter."""
    return [(f, r) for f, r in conn.execute("SELECT topic_filter, room_id FROM mqtt_rules ORDER BY topic_filter")]


# -- default rooms (the #mqtt/... aliases the broker made) ----------------------------------------


async def load_default_rooms(db: "Database") -> dict[str, tuple[str, str | None]]:
    """alias -> (owner, room id or None while being created) of the broker's default rooms."""
    rows = await db.fetchall("SELECT alias, owner, room_id FROM mqtt_default_rooms")
    return {alias: (owner, room_id) for alias, owner, room_id in rows}


def claim_default_room(conn: sqlite3.Connection, alias: str, owner: str) -> None:
    """Written before the room is created: a crash between the two leaves an alias the broker
    still recognises as its own."""
    conn.execute("INSERT OR REPLACE INTO mqtt_default_rooms (alias, owner, room_id, created_ts) VALUES (?, ?, NULL, ?)",
                 (alias, owner, now_ms()))


def set_default_room(conn: sqlite3.Connection, alias: str, room_id: str) -> None:
    conn.execute("UPDATE mqtt_default_rooms SET room_id = ? WHERE alias = ?", (room_id, alias))


def forget_default_room(conn: sqlite3.Connection, alias: str) -> None:
    conn.execute("DELETE FROM mqtt_default_rooms WHERE alias = ?", (alias,))


async def rooms_to_upgrade(db: "Database") -> set[str]:
    """Aliases of default rooms made before the household, not yet opened to it."""
    return {row[0] for row in await db.fetchall("SELECT alias FROM mqtt_household_upgrade")}


def room_upgraded(conn: sqlite3.Connection, alias: str) -> None:
    conn.execute("DELETE FROM mqtt_household_upgrade WHERE alias = ?", (alias,))


# -- the core's rows the broker reads ------------------------------------------------------------
# (through the core's store modules, imported when called: migrations.py imports this module
# while database.py, which they import, is still loading)


async def load_room_bindings(db: "Database", binding_type: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(room id, state key, content, sender) of every current topic binding in every room. A
    read-only look at the core's current state at start-up; later changes arrive on the event
    stream."""
    from . import event_json, events

    out = []
    for room_id, state_key, pdu_json in await events.current_state_of_type(db, binding_type):
        pdu = event_json.load(pdu_json)
        content = pdu.get("content", {})
        out.append((room_id, state_key, content if isinstance(content, dict) else {}, str(pdu.get("sender", ""))))
    return out


async def alias_creator(db: "Database", alias: str) -> str | None:
    """Who made a local alias (the core's room_aliases)."""
    from . import rooms

    found = await rooms.alias_room(db, alias)
    return found[1] if found is not None else None


__all__ = ["COMPONENT", "MIGRATIONS", "SessionRow", "SubscriptionRow", "session_key", "now_ms", "save_session",
           "save_cursor", "delete_session", "add_incoming_qos2", "remove_incoming_qos2", "load_sessions",
           "load_rules", "set_rule", "delete_rule", "put_rule", "remove_rule", "list_rules", "load_default_rooms", "claim_default_room",
           "set_default_room", "forget_default_room", "load_room_bindings", "alias_creator"]
