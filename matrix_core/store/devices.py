"""Device rows for the device-management API (GET/PUT/DELETE /devices): listing, renaming,
deleting a device with its access tokens, and when and from where each device was last seen.

The `devices` and `access_tokens` tables are the core's (store/accounts.py creates devices and
tokens at login and from the CLI); this component adds only `device_last_seen`, kept apart so
that recording a device's activity never rewrites the core's rows. It is written at most once
per device every few minutes (service/devices.py throttles), never once per request: an SD
card is not worn by a sensor that polls every second.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .database import Database

COMPONENT = "devices"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE device_last_seen (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            ip TEXT,
            ts INTEGER NOT NULL,
            PRIMARY KEY (user_id, device_id)
        )
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ip: str | None
    last_seen_ts: int | None


_SELECT = ("SELECT d.user_id, d.device_id, d.display_name, s.ip, s.ts FROM devices d "
           "LEFT JOIN device_last_seen s ON s.user_id = d.user_id AND s.device_id = d.device_id ")


async def user_devices(db: Database, user_id: str) -> list[DeviceRow]:
    rows = await db.fetchall(_SELECT + "WHERE d.user_id = ? ORDER BY d.device_id", (user_id,))
    return [DeviceRow(*row) for row in rows]


async def device(db: Database, user_id: str, device_id: str) -> DeviceRow | None:
    row = await db.fetchone(_SELECT + "WHERE d.user_id = ? AND d.device_id = ?", (user_id, device_id))
    return None if row is None else DeviceRow(*row)


def set_display_name(conn: sqlite3.Connection, user_id: str, device_id: str, display_name: str | None) -> bool:
    """Rename the device; False (nothing written) if the user has no such device."""
    cur = conn.execute("UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                       (display_name, user_id, device_id))
    return cur.rowcount > 0


def delete_devices(conn: sqlite3.Connection, user_id: str, device_ids: list[str] | None) -> dict[str, list[str]]:
    """Delete the devices (None: every device of the user) with their access tokens and
    last-seen rows; returns device id -> its deleted tokens, for the devices that existed. A
    coaps key stays (as after a logout): its handshake still succeeds and every request is
    answered 4.01 M_UNKNOWN_TOKEN, which tells the device what happened."""
    if device_ids is None:
        device_ids = [row[0] for row in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))]
    deleted: dict[str, list[str]] = {}
    for device_id in dict.fromkeys(device_ids):
        tokens = [row[0] for row in conn.execute(
            "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))]
        existed = conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?",
                               (user_id, device_id)).rowcount > 0
        if not existed and not tokens:
            continue
        conn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))
        conn.execute("DELETE FROM device_last_seen WHERE user_id = ? AND device_id = ?", (user_id, device_id))
        deleted[device_id] = tokens
    return deleted


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a deletion took: device id -> its deleted tokens (the kept device, when one was
    kept, lists the other tokens it lost), and which device was kept."""

    devices: dict[str, list[str]]
    kept_device: str | None


def delete_devices_keeping(conn: sqlite3.Connection, user_id: str, device_ids: list[str] | None,
                           keep_token: str | None) -> Deleted:
    """`delete_devices`, except the device holding `keep_token` (when given): that device stays,
    its other tokens go."""
    keep_device = None
    if keep_token is not None:
        owner = conn.execute("SELECT device_id FROM access_tokens WHERE token = ? AND user_id = ?",
                             (keep_token, user_id)).fetchone()
        keep_device = owner[0] if owner else None
    if device_ids is None:
        device_ids = [row[0] for row in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))]
    deleted = delete_devices(conn, user_id, [d for d in device_ids if d != keep_device])
    if keep_device is not None:
        others = [row[0] for row in conn.execute(
            "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ? AND token != ?",
            (user_id, keep_device, keep_token))]
        conn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ? AND token != ?",
                     (user_id, keep_device, keep_token))
        if others:
            deleted[keep_device] = others
    return Deleted(deleted, keep_device)


def delete_token_and_lone_device(conn: sqlite3.Connection, user_id: str, device_id: str, token: str) -> bool:
    """Logout: delete the token, and its device if no other token of it is left (a client's
    session is one device with one token, which Synapse deletes together; a sensor's device made
    with `matrix-gateway device add` twice keeps working with its other token). True when the
    device went too."""
    conn.execute("DELETE FROM access_tokens WHERE token = ?", (token,))
    if conn.execute("SELECT 1 FROM access_tokens WHERE user_id = ? AND device_id = ? LIMIT 1",
                    (user_id, device_id)).fetchone() is not None:
        return False
    delete_devices(conn, user_id, [device_id])
    return True


def record_last_seen(conn: sqlite3.Connection, seen: list[tuple[str, str, str | None, int]]) -> None:
    """(user id, device id, ip, ts) of devices seen lately; rows of devices deleted meanwhile are
    not recreated."""
    conn.executemany(
        "INSERT INTO device_last_seen (user_id, device_id, ip, ts) "
        "SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2) "
        "ON CONFLICT (user_id, device_id) DO UPDATE SET ip = excluded.ip, ts = excluded.ts",
        seen,
    )
