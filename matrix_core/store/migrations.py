"""Versioned schema migrations, applied in order at start-up inside one transaction each.

Never edit a released step: add a new one. `state_groups` keep the room state after each event
(as deltas), so state resolution can be added without a new schema.
"""
from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            password_hash TEXT,
            admin INTEGER NOT NULL DEFAULT 0,
            displayname TEXT,
            avatar_url TEXT,
            created_ts INTEGER NOT NULL
        );
        CREATE TABLE devices (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            display_name TEXT,
            created_ts INTEGER NOT NULL,
            PRIMARY KEY (user_id, device_id)
        );
        CREATE TABLE access_tokens (
            token TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            created_ts INTEGER NOT NULL
        );
        CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);
        CREATE TABLE rooms (
            room_id TEXT PRIMARY KEY,
            room_version TEXT NOT NULL,
            creator TEXT,
            is_public INTEGER NOT NULL DEFAULT 0,
            forward_extremities TEXT NOT NULL DEFAULT '[]',
            current_state_group INTEGER
        );
        CREATE TABLE events (
            stream_ordering INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            room_id TEXT NOT NULL,
            type TEXT NOT NULL,
            state_key TEXT,
            sender TEXT NOT NULL,
            depth INTEGER NOT NULL,
            origin_server_ts INTEGER NOT NULL,
            state_group INTEGER,
            outlier INTEGER NOT NULL DEFAULT 0,
            rejected_reason TEXT,
            txn_key TEXT UNIQUE,
            json TEXT NOT NULL
        );
        CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
        CREATE TABLE redactions (
            redacted_event_id TEXT NOT NULL,
            redaction_event_id TEXT NOT NULL,
            PRIMARY KEY (redacted_event_id, redaction_event_id)
        );
        CREATE TABLE state_groups (
            id INTEGER PRIMARY KEY,
            room_id TEXT NOT NULL,
            prev_group INTEGER,
            chain_length INTEGER NOT NULL
        );
        CREATE TABLE state_group_entries (
            group_id INTEGER NOT NULL,
            type TEXT NOT NULL,
            state_key TEXT NOT NULL,
            event_id TEXT NOT NULL,
            PRIMARY KEY (group_id, type, state_key)
        );
        CREATE TABLE current_state (
            room_id TEXT NOT NULL,
            type TEXT NOT NULL,
            state_key TEXT NOT NULL,
            event_id TEXT NOT NULL,
            membership TEXT,
            PRIMARY KEY (room_id, type, state_key)
        );
        CREATE INDEX current_state_members ON current_state (state_key, type, membership);
        CREATE TABLE room_aliases (
            alias TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            creator TEXT NOT NULL
        );
        CREATE TABLE filters (
            user_id TEXT NOT NULL,
            filter_id INTEGER NOT NULL,
            json TEXT NOT NULL,
            PRIMARY KEY (user_id, filter_id)
        );
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; returns the version found before migrating."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > LATEST_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this program knows ({LATEST_VERSION})"
        )
    for version, sql in MIGRATIONS:
        if version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
