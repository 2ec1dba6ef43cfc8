"""Persistence of the broker's own tables (migrations in matrix_core/store/migrations.py, "mqtt").

Writes are plain functions of a sqlite3 connection, run through the core's group commit
(`Database.write`) by the hub, or directly by the CLI (which may run beside a live hub: WAL).
A session's row key is `user_id + " " + client_id`, so two accounts can never share (or take
over) each other's session by choosing the same client id.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any

from matrix_core.store import Database, event_json
from matrix_core.store import events as event_rows

from .packets import Subscription
from .routing import Rule
from .session import SessionState


def session_key(user_id: str, client_id: str) -> str:
    return f"{user_id} {client_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


# -- sessions -------------------------------------------------------------------------------------


def save_session(conn: sqlite3.Connection, key: str, session: SessionState, disconnected_ts: int | None) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO mqtt_sessions (client_id, user_id, protocol_level, expiry_interval, "
        "disconnected_ts, cursor) VALUES (?, ?, ?, ?, ?, ?)",
        (key, session.user_id, session.protocol_level, session.expiry_interval, disconnected_ts, session.cursor()),
    )
    conn.execute("DELETE FROM mqtt_subscriptions WHERE client_id = ?", (key,))
    conn.executemany(
        "INSERT INTO mqtt_subscriptions (client_id, topic_filter, qos, no_local, retain_as_published, "
        "retain_handling, subscription_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(key, s.topic_filter, s.qos, int(s.no_local), int(s.retain_as_published), s.retain_handling,
          session.subscription_ids.get(s.topic_filter)) for s in session.subscriptions.values()],
    )
    # Added, never replaced: an id committed with its event (add_incoming_qos2) whose PUBREC is
    # not out yet is not in memory yet, and must survive this save. PUBREL removes an id.
    conn.executemany("INSERT OR IGNORE INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES (?, ?)",
                     [(key, pid) for pid in sorted(session.incoming_qos2)])


def save_cursor(conn: sqlite3.Connection, key: str, cursor: int) -> None:
    conn.execute("UPDATE mqtt_sessions SET cursor = ? WHERE client_id = ?", (cursor, key))


def delete_session(conn: sqlite3.Connection, key: str) -> None:
    for table in ("mqtt_sessions", "mqtt_subscriptions", "mqtt_incoming_qos2"):
        conn.execute(f"DELETE FROM {table} WHERE client_id = ?", (key,))


def add_incoming_qos2(conn: sqlite3.Connection, key: str, packet_id: int) -> None:
    conn.execute("INSERT OR IGNORE INTO mqtt_incoming_qos2 (client_id, packet_id) VALUES (?, ?)", (key, packet_id))


def remove_incoming_qos2(conn: sqlite3.Connection, key: str, packet_id: int) -> None:
    conn.execute("DELETE FROM mqtt_incoming_qos2 WHERE client_id = ? AND packet_id = ?", (key, packet_id))


async def load_sessions(db: Database, max_queued: int) -> dict[str, tuple[SessionState, int | None]]:
    """key -> (session, disconnected_ts) for every stored persistent session."""
    out: dict[str, tuple[SessionState, int | None]] = {}
    for key, user_id, level, expiry, disconnected, cursor in await db.fetchall(
        "SELECT client_id, user_id, protocol_level, expiry_interval, disconnected_ts, cursor FROM mqtt_sessions"
    ):
        client_id = key.split(" ", 1)[1] if " " in key else key
        session = SessionState(client_id, user_id, level, expiry, max_queued, seen_upto=cursor)
        out[key] = (session, disconnected)
    for key, topic_filter, qos, no_local, rap, rh, sub_id in await db.fetchall(
        "SELECT client_id, topic_filter, qos, no_local, retain_as_published, retain_handling, subscription_id "
        "FROM mqtt_subscriptions"
    ):
        if key in out:
            session = out[key][0]
            session.subscriptions[topic_filter] = Subscription(topic_filter, qos, bool(no_local), bool(rap), rh)
            if sub_id is not None:
                session.subscription_ids[topic_filter] = sub_id
    for key, pid in await db.fetchall("SELECT client_id, packet_id FROM mqtt_incoming_qos2"):
        if key in out:
            out[key][0].incoming_qos2.add(pid)
    return out


# -- admin rules ----------------------------------------------------------------------------------


async def load_rules(db: Database) -> list[Rule]:
    rows = await db.fetchall("SELECT topic_filter, room_id FROM mqtt_rules")
    return [Rule(f, r, True) for f, r in rows]


def set_rule(conn: sqlite3.Connection, topic_filter: str, room_id: str) -> None:
    conn.execute("INSERT OR REPLACE INTO mqtt_rules (topic_filter, room_id, created_ts) VALUES (?, ?, ?)",
                 (topic_filter, room_id, now_ms()))


def delete_rule(conn: sqlite3.Connection, topic_filter: str) -> bool:
    return conn.execute("DELETE FROM mqtt_rules WHERE topic_filter = ?", (topic_filter,)).rowcount > 0


def list_rules(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT topic_filter, room_id FROM mqtt_rules ORDER BY topic_filter").fetchall()


async def load_room_bindings(db: Database, binding_type: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(room_id, state_key, content, sender) of every current topic binding in every room. A
    read-only look at the core's current_state at start-up; later changes arrive on the event
    stream."""
    rows = await event_rows.current_state_of_type(db, binding_type)
    out = []
    for room_id, state_key, pdu_json in rows:
        pdu = event_json.load(pdu_json)
        content = pdu.get("content", {})
        out.append((room_id, state_key, content if isinstance(content, dict) else {}, str(pdu.get("sender", ""))))
    return out


# -- default rooms (the #mqtt/... aliases the broker made) ----------------------------------------


async def load_default_rooms(db: Database) -> dict[str, tuple[str, str | None]]:
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


async def alias_creator(db: Database, alias: str) -> str | None:
    """Who made a local alias (a read-only look at the core's room_aliases)."""
    row = await db.fetchone("SELECT creator FROM room_aliases WHERE alias = ?", (alias,))
    return row[0] if row else None
