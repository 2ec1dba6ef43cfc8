"""Versioned schema migrations, applied in order at start-up inside one transaction each.

Each component (the core, the MQTT broker, federation, ...) has its own numbered list and its
own version row, so components can grow their tables independently. A front end's steps live in
its own store module (store/mqtt.py, store/coap_psk.py), registered in `COMPONENT_STORES`. Never edit a released step:
append a new one. `state_groups` keep the room state after each event (as deltas), so state
resolution can be added without a new schema.
"""
from __future__ import annotations

import sqlite3
from types import ModuleType

from . import (account_data, appservice, coap_psk, cross_signing, devices, e2e_federation, e2e_keys, forgotten_rooms,
               key_backup, media, mqtt, mqtt_bridge, push_rules, pushers, receipts, relations, series, to_device)
from . import account_admin
from .event_index import LEVELS, schema_sql as event_index_schema

CORE_MIGRATIONS: list[tuple[int, str]] = [
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
            state_group_before INTEGER,
            outlier INTEGER NOT NULL DEFAULT 0,
            rejected_reason TEXT,
            txn_key TEXT,
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
    # Event ids and rooms move from SQLite indexes on `events` (pages rewritten per stored event)
    # to store/event_index.py's bulk-written index; the table is rebuilt to drop the UNIQUE
    # constraint. What the store holds goes into one run on the top level, and the span covers it.
    (
        2,
        """
        CREATE TABLE events_v2 (
            stream_ordering INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            type TEXT NOT NULL,
            state_key TEXT,
            sender TEXT NOT NULL,
            depth INTEGER NOT NULL,
            origin_server_ts INTEGER NOT NULL,
            state_group INTEGER,
            state_group_before INTEGER,
            outlier INTEGER NOT NULL DEFAULT 0,
            rejected_reason TEXT,
            txn_key TEXT,
            json TEXT NOT NULL
        );
        INSERT INTO events_v2 SELECT * FROM events;
        DROP TABLE events;
        ALTER TABLE events_v2 RENAME TO events;
        """
        + event_index_schema()
        + f"""
        INSERT INTO event_index_runs (level, run) SELECT {LEVELS - 1}, 1 WHERE EXISTS (SELECT 1 FROM events);
        INSERT INTO event_index_{LEVELS - 1} (run, key, pos)
            SELECT 1, event_key(event_id), stream_ordering FROM events;
        INSERT INTO room_index (room_id, pos) SELECT room_id, stream_ordering FROM events;
        UPDATE event_index_span SET lo = COALESCE((SELECT MIN(stream_ordering) FROM events), 0),
                                    hi = COALESCE((SELECT MAX(stream_ordering) FROM events), 0);
        """,
    ),    (
        3,
        # History visibility reads each user's membership changes and each room's visibility
        # changes (store/history.py). Partial indexes: only those two event types are written to
        # them, so a message or a retained MQTT reading costs no index page.
        """
        CREATE INDEX events_member_changes ON events (room_id, state_key, stream_ordering)
            WHERE type = 'm.room.member';
        CREATE INDEX events_visibility_changes ON events (room_id, stream_ordering)
            WHERE type = 'm.room.history_visibility'
        """,
    ),
    (
        4,
        # The household (docs/mqtt.md): accounts that share the broker's topic rooms. Existing
        # accounts become members (the default), as `matrix-gateway user add` makes them now;
        # `--guest` accounts are not.
        """
        ALTER TABLE users ADD COLUMN household INTEGER NOT NULL DEFAULT 1
        """,
    ),
]

FEDERATION_ROOMS_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE federation_outbound (
            destination TEXT PRIMARY KEY,
            last_stream INTEGER NOT NULL
        );
        CREATE TABLE remote_invites (
            user_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            room_version TEXT NOT NULL,
            event_json TEXT NOT NULL,
            invite_state TEXT NOT NULL,
            stream_ordering INTEGER NOT NULL,
            PRIMARY KEY (user_id, room_id)
        );
        """,
    ),
]

# Federation transport (matrix_core/federation/keyring.py): other servers' verify keys with the
# window each may be trusted in, and each server's latest self-signed key document (relayed, with
# our signature added, when we answer /_matrix/key/v2/query as a notary).
FEDERATION_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE federation_server_keys (
            server_name TEXT NOT NULL,
            key_id TEXT NOT NULL,
            verify_key TEXT NOT NULL,
            valid_until_ts INTEGER,
            expired_ts INTEGER,
            fetched_ts INTEGER NOT NULL,
            from_server TEXT NOT NULL,
            PRIMARY KEY (server_name, key_id)
        );
        CREATE TABLE federation_key_documents (
            server_name TEXT PRIMARY KEY,
            valid_until_ts INTEGER NOT NULL,
            fetched_ts INTEGER NOT NULL,
            json TEXT NOT NULL
        );
        """,
    ),
]

# A front end's tables live with its store module, which declares them: COMPONENT (its name in
# schema_versions) and MIGRATIONS (its steps), next to the SQL that uses them. The core does not
# know their schema; a new component adds its module here (one entry).
COMPONENT_STORES: tuple[ModuleType, ...] = (
    mqtt, coap_psk,
    # issue 13, the client API real clients call:
    account_data, forgotten_rooms, receipts, devices, push_rules, pushers, relations,
    # issue 14, end-to-end encryption
    e2e_keys, to_device, cross_signing, key_backup,
    e2e_federation,  # issue 14 over federation: remote device lists, the EDU outbox
    # issue 15, the content repository:
    media,
    # issue 17, application services
    appservice,
    # issue 16: uplinks to other brokers ([[mqtt_bridge]])
    mqtt_bridge,
    # issue 18, the hub's web pages: the readings index behind the plots
    series,
    # issue 18, the admin API: which accounts are deactivated (after devices: its list reads device_last_seen)
    account_admin,
)

# component name -> its steps, applied in this order (the MQTT steps read the core's room_aliases).
COMPONENTS: dict[str, list[tuple[int, str]]] = {
    "core": CORE_MIGRATIONS,
    "federation": FEDERATION_MIGRATIONS,
    "federation_rooms": FEDERATION_ROOMS_MIGRATIONS,
    **{store.COMPONENT: store.MIGRATIONS for store in COMPONENT_STORES},
}


def _apply(conn: sqlite3.Connection, component: str, steps: list[tuple[int, str]]) -> int:
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    found = row[0] if row else 0
    latest = steps[-1][0] if steps else 0
    if found > latest:
        raise RuntimeError(
            f"database schema of {component!r} is version {found}, newer than this program knows ({latest})"
        )
    for version, sql in steps:
        if version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO schema_versions (component, version) VALUES (?, ?)", (component, version)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def migrate(conn: sqlite3.Connection) -> dict[str, int]:
    """Bring every component's schema to its latest version; returns the versions found before."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    return {component: _apply(conn, component, steps) for component, steps in COMPONENTS.items()}
