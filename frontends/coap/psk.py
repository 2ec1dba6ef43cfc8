"""Pre-shared keys for coaps (DTLS-PSK): one key per device, the identity naming a Matrix device.

Why a table of its own: the PSK must be readable at handshake time (synchronously, from inside
the DTLS library's callback) and a device added with ``matrix-gateway device add --psk`` while
the hub runs must be able to connect at once, so lookups read SQLite directly (WAL: never
blocked by the writer). Its rows are kept by matrix_core/store/coap_psk.py. The key is a secret: it is printed once by the CLI and never logged.
"""
from __future__ import annotations

import secrets
import sqlite3
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix_core.store import coap_psk as psk_rows

__all__ = ["PSK_LENGTH", "PskClaim", "PskStore", "add_device_psk", "new_psk"]

#: 16 characters of [A-Za-z0-9] (~95 bits): typeable as coap-client's `-k KEY`, and no longer than
#: tinydtls takes (DTLS_PSK_MAX_KEY_LEN = 16: a longer key fails the handshake with alert 80).
PSK_LENGTH = 16
_ALPHABET = string.ascii_letters + string.digits


def new_psk() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(PSK_LENGTH))


def add_device_psk(conn: sqlite3.Connection, user_id: str, device_id: str, identity: str | None = None) -> tuple[str, str]:
    """Store a new PSK for a device inside the caller's transaction; returns (identity, psk).

    The identity defaults to the device id and must be unique on the hub (it is all a device
    says in its handshake); a device given a new key loses its old one.
    """
    identity = identity or device_id
    owner = psk_rows.owner_of(conn, identity)
    if owner is not None and owner != (user_id, device_id):
        raise ValueError(f"PSK identity {identity!r} already belongs to {owner[0]} device {owner[1]}")
    psk = new_psk()
    psk_rows.replace_device_psk(conn, identity, psk, user_id, device_id)
    return identity, psk


@dataclass(frozen=True, slots=True)
class PskClaim:
    """What a completed DTLS handshake proves: this peer holds the key of this device."""

    identity: str
    user_id: str
    device_id: str


class PskStore:
    """Synchronous identity -> (key, claim) lookups for the DTLS server."""

    def __init__(self, database_path: Path) -> None:
        self._path = database_path
        self._conn: sqlite3.Connection | None = None

    def lookup(self, identity: bytes) -> tuple[bytes, PskClaim] | None:
        try:
            name = identity.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if self._conn is None:
            self._conn = psk_rows.open_reader(self._path)
        row = psk_rows.key_of(self._conn, name)
        if row is None:
            return None
        return row[0].encode("utf-8"), PskClaim(name, row[1], row[2])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def credentials(self) -> Any:
        """An aiocoap CredentialsMap whose DTLS PSK lookups come from this store (lazy import)."""
        from aiocoap.credentials import CredentialsMap

        store = self

        class _DatabaseCredentials(CredentialsMap):
            def __bool__(self) -> bool:  # aiocoap replaces a falsy (empty) map with a new one
                return True

            def find_dtls_psk(self, identity: bytes) -> tuple[bytes, PskClaim]:
                found = store.lookup(identity)
                if found is None:
                    raise KeyError(identity)
                return found

        return _DatabaseCredentials()
