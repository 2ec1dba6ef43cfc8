"""Tests for frontends.payload_mapping: device values <-> canonical-JSON event content."""
from __future__ import annotations

import base64
import datetime
import json
import math
import uuid
from decimal import Decimal
from fractions import Fraction

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from frontends import payload_mapping
from frontends.payload_mapping import (
    MAX_DEPTH,
    PayloadError,
    content_to_mqtt_payload,
    from_device_cbor,
    from_event_value,
    mqtt_payload_to_content,
    to_device_cbor,
    to_event_value,
)

try:  # the project's canonical JSON module, when present
    from matrix_core.canonical_json import encode_canonical_json, parse_json
except ImportError:  # pragma: no cover
    encode_canonical_json = parse_json = None

MAX_SAFE = 2**53 - 1
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def assert_canonical_json(value, depth=0):
    """Local strict validator: only what Matrix canonical JSON allows, nothing else."""
    assert depth < 200
    t = type(value)
    if value is None or t is bool:
        return
    if t is int:
        assert -MAX_SAFE <= value <= MAX_SAFE, value
        return
    if t is str:
        value.encode("utf-8")  # no lone surrogates
        return
    if t is list:
        for x in value:
            assert_canonical_json(x, depth + 1)
        return
    assert t is dict, f"not a canonical JSON type: {t.__name__}"
    for k, x in value.items():
        assert type(k) is str
        k.encode("utf-8")
        assert_canonical_json(x, depth + 1)


def canonical_roundtrip(value):
    """Serialize as canonical JSON text and parse it back (what a homeserver would store)."""
    assert_canonical_json(value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
    if encode_canonical_json is not None:
        assert encode_canonical_json(value) == text.encode("utf-8")
        return parse_json(text.encode("utf-8"))
    return json.loads(text)


def same(a, b, ordered=True):
    """Type-strict deep equality; NaN equals NaN.

    Maps with non-string keys compare in order (``$map`` keeps device order) unless
    ``ordered=False`` (after canonical CBOR, which sorts map keys).
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, ordered) for x, y in zip(a, b))
    if isinstance(a, (dict, cbor2.frozendict)):
        if len(a) != len(b):
            return False
        if all(type(k) is str for k in a):
            return all(k in b and same(v, b[k], ordered) for k, v in a.items())
        if ordered:
            return all(
                same(k1, k2, ordered) and same(v1, v2, ordered)
                for (k1, v1), (k2, v2) in zip(a.items(), b.items())
            )
        return all(
            any(same(k1, k2, ordered) and same(v1, v2, ordered) for k2, v2 in b.items())
            for k1, v1 in a.items()
        )
    if isinstance(a, cbor2.CBORTag):
        return a.tag == b.tag and same(a.value, b.value, ordered)
    if isinstance(a, (set, frozenset)):
        return a == b
    return a == b


def is_plain_tag(n: int) -> bool:
    """cbor2 leaves this tag number as a CBORTag (no semantic decoding)."""
    if n in (25, 256, 28, 29, 55799):
        return False
    try:
        return type(cbor2.loads(cbor2.dumps(cbor2.CBORTag(n, 0)))) is cbor2.CBORTag
    except Exception:
        return False


# ------------------------------------------------------------------------------------------
# strategies: device values (what cbor2 can decode)
# ------------------------------------------------------------------------------------------

ints = st.one_of(
    st.integers(),
    st.integers(min_value=MAX_SAFE - 3, max_value=MAX_SAFE + 3),
    st.integers(min_value=-MAX_SAFE - 3, max_value=-MAX_SAFE + 3),
    st.integers(min_value=2**64 - 2, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**64) + 2),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([21.5, 1e300, -0.0, 0.0, 5e-324, 1.0, 2.0**53, float("inf"), float("-inf"), float("nan")]),
)
dollar_text = st.one_of(st.text(max_size=8), st.text(max_size=6).map(lambda s: "$" + s), st.sampled_from(["$f", "$b", "$$i", "$map", "$tag", "$"]))
simple = st.one_of(st.integers(0, 19), st.integers(32, 255)).map(cbor2.CBORSimpleValue)
scalars = st.one_of(
    st.none(), st.booleans(), ints, floats, st.text(max_size=20), st.binary(max_size=20),
    st.just(cbor2.undefined), simple,
)
semantic = st.one_of(
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.fractions(),
    st.uuids(),
    st.frozensets(st.integers(-1000, 1000), max_size=4).map(set),
)
plain_tag_numbers = st.one_of(st.integers(0, 300), st.integers(1000, 2**64 - 1), st.just(2**64 - 1)).filter(is_plain_tag)


def hashable_keys():
    base = st.one_of(st.integers(), st.text(max_size=6), st.binary(max_size=6), st.floats(allow_nan=False), st.none())
    return st.one_of(
        base,
        st.lists(base, max_size=3).map(tuple),
        st.dictionaries(st.integers(0, 5), base, max_size=2).map(cbor2.frozendict),
    )


def freeze(v):
    """What cbor2 yields inside map keys and tag contents: tuples, frozendicts, frozensets."""
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    if isinstance(v, (dict, cbor2.frozendict)):
        return cbor2.frozendict({freeze(k): freeze(x) for k, x in v.items()})
    if isinstance(v, (set, frozenset)):
        return frozenset(v)
    return v


def containers(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(dollar_text, children, max_size=4),
        st.dictionaries(hashable_keys(), children, max_size=4),
        st.builds(cbor2.CBORTag, plain_tag_numbers, children.map(freeze)),
    )


device_values = st.recursive(st.one_of(scalars, semantic), containers, max_leaves=20)


def through_cbor2(v):
    """What cbor2 really yields for v (tuples/frozendicts in keys, etc.)."""
    return cbor2.loads(cbor2.dumps(v))


# ------------------------------------------------------------------------------------------
# property tests
# ------------------------------------------------------------------------------------------


@SETTINGS
@given(device_values)
def test_roundtrip_exact(v):
    j = to_event_value(v)
    assert_canonical_json(j)
    back = from_event_value(j)
    assert same(back, v), (v, j, back)
    # and through real canonical JSON serialization (key order changes, meaning does not)
    assert same(from_event_value(canonical_roundtrip(j)), v)


@SETTINGS
@given(device_values)
def test_roundtrip_through_cbor(v):
    w = through_cbor2(v)  # a genuine cbor2 decode result
    j = from_device_cbor(cbor2.dumps(v))
    assert_canonical_json(j)
    assert same(from_event_value(j), w)
    data = to_device_cbor(j)  # canonical CBOR sorts map keys
    assert same(cbor2.loads(data), w, ordered=False)
    assert same(from_event_value(from_device_cbor(data)), w, ordered=False)


@SETTINGS
@given(device_values)
def test_json_side_is_a_bijection(v):
    """Strict parsing: re-mapping what from_event_value returns reproduces the JSON exactly."""
    j = to_event_value(v)
    assert to_event_value(from_event_value(j)) == j


json_safe = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-MAX_SAFE, MAX_SAFE), st.text(max_size=10)),
    lambda c: st.one_of(
        st.lists(c, max_size=4),
        st.dictionaries(st.text(max_size=6).filter(lambda k: not k.startswith("$")), c, max_size=4),
    ),
    max_leaves=20,
)


@SETTINGS
@given(json_safe)
def test_json_safe_values_map_to_themselves(v):
    assert to_event_value(v) == v
    assert json.dumps(to_event_value(v)) == json.dumps(v)
    assert from_event_value(v) == v


# ------------------------------------------------------------------------------------------
# examples: readability and the documented forms
# ------------------------------------------------------------------------------------------


def test_message_content_unchanged():
    c = {"msgtype": "m.text", "body": "hello"}
    assert to_event_value(c) == c
    assert from_event_value(c) == c


@pytest.mark.parametrize(
    "value, expected",
    [
        (21.5, {"$f": "21.5"}),
        (1e300, {"$f": "1e+300"}),
        (-0.0, {"$f": "-0.0"}),
        (0.1, {"$f": "0.1"}),
        (2.0, {"$f": "2.0"}),
        (float("inf"), {"$f": "inf"}),
        (float("-inf"), {"$f": "-inf"}),
        (float("nan"), {"$f": "nan"}),
        (2**53 - 1, 2**53 - 1),
        (-(2**53 - 1), -(2**53 - 1)),
        (2**53, {"$i": "9007199254740992"}),
        (-(2**53), {"$i": "-9007199254740992"}),
        (123456789012345678901, {"$i": "123456789012345678901"}),
        (b"\xde\xad\xbe\xef", {"$b": "3q2+7w=="}),
        (b"", {"$b": ""}),
        ({1: "on", 2: "off"}, {"$map": [[1, "on"], [2, "off"]]}),
        ({"$unit": "C", "t": 21.5}, {"$$unit": "C", "t": {"$f": "21.5"}}),
        ({"$$x": 1}, {"$$$x": 1}),
        ({"$f": "21.5"}, {"$$f": "21.5"}),
        (cbor2.CBORTag(40000, (1, 2)), {"$tag": [40000, [1, 2]]}),
        (cbor2.CBORTag(40000, cbor2.frozendict({"a": (1,)})), {"$tag": [40000, {"a": [1]}]}),
        (cbor2.CBORTag(2**64 - 1, None), {"$tag": [{"$i": "18446744073709551615"}, None]}),
        (cbor2.undefined, {"$undefined": None}),
        (cbor2.CBORSimpleValue(16), {"$simple": 16}),
        (datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc), {"$tag": [0, "2024-05-01T12:00:00Z"]}),
        (Decimal("21.50"), {"$tag": [4, [-2, 2150]]}),
        (Fraction(1, 3), {"$tag": [30, [1, 3]]}),
        (uuid.UUID(int=1), {"$tag": [37, {"$b": "AAAAAAAAAAAAAAAAAAAAAQ=="}]}),
        ({(1, 2): "pair"}, {"$map": [[[1, 2], "pair"]]}),
        (complex(1, -2.5), {"$tag": [43000, [{"$f": "1.0"}, {"$f": "-2.5"}]]}),
    ],
)
def test_documented_forms(value, expected):
    j = to_event_value(value)
    assert j == expected
    assert_canonical_json(j)
    assert same(from_event_value(j), value)


def test_sensor_reading_readable():
    reading = {"t": 21.5, "h": 40, "raw": b"\x01\x02", 7: True}
    j = to_event_value(reading)
    assert j == {"$map": [["t", {"$f": "21.5"}], ["h", 40], ["raw", {"$b": "AQI="}], [7, True]]}
    # a person reading the event JSON in Element sees "21.5"
    assert '"21.5"' in json.dumps(j)


def test_huge_int_beyond_str_limit_uses_hex():
    n = 2**20000 + 1
    j = to_event_value(n)
    assert j["$i"].startswith("0x")
    assert from_event_value(j) == n
    assert from_event_value(to_event_value(-n)) == -n


def test_tuple_and_frozendict_keys_come_back_immutable():
    v = cbor2.loads(bytes.fromhex("a1") + cbor2.dumps([1, [2, {3: 4}]]) + b"\x01")
    back = from_event_value(to_event_value(v))
    (k,) = back
    assert type(k) is tuple and type(k[1]) is tuple and type(k[1][1]) is cbor2.frozendict
    assert same(back, v)
    sv = cbor2.loads(bytes.fromhex("a1d90102820102") + b"\x01")  # set as a key -> frozenset
    back = from_event_value(to_event_value(sv))
    assert type(next(iter(back))) is frozenset and back == sv


# ------------------------------------------------------------------------------------------
# strictness of from_event_value
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        1.5,  # floats are not canonical JSON
        2**53,  # out-of-range int
        {"$f": "21.50"},  # not the shortest repr
        {"$f": "NaN"},
        {"$f": " 21.5"},
        {"$f": "1_0.0"},
        {"$f": 21.5},
        {"$i": "12"},  # safe ints are plain numbers
        {"$i": "0123456789012345678901"},
        {"$i": "+123456789012345678901"},
        {"$i": "0x10"},
        {"$b": "3q2+7w"},  # missing padding
        {"$b": "3q2+7x=="},  # non-canonical trailing bits
        {"$b": "!!!!"},
        {"$map": [["a", 1]]},  # only string keys: must be a plain object
        {"$map": [[1, 1], [1, 2]]},  # duplicate key
        {"$map": [[1]]},
        {"$map": {"1": 2}},
        {"$tag": [1]},
        {"$tag": [-1, 0]},
        {"$tag": [{"$i": "18446744073709551616"}, 0]},
        {"$tag": [1, 1700000000]},  # datetime, but not the form to_event_value writes (tag 0)
        {"$tag": [2, {"$b": "AQ=="}]},  # bignum: written as $i, never as tag 2
        {"$tag": [28, 1]},  # value sharing
        {"$tag": [37, "not bytes"]},
        {"$simple": 20},
        {"$simple": 24},
        {"$undefined": 0},
        {"$x": 1},  # reserved key outside a tagged object
        {"$f": "1.0", "other": 1},
        {"$": 1},
        {"a": (1, 2)},  # not a JSON type
    ],
)
def test_from_event_value_rejects(bad):
    with pytest.raises(PayloadError):
        from_event_value(bad)


def test_lone_surrogates_rejected():
    with pytest.raises(PayloadError):
        to_event_value("\ud800")
    with pytest.raises(PayloadError):
        to_event_value({"\udfff": 1})
    with pytest.raises(PayloadError):
        from_event_value("\ud800")


def test_depth_limits():
    v: object = 1
    for _ in range(MAX_DEPTH):
        v = [v]
    assert same(from_event_value(to_event_value(v)), v)
    with pytest.raises(PayloadError):
        to_event_value([v])
    j: object = 1
    for _ in range(MAX_DEPTH + 1):
        j = [j]
    with pytest.raises(PayloadError):
        from_event_value(j)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(PayloadError):
        to_event_value(cyclic)


def test_unsupported_python_types_rejected():
    for bad in (object(), bytearray(b"x"), {1, 2, 3}.__iter__(), range(3), datetime.timedelta(1)):
        with pytest.raises(PayloadError):
            to_event_value(bad)


# ------------------------------------------------------------------------------------------
# CBOR bytes
# ------------------------------------------------------------------------------------------


def test_cbor_sensor_payload():
    data = cbor2.dumps({"t": 21.5, "id": b"\x00\x01"})
    assert from_device_cbor(data) == {"t": {"$f": "21.5"}, "id": {"$b": "AAE="}}


def test_cbor_float_reencoded_shortest():
    assert to_device_cbor({"$f": "21.5"}) == bytes.fromhex("f94d60")  # half precision is exact
    assert to_device_cbor({"$f": "0.1"}) == bytes.fromhex("fb3fb999999999999a")  # needs double
    assert to_device_cbor({"$f": "nan"}) == bytes.fromhex("f97e00")
    assert to_device_cbor({"$f": "-inf"}) == bytes.fromhex("f9fc00")
    assert to_device_cbor({"$f": "-0.0"}) == bytes.fromhex("f98000")
    assert to_device_cbor({"$i": "18446744073709551616"}) == bytes.fromhex("c249010000000000000000")


def test_cbor_semantic_tags_from_device():
    assert from_device_cbor(bytes.fromhex("c11a5e0be100")) == {"$tag": [0, "2020-01-01T00:00:00Z"]}
    assert from_device_cbor(bytes.fromhex("c249010000000000000000")) == {"$i": "18446744073709551616"}
    assert from_device_cbor(bytes.fromhex("d9ea6001")) == {"$tag": [60000, 1]}
    assert from_device_cbor(bytes.fromhex("f7")) == {"$undefined": None}
    assert from_device_cbor(bytes.fromhex("f0")) == {"$simple": 16}
    assert from_device_cbor(bytes.fromhex("d9d9f701")) == 1  # self-described CBOR marker is dropped


@pytest.mark.parametrize(
    "hexdata",
    [
        "",  # empty
        "0102",  # trailing bytes
        "a1",  # truncated map
        "a101",  # map missing value
        "9f01",  # unterminated indefinite array
        "ff",  # stray break
        "1c",  # reserved additional info
        "5bffffffffffffffff00",  # byte string length past the end
        "9bffffffffffffffff",  # array length past the end
        "f810",  # two-byte simple value below 32
        "7f4100ff",  # indefinite text with a byte-string chunk
        "62c328",  # invalid UTF-8
        "bf01ff",  # odd indefinite map
        "d81c81d81d00",  # shared-value cycle
        "d9010080",  # stringref namespace
        "c16161",  # datetime from text 'a' via tag 1
        "c0616e",  # tag 0 with a non-date string
        "d82550000102",  # UUID with wrong length
        "d81e820100",  # rational with zero denominator
        "81" * (MAX_DEPTH + 1) + "01",  # too deep
        "c1" * (MAX_DEPTH + 1) + "01",  # tags nested too deep
    ],
)
def test_malformed_cbor_raises_payload_error(hexdata):
    with pytest.raises(PayloadError):
        from_device_cbor(bytes.fromhex(hexdata))


def test_max_depth_cbor_accepted():
    assert from_device_cbor(bytes.fromhex("81" * MAX_DEPTH + "01")) is not None


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_never_crash(data):
    try:
        j = from_device_cbor(data)
    except PayloadError:
        return
    assert_canonical_json(j)
    from_event_value(j)


@settings(max_examples=500, deadline=None)
@given(device_values, st.data())
def test_mutated_cbor_never_crashes(v, data):
    raw = bytearray(cbor2.dumps(v))
    assume(raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        j = from_device_cbor(bytes(raw))
    except PayloadError:
        return
    assert_canonical_json(j)


# ------------------------------------------------------------------------------------------
# MQTT payloads
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, hint, expected",
    [
        (b'{"h":40,"t":21.5}', None, {"kind": "json", "value": {"h": 40, "t": {"$f": "21.5"}}}),
        (
            b'{"t": 21.5, "h": 40}',
            None,
            {"kind": "json", "text": '{"t": 21.5, "h": 40}'},
        ),
        (b"21.5", None, {"kind": "json", "value": {"$f": "21.5"}}),
        (b"1e3", None, {"kind": "json", "text": "1e3"}),
        (b"on", None, {"kind": "text", "text": "on"}),
        (b"", None, {"kind": "text", "text": ""}),
        (b"NaN", None, {"kind": "text", "text": "NaN"}),
        (b"\xff\x00", None, {"kind": "bytes", "base64": "/wA="}),
        (b"42", "text/plain", {"kind": "text", "text": "42"}),
        (b"42", "application/octet-stream", {"kind": "bytes", "base64": "NDI="}),
        (b"42", 42, {"kind": "bytes", "base64": "NDI="}),
        (b"\xa1at\xf9M`", "application/cbor", {"kind": "cbor", "value": {"t": {"$f": "21.5"}}}),
        (
            b"\xa1at\xfb@5\x80\x00\x00\x00\x00\x00",
            60,
            {"kind": "cbor", "value": {"t": {"$f": "21.5"}}, "base64": "oWF0+0A1gAAAAAAA"},
        ),
        (b"\xa1", "application/cbor", {"kind": "bytes", "base64": "oQ=="}),
        (b'{"a":1}', "application/json; charset=utf-8", {"kind": "json", "value": {"a": 1}}),
        (b'{"$a":1}', None, {"kind": "json", "value": {"$$a": 1}}),
    ],
)
def test_mqtt_payload_examples(payload, hint, expected):
    content = mqtt_payload_to_content(payload, hint)
    assert content == expected
    assert_canonical_json(content)
    assert content_to_mqtt_payload(canonical_roundtrip(content)) == payload


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=60),
        st.text(max_size=40).map(lambda s: s.encode("utf-8")),
        json_safe.map(lambda v: json.dumps(v).encode("utf-8")),
        json_safe.map(lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()),
        device_values.map(cbor2.dumps),
    ),
    st.sampled_from([None, "application/json", "text/plain", "application/cbor", "application/octet-stream", 60, "x/unknown"]),
)
def test_mqtt_payload_exact_roundtrip(payload, hint):
    content = mqtt_payload_to_content(payload, hint)
    assert_canonical_json(content)
    assert content_to_mqtt_payload(content) == payload
    assert content_to_mqtt_payload(canonical_roundtrip(content)) == payload


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"kind": "nope"},
        {"kind": "text"},
        {"kind": "text", "text": 1},
        {"kind": "bytes", "base64": "***"},
        {"kind": "json", "value": {"$b": "AA=="}},  # not representable as JSON text
        {"kind": "json", "value": 1, "extra": 2},
        "not a dict",
    ],
)
def test_content_to_mqtt_payload_rejects(bad):
    with pytest.raises(PayloadError):
        content_to_mqtt_payload(bad)


def test_json_payload_is_stored_once():
    """Issue 15: a non-canonical JSON payload (Zigbee2MQTT's bridge/devices: unsorted keys) was
    kept as value AND text, doubling it past the event limit at ~31 KB. Now one representation."""
    devices = [{"ieee_address": f"0x{i:016x}", "friendly_name": f"lamp {i}", "type": "Router",
                "definition": {"model": "LED1545G12", "vendor": "IKEA", "exposes": [{"type": "light"}]}}
               for i in range(40)]
    payload = json.dumps(devices).encode()
    content = mqtt_payload_to_content(payload)
    assert content == {"kind": "json", "text": payload.decode()}
    assert len(json.dumps(content)) < len(payload) * 1.3
    assert content_to_mqtt_payload(canonical_roundtrip(content)) == payload


def test_json_payload_stored_before_issue_15_still_reads():
    """Events stored with both value and text: the text is the payload."""
    old = {"kind": "json", "value": {"t": {"$f": "21.5"}, "h": 40}, "text": '{"t": 21.5, "h": 40}'}
    assert content_to_mqtt_payload(old) == b'{"t": 21.5, "h": 40}'


@pytest.mark.parametrize("bad", [{"kind": "json", "text": 1}, {"kind": "json", "text": "1", "extra": 2},
                                 {"kind": "json"}])
def test_json_text_shape_rejects(bad):
    with pytest.raises(PayloadError):
        content_to_mqtt_payload(bad)


def test_deep_json_mqtt_payload_falls_back_to_text():
    payload = b"[" * 5000 + b"]" * 5000
    content = mqtt_payload_to_content(payload)
    assert content == {"kind": "text", "text": payload.decode()}
    assert content_to_mqtt_payload(content) == payload


def test_base64_is_standard_alphabet():
    j = to_event_value(bytes(range(256)))
    assert base64.b64decode(j["$b"], validate=True) == bytes(range(256))


def test_nan_inside_semantic_tag():
    j = from_device_cbor(cbor2.dumps(complex(float("nan"), 1.0)))
    assert j == {"$tag": [43000, [{"$f": "nan"}, {"$f": "1.0"}]]}
    back = from_event_value(j)
    assert math.isnan(back.real) and back.imag == 1.0


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=12), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6).map(json.dumps)), st.sampled_from(["", " ", "\t\r\n "]))
def test_the_json_sniff_never_turns_away_json(text: str, padding: str) -> None:
    """Payloads that cannot start a JSON text skip the parse; anything the decoder accepts passes."""
    candidate = padding + text
    try:
        payload_mapping._JSON_DECODER.decode(candidate)
    except ValueError:
        return
    assert payload_mapping._may_be_json(candidate)
