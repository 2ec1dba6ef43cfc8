"""Canonical JSON encoder and strict parser: what they refuse matters as much as what they write."""
from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from typing import Any

import canonicaljson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_core.canonical_json import (
    CANONICALJSON_MAX_INT,
    CANONICALJSON_MIN_INT,
    CanonicalJSONError,
    encode_canonical_json,
    encode_json,
    parse_json,
)

MAX = CANONICALJSON_MAX_INT

json_scalars = st.none() | st.booleans() | st.integers(CANONICALJSON_MIN_INT, MAX) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


# --- encoder -------------------------------------------------------------------------------------


def test_sorted_compact_utf8() -> None:
    value = {"b": [1, {"d": None, "c": True}], "a": "日本語", "": False}
    assert encode_canonical_json(value) == '{"":false,"a":"日本語","b":[1,{"c":true,"d":null}]}'.encode()


def test_keys_sort_by_code_point_not_utf16() -> None:
    # UTF-16 ordering would put the astral character (surrogate D83D) before U+FF61.
    assert encode_canonical_json({"\U0001f600": 1, "\uff61": 2}) == '{"\uff61":2,"\U0001f600":1}'.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"', r'"\""'),
        ("\\", r'"\\"'),
        ("\b\f\n\r\t", r'"\b\f\n\r\t"'),
        ("\x00\x01\x0b\x1f", r'"\u0000\u0001\u000b\u001f"'),
        ("/", '"/"'),
        ("\x7f", '"\x7f"'),
        ("\u2028", '"\u2028"'),
        ("é😀", '"é😀"'),
    ],
)
def test_string_escaping_follows_spec_grammar(text: str, expected: str) -> None:
    assert encode_canonical_json(text) == expected.encode("utf-8")


@pytest.mark.parametrize("value", [MAX, -MAX, 0, True, False, None, "", [], {}])
def test_scalars_at_the_edges_encode(value: Any) -> None:
    assert parse_json(encode_canonical_json(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        float("nan"),
        float("inf"),
        -float("inf"),
        {"a": 1.5},
        [1, [2, [3.0]]],
        {"a": {"b": [{"c": math.pi}]}},
        MAX + 1,
        -MAX - 1,
        2**64,
        {"a": [2**53]},
        {1: "int key"},
        {None: "null key"},
        {True: "bool key"},
        {1.5: "float key"},
        {"a": {2: "nested int key"}},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": object()},
        "\ud800",
        {"\udfff": 1},
    ],
)
def test_rejects_non_canonical_values(value: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)


def test_rejects_cycles_and_deep_nesting() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(cyclic)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(deep)


def test_error_is_a_value_error() -> None:
    assert issubclass(CanonicalJSONError, ValueError)


class Colour(enum.IntEnum):
    RED = 1


def test_subclasses_are_checked_too() -> None:
    assert encode_canonical_json(OrderedDict([("b", 1), ("a", Colour.RED)])) == b'{"a":1,"b":1}'
    assert encode_canonical_json((1, "x")) == b'[1,"x"]'
    big = enum.IntEnum("Big", {"HUGE": 2**60})
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json({"a": big.HUGE})


def test_shared_subtrees_are_fine() -> None:
    shared = {"x": [1, 2]}
    assert encode_canonical_json({"a": shared, "b": shared}) == b'{"a":{"x":[1,2]},"b":{"x":[1,2]}}'


# --- parser --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-0", 0),
        ("1e10", 10_000_000_000),
        ("1E2", 100),
        ("2.0", 2),
        ("-1.5e1", -15),
        ("0e999", 0),
        ("0e999999999", 0),
        ("1.00000000000000000000000000000000000000e3", 1000),
        ("-0.0", 0),
        (str(MAX), MAX),
        (str(-MAX), -MAX),
        ('{"a":1,"a":2}', {"a": 2}),
        ('"\\ud83d\\ude00"', "😀"),
        (' [ 1 , "x" , null ] ', [1, "x", None]),
    ],
)
def test_parse_accepts(text: str, expected: Any) -> None:
    value = parse_json(text)
    assert value == expected
    assert type(value) is type(expected)
    assert parse_json(text.encode("utf-8")) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"NaN",
        b"[Infinity]",
        b'{"a": -Infinity}',
        b"1.5",
        b"0.1",
        b"1e-1",
        b"1e400",
        b"-1e400",
        b"1e999999999",
        b"1e-999999999",
        b"1.0000000000000000000000000000000000000001",
        str(MAX + 1).encode(),
        str(-MAX - 1).encode(),
        b"9" * 5000,
        b"90071992547409910.0",
        b'"\xff"',
        b'"\xc3"',
        b'"\xed\xa0\x80"',  # UTF-8-encoded surrogate: not valid UTF-8
        b'"\\ud800"',
        b'{"\\udc00": 1}',
        b'["ok", "\\uDBFF"]',
        b"\xef\xbb\xbf{}",  # BOM
        b'"\x01"',  # raw control character in a string
        b"{}x",
        b"",
        b"{'a': 1}",
        b"[1,]",
        b"[" * 100_000,
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(CanonicalJSONError):
        parse_json(data)


def test_parse_rejects_lone_surrogates_in_str_input() -> None:
    with pytest.raises(CanonicalJSONError):
        parse_json('"\ud800"')


def test_parse_accepts_bytearray_and_memoryview() -> None:
    assert parse_json(bytearray(b'{"a":1}')) == {"a": 1}
    assert parse_json(memoryview(b"[1]")) == [1]


# --- compact encoder -------------------------------------------------------------------------------


def test_encode_json_is_compact_and_keeps_order() -> None:
    assert encode_json({"b": 1, "a": ["é", None]}) == '{"b":1,"a":["é",null]}'.encode()


@pytest.mark.parametrize("value", [float("nan"), {"a": object()}, "\ud800"])
def test_encode_json_rejects_unencodable(value: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        encode_json(value)


# --- properties ------------------------------------------------------------------------------------


@given(json_values)
def test_round_trip(value: Any) -> None:
    encoded = encode_canonical_json(value)
    parsed = parse_json(encoded)
    assert parsed == value
    assert encode_canonical_json(parsed) == encoded


@given(json_values)
def test_agrees_with_canonicaljson_package_on_valid_values(value: Any) -> None:
    assert encode_canonical_json(value) == canonicaljson.encode_canonical_json(value)


@given(json_values)
def test_canonical_form_is_independent_of_key_order(value: Any) -> None:
    def reverse_keys(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: reverse_keys(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [reverse_keys(x) for x in v]
        return v

    assert encode_canonical_json(reverse_keys(value)) == encode_canonical_json(value)


@given(json_values)
def test_encode_json_parses_back(value: Any) -> None:
    assert parse_json(encode_json(value)) == value
    assert json.loads(encode_json(value)) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_is_rejected(value: float) -> None:
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json({"k": [value]})


@given(st.one_of(st.integers(min_value=MAX + 1), st.integers(max_value=-MAX - 1)))
def test_out_of_range_ints_rejected_both_ways(value: int) -> None:
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json([value])
    with pytest.raises(CanonicalJSONError):
        parse_json(str(value))


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3).filter(lambda d: d != d.to_integral_value()))
def test_non_integral_numbers_rejected(value: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        parse_json(str(value))
