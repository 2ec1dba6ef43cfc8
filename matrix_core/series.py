"""Time series of readings: which numbers an event carries, and how points become buckets.

Pure (no I/O): the store (store/series.py) indexes what `numeric_fields` finds in each event as it
is persisted, and the series API (`GET /_gateway/v1/rooms/{room}/series`) turns the index rows of
a time range into `buckets` with `bucketize`.

Fields are dotted JSON paths into the content (`temp`, `payload.temp`). Floats arrive in events
as `{"$f": "21.5"}` (docs/payload-mapping.md) and count as numbers here; booleans, strings,
non-finite floats and big integers do not. An MQTT message's content keeps the device's payload
under `mqtt.payload.value`: its fields are indexed relative to that value, so `mosquitto_pub -m
'{"temp": 21.5}'` gives the field `temp` as a CoAP post of the same map does. A payload that is a
bare number is the field `value`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

MAX_FIELDS = 16  # numeric fields indexed per event: a reading has a few; a big document is not a reading
MAX_DEPTH = 4  # path segments
MAX_FIELD_LENGTH = 128
MAX_BUCKETS = 1000
MAX_RANGE_MS = 366 * 24 * 3600 * 1000
BARE_VALUE_FIELD = "value"

_FIELD_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+){0,%d}$" % (MAX_DEPTH - 1))


class SeriesParamError(ValueError):
    """A series request's parameter is out of bounds or malformed (M_INVALID_PARAM at the edge)."""


def number_of(value: Any) -> float | None:
    """The reading's number, or None: ints (not bools), and `{"$f": repr}` floats that are finite."""
    kind = type(value)
    if kind is int:
        return float(value)
    if kind is dict and len(value) == 1 and "$f" in value:
        raw = value["$f"]
        if type(raw) is str and len(raw) <= 40:
            try:
                number = float(raw)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
    if kind is float and math.isfinite(value):  # plain JSON read elsewhere; events carry no floats
        return float(value)
    return None


def _walk(value: Any, prefix: str, depth: int, out: list[tuple[str, float]]) -> None:
    if len(out) >= MAX_FIELDS or type(value) is not dict:
        return
    for key, child in value.items():
        if len(out) >= MAX_FIELDS:
            return
        if type(key) is not str or not key or key.startswith("$") or "." in key:
            continue
        path = f"{prefix}.{key}" if prefix else key
        if len(path) > MAX_FIELD_LENGTH:
            continue
        number = number_of(child)
        if number is not None:
            out.append((path, number))
        elif depth + 1 < MAX_DEPTH and type(child) is dict and "$f" not in child:
            _walk(child, path, depth + 1, out)


def _json_text_value(text: str) -> Any:
    """A JSON payload stored as its exact text (frontends/payload_mapping.py keeps only the text
    when its canonical re-encoding would differ, e.g. `{"t": 21.5}` with a space): its value, with
    plain floats, or None when it does not parse (the text is at most an event's size)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def numeric_fields(content: Any) -> list[tuple[str, float]]:
    """(field path, number) of the numeric leaves of an event's content: at most MAX_FIELDS, paths
    of at most MAX_DEPTH segments. Cheap for the common cases (a text message: one dict scan)."""
    if type(content) is not dict:
        return []
    mqtt = content.get("mqtt")
    if type(mqtt) is dict:
        payload = mqtt.get("payload")
        if type(payload) is not dict or payload.get("kind") not in ("json", "cbor"):
            return []
        value = payload.get("value")
        if value is None and type(payload.get("text")) is str:
            value = _json_text_value(payload["text"])  # JSON kept as its exact text (not canonical)
        bare = number_of(value)
        if bare is not None:
            return [(BARE_VALUE_FIELD, bare)]
        out: list[tuple[str, float]] = []
        _walk(value, "", 0, out)
        return out
    out = []
    _walk(content, "", 0, out)
    return out


# -- requests -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SeriesQuery:
    field: str
    start: int  # ms, inclusive
    end: int  # ms, exclusive
    buckets: int

    def bucket_of(self, ts: int) -> int:
        return (ts - self.start) * self.buckets // (self.end - self.start)

    def bucket_start(self, index: int) -> int:
        return self.start + (self.end - self.start) * index // self.buckets


def _int(name: str, raw: str | None, default: int | None) -> int:
    if raw is None or raw == "":
        if default is None:
            raise SeriesParamError(f"'{name}' is required")
        return default
    if not re.fullmatch(r"-?[0-9]{1,16}", raw):
        raise SeriesParamError(f"'{name}' must be an integer")
    return int(raw)


def parse_query(field: str | None, start: str | None, end: str | None, buckets: str | None,
                now_ms: int, last: str | None = None) -> SeriesQuery:
    """Check a series request. `from`/`to` are milliseconds since the epoch (`to` defaults to
    now, `from` to a day before `to`); `last` instead of `from` is the range's length back from
    `to` (a browser whose clock is off still gets the latest hour). The range is at most
    MAX_RANGE_MS and 1..MAX_BUCKETS buckets, so no request scans more than a bounded slice of
    one field's index."""
    if last is not None and start is not None:
        raise SeriesParamError("Give 'from' or 'last', not both")
    if not field:
        raise SeriesParamError("'field' is required")
    if not valid_field(field):
        raise SeriesParamError("'field' must be a dotted path of letters, digits, '_' and '-' "
                               f"(at most {MAX_DEPTH} segments)")
    to = _int("to", end, now_ms)
    if last is not None:
        length = _int("last", last, None)
        if not 0 < length <= MAX_RANGE_MS:
            raise SeriesParamError(f"'last' must be between 1 and {MAX_RANGE_MS} ms")
        start = str(to - length)
    frm = _int("from", start, to - 24 * 3600 * 1000)
    count = _int("buckets", buckets, 60)
    if frm < 0 or to <= frm:
        raise SeriesParamError("'from' must be before 'to' (milliseconds since the epoch)")
    if to - frm > MAX_RANGE_MS:
        raise SeriesParamError(f"The range is at most {MAX_RANGE_MS} ms")
    if not 1 <= count <= MAX_BUCKETS:
        raise SeriesParamError(f"'buckets' must be between 1 and {MAX_BUCKETS}")
    if count > to - frm:
        raise SeriesParamError("'buckets' must not exceed the range in milliseconds")
    return SeriesQuery(field, frm, to, count)


def valid_field(field: str) -> bool:
    return len(field) <= MAX_FIELD_LENGTH and _FIELD_RE.match(field) is not None


def bucketize(query: SeriesQuery, points: Iterable[tuple[int, float]]) -> list[dict[str, Any]]:
    """Buckets (only those holding points) from (ts, value) points in ts order: each with its
    start `ts`, `count`, `min`, `max`, `mean` and `last` (the value with the latest ts)."""
    out: list[dict[str, Any]] = []
    current = -1
    lo = hi = total = last = 0.0
    count = 0
    for ts, value in points:
        index = query.bucket_of(ts)
        if index != current:
            if count:
                out.append(_bucket(query, current, count, lo, hi, total, last))
            current, count, lo, hi, total = index, 0, value, value, 0.0
        count += 1
        total += value
        lo = value if value < lo else lo
        hi = value if value > hi else hi
        last = value
    if count:
        out.append(_bucket(query, current, count, lo, hi, total, last))
    return out


def _bucket(query: SeriesQuery, index: int, count: int, lo: float, hi: float, total: float,
            last: float) -> dict[str, Any]:
    return {"ts": query.bucket_start(index), "count": count, "min": _num(lo), "max": _num(hi),
            "mean": _num(total / count), "last": _num(last)}


def _num(value: float) -> int | float:
    """Whole numbers as ints (canonical JSON has no floats; the answer is plain JSON anyway)."""
    return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value


def points_in_order(rows: Iterable[tuple[int, int, float]]) -> Iterator[tuple[int, float]]:
    """(ts, pos, value) index rows -> (ts, value)."""
    for ts, _pos, value in rows:
        yield ts, value
