"""CoAP pre-shared keys (coaps, DTLS-PSK): the `coap_psk` table's rows (frontends/coap/psk.py says why
lookups are synchronous). Plain sqlite3, usable from the CLI and the DTLS handshake callback."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from ..clock import now_ms

# The CoAP front end's schema (component "coap", registered in migrations.COMPONENT_STORES): coaps
# pre-shared keys, one per device, set with
# `matrix-gateway device add ... --psk`; the identity is what a device says in its DTLS handshake.
COMPONENT = "coap"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE coap_psk (
            identity TEXT PRIMARY KEY,
            psk TEXT NOT NULL,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            created_ts INTEGER NOT NULL
        );
        CREATE INDEX coap_psk_device ON coap_psk (user_id, device_id)
        """,
    ),
]


def owner_of(conn: sqlite3.Connection, identity: str) -> tuple[str, str] | None:
    """(user id, device id) that holds the PSK identity, if any."""
    row = conn.execute("SELECT user_id, device_id FROM coap_psk WHERE identity = ?", (identity,)).fetchone()
    return None if row is None else (row[0], row[1])


def replace_device_psk(conn: sqlite3.Connection, identity: str, psk: str, user_id: str, device_id: str) -> None:
    """The device's one key becomes `psk` under `identity` (inside the caller's transaction)."""
    conn.execute("DELETE FROM coap_psk WHERE user_id = ? AND device_id = ?", (user_id, device_id))
    conn.execute("INSERT INTO coap_psk (identity, psk, user_id, device_id, created_ts) VALUES (?, ?, ?, ?, ?)",
                 (identity, psk, user_id, device_id, now_ms()))


def open_reader(database_path: Path) -> sqlite3.Connection:
    """A read-only connection for handshake-time lookups (WAL: never blocked by the writer)."""
    return sqlite3.connect(f"file:{database_path}?mode=ro", uri=True, check_same_thread=False)


def key_of(conn: sqlite3.Connection, identity: str) -> tuple[str, str, str] | None:
    """(psk, user id, device id) for a PSK identity."""
    row = conn.execute("SELECT psk, user_id, device_id FROM coap_psk WHERE identity = ?", (identity,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])
