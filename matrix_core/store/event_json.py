"""Event JSON as the events table stores it: the skeleton every event shares, as one-byte tokens.
Pure.

Why: on an SD card every byte of a row is written twice (WAL, then checkpoint), and a device's
reading is one row. Most of an event's JSON is the same skeleton every time
(`{"auth_events":["$`, `"],"content":{`, `"msgtype":"m.text"`, `,"hashes":{"sha256":"`, ...):
replacing each with one byte takes a third off a reading's JSON (an MQTT reading: 684 -> ~410
bytes). What is left is mostly event ids and the hash, which nothing shrinks much. Deflate
against a preset dictionary gets ~335 bytes, but costs 30 us per event on the event loop
against ~8 us here, on the path of every message a device sends.

Why it is lossless: canonical JSON text never holds a raw control character (JSON escapes them),
so bytes 0x01-0x1f are free to stand for skeleton pieces. Tokens are substituted in order and
expanded in reverse order; a piece never contains a token, so each expansion restores exactly
the text its substitution saw.

Format: a BLOB whose first byte names the token table (`FORMAT_V1`). Rows stored as TEXT
(before this format, or whenever no piece matched) are plain JSON and read as they are. The
table is part of the on-disk format: never edit it; add a FORMAT_V2 and keep reading V1.
"""
from __future__ import annotations

import json
from typing import Any

FORMAT_V1 = 1

# Longer pieces first where one contains another's text. At most 31 pieces (bytes 0x01-0x1f).
_PIECES_V1: tuple[bytes, ...] = (
    b'{"auth_events":["$',
    b'","$',
    b'"],"content":{',
    b'"body":"',
    b'"msgtype":"m.text"',
    b'"mqtt":{"payload":{"kind":"json","text":"',
    b'"mqtt":{"payload":{"kind":"text","text":"',
    b'"value":{',
    b'"qos":1,"topic":"',
    b'"qos":0,"topic":"',
    b'"},"msgtype":"org.matrix_gateway.mqtt"}',
    b',"depth":',
    b',"hashes":{"sha256":"',
    b'"},"origin_server_ts":',
    b',"prev_events":["$',
    b'"],"room_id":"!',
    b'","sender":"@',
    b'","type":"m.room.message"}',
    b'{"$f":"',
    b'\\"',
    b'","state_key":"',
    b'"membership":"join"',
    b'"displayname":"',
    b'","type":"m.room.member"}',
)
_TOKENS_V1: tuple[tuple[bytes, bytes], ...] = tuple(
    (piece, bytes((index + 1,))) for index, piece in enumerate(_PIECES_V1))
_HEADER_V1 = bytes((FORMAT_V1,))
_CONTROL = bytes(range(0x20))


def pack(raw: bytes) -> bytes | str:
    """What to store for an event's JSON (UTF-8 canonical JSON): the tokenised BLOB, or the
    JSON text itself when no skeleton piece occurs in it (or, against all JSON rules, a raw
    control character does: then the tokens would not be free)."""
    if len(raw.translate(None, _CONTROL)) != len(raw):
        return raw.decode("utf-8")
    packed = raw
    for piece, token in _TOKENS_V1:
        packed = packed.replace(piece, token)
    if len(packed) == len(raw):
        return raw.decode("utf-8")
    return _HEADER_V1 + packed


def unpack(stored: str | bytes) -> str | bytes:
    """An event's JSON (text, or UTF-8 bytes) from what `pack` stored, or from a row older than
    the format."""
    if isinstance(stored, str):
        return stored
    if not stored or stored[0] != FORMAT_V1:
        raise ValueError(f"stored event JSON in an unknown format ({bytes(stored[:1])!r})")
    raw = bytes(stored[1:])
    for piece, token in reversed(_TOKENS_V1):
        raw = raw.replace(token, piece)
    return raw


def load(stored: str | bytes) -> dict[str, Any]:
    """The event (its pdu) from an events row's `json` column."""
    pdu: dict[str, Any] = json.loads(unpack(stored))
    return pdu
