"""Issue 12 (architecture), the core's "one of each": passwords hashed before the write and off the
writer thread, account SQL behind the store's API, `status` without a full scan of the events,
one base64 rule in the payload mapping, one device-JSON decoder, one log limiter."""
from __future__ import annotations

import base64
import binascii
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontends import payload_mapping
from frontends.coap import content as coap_content
from frontends.payload_mapping import PayloadError, content_to_mqtt_payload
from matrix_core import canonical_json
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.log_limit import LogLimiter
from matrix_core.passwords import hash_password
from matrix_core.service import accounts as accounts_service
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key
from matrix_core.store import accounts as account_rows
from matrix_core.store import maintenance


def _hub(tmp_path: Path) -> Homeserver:
    return Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))


async def test_a_password_is_hashed_before_the_write_and_off_the_writer_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def recording_hash(password: str) -> str:
        threads.append(threading.current_thread().name)
        return hash_password(password)

    monkeypatch.setattr(accounts_service, "hash_password", recording_hash)
    hs = _hub(tmp_path)
    await hs.start()
    try:
        await hs.accounts.create_user("@a:hub", "correct horse")
        assert len(threads) == 1
        assert threads[0] not in ("db-writer", threading.current_thread().name)  # not the writer, not the loop
        assert await hs.accounts.check_credentials("a", "correct horse", None) == "@a:hub"
        assert await hs.accounts.check_credentials("a", "wrong", None) is None
    finally:
        await hs.stop()


def test_the_store_takes_a_hash_never_a_password(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE users (user_id TEXT, password_hash TEXT, admin INT, displayname TEXT, created_ts INT, household INT)")
    with pytest.raises(ValueError):
        account_rows.insert_user(conn, "@a:hub", "plain password", False)
    account_rows.insert_user(conn, "@a:hub", hash_password("pw"), False)
    account_rows.insert_user(conn, "@b:hub", None, False)
    assert conn.execute("SELECT COUNT(*) FROM users").fetchone() == (2,)


async def test_status_figures_do_not_scan_the_events(tmp_path: Path) -> None:
    hs = _hub(tmp_path)
    await hs.start()
    try:
        await hs.accounts.create_user("@a:hub", None)
        alice = Requester("@a:hub", "D", False, "t")
        room_id = (await hs.rooms.create_room(alice, {}))["room_id"]
        for i in range(5):
            await hs.rooms.send_event(alice, room_id, "m.room.message", {"body": str(i)})
    finally:
        await hs.stop()
    conn = maintenance.open_reader(tmp_path / "db.sqlite")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        figures = maintenance.status_figures(conn)
        (counted,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    finally:
        conn.close()
    scans = [s for s in statements[:-1] if "COUNT" in s.upper() and "EVENTS" in s.upper()]
    assert scans == []
    assert figures.users == 1 and figures.rooms == 1
    assert figures.events >= counted >= 5 and figures.last_event_ts is not None
    assert figures.schema_versions["core"] >= 1


@pytest.mark.parametrize("b64", ["3q2+7x==",  # stray bits: not how the mapping writes 0xdeadbeef
                                 "3q2+7w",  # no padding
                                 "3q2-7w=="])  # not the standard alphabet
def test_a_payloads_base64_follows_the_mappings_one_rule(b64: str) -> None:
    with pytest.raises(PayloadError, match="base64"):
        content_to_mqtt_payload({"kind": "bytes", "base64": b64})
    with pytest.raises(PayloadError, match="base64"):
        payload_mapping.from_event_value({"$b": b64})
    assert content_to_mqtt_payload({"kind": "bytes", "base64": "3q2+7w=="}) == b"\xde\xad\xbe\xef"


def test_one_device_json_decoder_keeps_floats_and_refuses_nan() -> None:
    assert canonical_json.decode_device_json('{"t": 21.5}') == {"t": 21.5}
    with pytest.raises(ValueError):
        canonical_json.decode_device_json('{"t": NaN}')
    with pytest.raises(canonical_json.CanonicalJSONError):  # Matrix content stays stricter
        canonical_json.parse_json(b'{"t": 21.5}')
    # MQTT payloads and CoAP bodies read device JSON alike.
    assert payload_mapping.mqtt_payload_to_content(b'{"t":NaN}')["kind"] == "text"
    assert coap_content.decode_body(b'{"t": 21.5}', 50) == {"t": {"$f": "21.5"}}


def test_the_log_limiter_writes_one_line_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(60.0, clock=lambda: now[0])
    logger = logging.getLogger("test.limiter")
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        assert limiter.log(logger, logging.WARNING, "k", "refused %s", "a") is True
        assert limiter.log(logger, logging.WARNING, "k", "refused %s", "b") is False
        assert limiter.log(logger, logging.WARNING, "k", "refused %s", "c") is False
        assert limiter.log(logger, logging.WARNING, "other", "other %d", 1) is True
        now[0] = 61.0
        assert limiter.log(logger, logging.WARNING, "k", "refused %s", "d") is True
    assert [r.getMessage() for r in caplog.records] == [
        "refused a", "other 1", "refused d (2 more since the last line)"]


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(alphabet="AQgw/+9=", max_size=12),
                 st.binary(max_size=10).map(lambda b: base64.b64encode(b).decode())))
def test_the_base64_rule_is_what_encoding_writes(text: str) -> None:
    """The canonical check (done without re-encoding) accepts exactly what b64encode writes."""
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        expected = None
    if expected is not None and base64.b64encode(expected).decode() != text:
        expected = None
    try:
        got: bytes | None = payload_mapping._b64decode(text, "")
    except PayloadError:
        got = None
    assert got == expected
