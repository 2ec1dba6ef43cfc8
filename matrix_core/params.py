"""Strict parsing of request parameters that reach SQL or index the room table. Pure.

Python's int() takes more than a client should send ("１" full-width digits, "1_000", " 5 ")
and any size, while SQLite integers stop at 2**63-1 (an OverflowError deep in a query, a 500
for the client). Every number, stream token and room id or alias from a client goes through
here once, at the edge, and a bad one is a 400 with a Matrix errcode before anything runs.
"""
from __future__ import annotations

import re

from . import errors
from .identifiers import split_id

_DECIMAL = re.compile(r"-?[0-9]{1,30}\Z")
# A pagination token is 's<position>'; a /sync next_batch ('s<events>_<account data>_...', see
# sync_token.py) is accepted too, by its event position, as clients pass it to /messages.
_TOKEN = re.compile(r"[st](-?[0-9]{1,30})(?:_[0-9]{1,30}){0,16}\Z")

# Stream positions are SQLite integers, negative for backfilled history; 2**62 leaves room for
# the +-1 arithmetic around a window's ends. The timeline's own "no lower bound" is -(2**62).
MAX_POSITION = 2**62
MAX_FILTER_ID = 2**63 - 1
MAX_ID_LENGTH = 255


def parse_decimal(raw: str) -> int | None:
    """An ASCII decimal integer (optionally negative), or None if `raw` is anything else."""
    return int(raw) if _DECIMAL.match(raw) else None


def int_param(name: str, raw: str, minimum: int, maximum: int) -> int:
    """A numeric query parameter, clamped to [minimum, maximum]; M_INVALID_PARAM unless decimal."""
    value = parse_decimal(raw)
    if value is None:
        raise errors.invalid_param(f"Query parameter {name!r} must be an integer")
    return max(minimum, min(maximum, value))


def stream_token(token: str | None) -> int | None:
    """Our tokens are 's<position>' (also 't<position>'); positions may be negative (backfill)."""
    if token is None:
        return None
    match = _TOKEN.match(token)
    if match is not None:
        position = int(match.group(1))
        if -MAX_POSITION <= position <= MAX_POSITION:
            return position
    raise errors.invalid_param(f"Invalid stream token {token[:40]!r}")


def filter_id(raw: str) -> int:
    """A stored filter's id: the decimal number /user/{userId}/filter answered with."""
    value = parse_decimal(raw)
    if value is None or not 0 <= value <= MAX_FILTER_ID:
        raise errors.invalid_param("Invalid filter id")
    return value


def has_space_or_control(value: str) -> bool:
    """Any whitespace or unprintable character? (`" " in value or not value.isprintable()`: every
    whitespace character but the ASCII space is unprintable, so this is the per-character test,
    checked in C: it runs on every room request.)"""
    return " " in value or not value.isprintable()


def room_id_or_alias(value: str) -> str:
    """A room id ('!opaque', '!local:server' before v12) or alias ('#local:server'), unchanged.

    Malformed ones are M_INVALID_PARAM here, so the core never splits a '#' without a server.
    """
    if len(value) > MAX_ID_LENGTH or has_space_or_control(value):
        raise errors.invalid_param(f"Not a room id or alias: {value[:40]!r}")
    if value.startswith("#"):
        try:
            split_id(value, "#")
        except ValueError:
            raise errors.invalid_param(f"Invalid room alias {value!r}") from None
        return value
    if value.startswith("!") and len(value) > 1:
        return value
    raise errors.invalid_param(f"Not a room id or alias: {value!r}")


def user_id(value: str) -> str:
    """A user id ('@local:server'), unchanged; M_INVALID_PARAM if malformed."""
    if len(value) > MAX_ID_LENGTH:
        raise errors.invalid_param("User id too long")
    try:
        split_id(value, "@")
    except ValueError:
        raise errors.invalid_param(f"Invalid user id {value[:40]!r}") from None
    return value


def room_alias(value: str) -> str:
    """A room alias ('#local:server'), unchanged; M_INVALID_PARAM if it is anything else."""
    if not value.startswith("#"):
        raise errors.invalid_param(f"Invalid room alias {value[:40]!r}")
    return room_id_or_alias(value)
