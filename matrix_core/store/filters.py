"""Filter rows (POST/GET /user/{userId}/filter): each user's filters, numbered from 1."""
from __future__ import annotations

import sqlite3

from .database import Database


def insert_filter(conn: sqlite3.Connection, user_id: str, filter_json: str) -> int:
    """Store a filter under the user's next number (in the writer: the MAX and the INSERT are one
    transaction, so two concurrent uploads never share a number); returns the number."""
    row = conn.execute("SELECT MAX(filter_id) FROM filters WHERE user_id = ?", (user_id,)).fetchone()
    filter_id = (row[0] or 0) + 1
    conn.execute("INSERT INTO filters (user_id, filter_id, json) VALUES (?, ?, ?)", (user_id, filter_id, filter_json))
    return int(filter_id)


async def filter_json(db: Database, user_id: str, filter_id: int) -> str | None:
    """The filter's JSON text as uploaded, or None if the user has no such filter."""
    row = await db.fetchone("SELECT json FROM filters WHERE user_id = ? AND filter_id = ?", (user_id, filter_id))
    return None if row is None else str(row[0])
