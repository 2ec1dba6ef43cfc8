"""The CoAP front end's pure parts, without sockets: codes, request translation, bodies."""
from __future__ import annotations

import math

import cbor2
import pytest

from frontends.coap import codes
from frontends.coap.content import decode_body, encode_body, response_format, text_keyed
from frontends.coap.observe import observable, with_query
from frontends.coap.translate import translate
from frontends.payload_mapping import device_view, to_event_value
from matrix_core import errors


@pytest.mark.parametrize("status, text", [
    (400, "4.00"), (401, "4.01"), (403, "4.03"), (404, "4.04"), (405, "4.05"), (406, "4.06"),
    (413, "4.13"), (415, "4.15"), (429, "4.29"), (418, "4.00"), (500, "5.00"), (502, "5.02"), (599, "5.00"),
])
def test_error_codes(status: int, text: str) -> None:
    assert codes.code_text(codes.error_code(status)) == text


def test_success_codes() -> None:
    assert [codes.code_text(codes.success_code(m)) for m in ("GET", "POST", "PUT", "DELETE")] == \
        ["2.05", "2.04", "2.04", "2.02"]


def test_translate_seed_path() -> None:
    call = translate(2, ["_m", "c", "a", "v1", "r", "#k:hub", "s", "m.room.message"], ["a=TOKEN"])
    assert call.method == "POST" and call.access_token == "TOKEN"
    assert call.segments == ["rooms", "#k:hub", "send", "m.room.message"]
    assert call.query == {"access_token": ["TOKEN"]}


def test_translate_msc3079_and_token_option_wins() -> None:
    call = translate(3, ["9", "!r:hub", "m.room.message", "t1"], ["a=query"], b"option")
    assert call.method == "PUT" and call.access_token == "option"
    assert call.segments == ["rooms", "!r:hub", "send", "m.room.message", "t1"]
    assert translate(1, ["7"], ["s=s12", "t=0"]).query == {"since": ["s12"], "timeout": ["0"]}


@pytest.mark.parametrize("method, path, status", [
    (5, ["_m", "c", "v3", "sy"], 405),  # FETCH
    (1, [], 404),
    (1, ["hello"], 404),
    (1, ["_m", "f", "v1", "version"], 404),  # federation is not served over CoAP
])
def test_translate_refuses(method: int, path: list[str], status: int) -> None:
    with pytest.raises(errors.MatrixError) as info:
        translate(method, path, [])
    assert info.value.status == status


def test_decode_body_cbor_default_json_and_refusals() -> None:
    assert decode_body(b"", None) is None
    assert decode_body(cbor2.dumps({"t": 21.5}), None) == {"t": {"$f": "21.5"}}
    assert decode_body(cbor2.dumps({"t": 21.5}), 60) == {"t": {"$f": "21.5"}}
    assert decode_body(b'{"t": 21.5, "n": 1e400}', 50) == {"t": {"$f": "21.5"}, "n": {"$f": "inf"}}
    for payload, cf, status, errcode in [
        (b"\xa1", None, 400, "M_NOT_JSON"),
        (b"\xa0\xa0", 60, 400, "M_NOT_JSON"),  # trailing bytes
        (b"{", 50, 400, "M_NOT_JSON"),
        (b'{"x": NaN}', 50, 400, "M_NOT_JSON"),
        (b"hello", 0, 415, "M_NOT_JSON"),
        (b"\x00" * (128 * 1024 + 1), None, 413, "M_TOO_LARGE"),
    ]:
        with pytest.raises(errors.MatrixError) as info:
            decode_body(payload, cf)
        assert (info.value.status, info.value.errcode) == (status, errcode)


def test_perl_style_byte_keyed_map_reads_as_text() -> None:
    perl = cbor2.dumps({b"msgtype": b"m.text", b"body": b"hello", b"raw": b"\xff\x00"})
    assert decode_body(perl, None) == {"msgtype": "m.text", "body": "hello", "raw": {"$b": "/wA="}}
    # a device that means bytes (text or integer keys) keeps them
    assert decode_body(cbor2.dumps({"raw": b"hello"}), None) == {"raw": {"$b": "aGVsbG8="}}
    mixed = to_event_value({b"k": 1, "t": 2})
    assert text_keyed(mixed) == mixed


def test_response_format() -> None:
    assert response_format(None) == response_format(60) == 60
    assert response_format(50) == 50
    with pytest.raises(errors.MatrixError) as info:
        response_format(0)
    assert info.value.status == 406


def test_device_view_inverts_the_mapping_inside_api_answers() -> None:
    reading = {"t": 21.5, "raw": b"\x01", "$unit": "C", 7: [math.inf]}
    answer = {"chunk": [{"event_id": "$abc", "content": to_event_value(reading)}],
              "receipts": {"$ev1": {"m.read": {}}, "$ev2": {}},  # not device content: kept
              "odd": {"$f": "not a float"}}
    view = device_view(answer)
    assert view["chunk"][0]["content"] == reading
    assert view["receipts"] == answer["receipts"] and view["odd"] == {"$f": "not a float"}
    assert cbor2.loads(encode_body(answer, 60))["chunk"][0]["content"] == reading
    assert b'{"$f":"21.5"}' in encode_body(answer, 50)


def test_observable_calls() -> None:
    assert observable(translate(1, ["7"], []))
    assert observable(translate(1, ["E", "!r:hub"], []))
    assert not observable(translate(2, ["_m", "c", "v3", "cr"], []))
    assert not observable(translate(1, ["_m", "c", "v3", "ac", "w"], []))
    call = with_query(translate(1, ["7"], ["fi={}", "s=s1"]), since="s9", timeout="0")
    assert call.query == {"filter": ["{}"], "since": ["s9"], "timeout": ["0"]}
