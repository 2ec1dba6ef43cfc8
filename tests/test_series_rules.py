"""The pure part of the series API (matrix_core/series.py) and the readings index's flatness:
the cost of a plot of one hour does not grow with the room's history."""
from __future__ import annotations

import sqlite3

import pytest

from matrix_core.series import (MAX_BUCKETS, MAX_FIELDS, SeriesParamError, SeriesQuery, bucketize, numeric_fields,
                                parse_query)
from matrix_core.store import series as store
from matrix_core.store.database import configure_connection
from matrix_core.store.migrations import migrate


def test_numeric_fields_of_device_and_mqtt_content() -> None:
    assert numeric_fields({"temp": {"$f": "21.5"}, "hum": 40, "on": True, "name": "x"}) == [("temp", 21.5), ("hum", 40.0)]
    assert numeric_fields({"payload": {"temp": {"$f": "-0.5"}}}) == [("payload.temp", -0.5)]
    assert numeric_fields({"t": {"$f": "nan"}, "u": {"$f": "inf"}, "big": {"$i": "123456789012345678901"}}) == []
    assert numeric_fields({"msgtype": "m.text", "body": "hello"}) == []
    mqtt = {"msgtype": "org.matrix_gateway.mqtt", "body": "x",
            "mqtt": {"topic": "a/b", "qos": 1, "payload": {"kind": "json", "value": {"t": {"$f": "21.5"}}}}}
    assert numeric_fields(mqtt) == [("t", 21.5)]
    bare = {"mqtt": {"topic": "a", "qos": 0, "payload": {"kind": "json", "value": {"$f": "3.25"}}}}
    assert numeric_fields(bare) == [("value", 3.25)]
    assert numeric_fields({"mqtt": {"topic": "a", "qos": 0, "payload": {"kind": "text", "text": "21"}}}) == []
    wide = {f"f{i}": i for i in range(100)}
    assert len(numeric_fields(wide)) == MAX_FIELDS
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}, "x": 2}}
    assert numeric_fields(deep) == [("a.x", 2.0)]
    assert numeric_fields({"$$f": 1, "a.b": 2}) == []  # escaped and ambiguous keys are no fields


@pytest.mark.parametrize("field,frm,to,buckets", [
    (None, "0", "1000", "10"), ("", "0", "1000", "10"), ("a..b", "0", "1000", "10"), ("a b", "0", "1000", "10"),
    ("a.b.c.d.e", "0", "1000", "10"), ("t", "x", "1000", "10"), ("t", "2000", "1000", "10"),
    ("t", "0", "1000", "0"), ("t", "0", "1000", str(MAX_BUCKETS + 1)), ("t", "0", str(400 * 86400000), "10"),
    ("t", "-5", "1000", "10"), ("t", "0", "5", "10"), ("t", "0", "1" * 30, "10"),
])
def test_bad_queries(field: str | None, frm: str, to: str, buckets: str) -> None:
    with pytest.raises(SeriesParamError):
        parse_query(field, frm, to, buckets, now_ms=10**12)


def test_query_defaults_to_the_last_day() -> None:
    q = parse_query("payload.temp", None, None, None, now_ms=10**12)
    assert (q.field, q.start, q.end, q.buckets) == ("payload.temp", 10**12 - 86400000, 10**12, 60)


def test_last_is_a_range_back_from_to() -> None:
    q = parse_query("t", None, "5000000", "10", now_ms=10**12, last="3600000")
    assert (q.start, q.end) == (5000000 - 3600000, 5000000)
    for bad in ("0", "-1", str(400 * 86400000), "x"):
        with pytest.raises(SeriesParamError):
            parse_query("t", None, None, "10", now_ms=10**12, last=bad)
    with pytest.raises(SeriesParamError):
        parse_query("t", "0", None, "10", now_ms=10**12, last="1000")


def test_bucketize_min_max_mean_last() -> None:
    q = SeriesQuery("t", 0, 100, 4)  # buckets of 25 ms
    out = bucketize(q, [(0, 3.0), (10, 1.0), (24, 2.0), (60, 5.5), (99, 7.0)])
    assert out == [
        {"ts": 0, "count": 3, "min": 1, "max": 3, "mean": 2, "last": 2},
        {"ts": 50, "count": 1, "min": 5.5, "max": 5.5, "mean": 5.5, "last": 5.5},
        {"ts": 75, "count": 1, "min": 7, "max": 7, "mean": 7, "last": 7},
    ]
    assert bucketize(q, []) == []


def _steps_for_last_hour(history_minutes: int) -> tuple[int, int]:
    """(SQLite VM steps, points returned) of a one-hour query over a room with this much history."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    configure_connection(conn)
    migrate(conn)
    end = history_minutes * 60000
    conn.executemany("INSERT INTO series_points (room_id, field, ts, pos, value) VALUES (?,?,?,?,?)",
                     [(room, field, i * 60000, i * 4 + j, float(i))
                      for i in range(history_minutes) for j, (room, field) in
                      enumerate([("!a:x", "t"), ("!a:x", "h"), ("!b:x", "t")])])
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    rows = conn.execute(store.POINTS_SQL, ("!a:x", "t", end - 3600000, end)).fetchall()
    conn.set_progress_handler(None, 1)
    conn.close()
    return steps, len(rows)


def test_a_plot_costs_the_same_with_ten_times_the_history() -> None:
    small, small_rows = _steps_for_last_hour(1_000)
    big, big_rows = _steps_for_last_hour(10_080)  # a week of one-minute readings
    assert small_rows == big_rows == 60
    assert big <= small * 1.2 + 50, (small, big)


def test_backfill_reads_stored_events() -> None:
    """The migration's SQL function reads an event as stored (packed JSON)."""
    import json

    from matrix_core.store import event_json
    pdu = {"type": "m.room.message", "content": {"temp": {"$f": "21.5"}, "body": "x"}}
    stored = event_json.pack(json.dumps(pdu).encode())
    assert json.loads(store.series_json(stored) or "null") == [["temp", 21.5]]
    assert store.series_json(event_json.pack(b'{"content":{"body":"hi"}}')) is None
    assert store.series_json(b"not json") is None


def test_the_migration_indexes_events_already_stored(tmp_path) -> None:
    """A hub upgraded to the readings index gets its history indexed (the backfill step)."""
    import json

    from matrix_core.store import event_json
    from matrix_core.store.database import open_sync
    conn = open_sync(tmp_path / "hub.db")
    events = [
        (1, "$a", "m.room.message", None, {"temp": {"$f": "21.5"}, "body": "x"}),
        (2, "$b", "m.room.message", None, {"mqtt": {"topic": "t", "qos": 0, "payload": {"kind": "json", "value": 7}}}),
        (3, "$c", "m.room.name", "", {"name": "5", "n": 5}),  # state: no reading
        (4, "$d", "m.room.message", None, {"msgtype": "m.text", "body": "hi"}),
    ]
    conn.execute("DROP TABLE series_points")
    conn.execute("DELETE FROM schema_versions WHERE component = 'series'")
    for pos, event_id, event_type, state_key, content in events:
        pdu = {"type": event_type, "content": content, "room_id": "!r:x", "sender": "@a:x"}
        conn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth, origin_server_ts, "
            "state_group, state_group_before, outlier, rejected_reason, txn_key, json) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (pos, event_id, "!r:x", event_type, state_key, "@a:x", pos, 1000 * pos, None, None, 0, None, None,
             event_json.pack(json.dumps(pdu).encode())))
    conn.close()
    conn = open_sync(tmp_path / "hub.db")  # migrates again: the series step runs on the stored events
    rows = conn.execute("SELECT room_id, field, ts, pos, value FROM series_points ORDER BY pos").fetchall()
    conn.close()
    assert rows == [("!r:x", "temp", 1000, 1, 21.5), ("!r:x", "value", 2000, 2, 7.0)]


def test_numeric_fields_of_json_kept_as_its_text() -> None:
    """JSON whose canonical form differs (`{"t": 21.5}` with a space) is stored as its exact text."""
    text_only = {"mqtt": {"topic": "a/b", "payload": {"kind": "json", "text": '{"t": 21.5, "h": 40}'}}}
    assert numeric_fields(text_only) == [("t", 21.5), ("h", 40.0)]
    assert numeric_fields({"mqtt": {"payload": {"kind": "json", "text": "19.25"}}}) == [("value", 19.25)]
    assert numeric_fields({"mqtt": {"payload": {"kind": "json", "text": "{broken"}}}) == []
    assert numeric_fields({"mqtt": {"payload": {"kind": "text", "text": '{"t": 1}'}}}) == []
