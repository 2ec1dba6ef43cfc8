"""Fuzzing in CI, bounded and reproducible: the pure layers a network request meets first.

Two kinds, both with a fixed seed so a failure here is a failure on every run:

* property tests (hypothesis, ``derandomize=True``): generated *valid* requests, packets and
  payloads, pushed through the same checks as the mutation fuzzer;
* mutation fuzzing (``tests/support/mutate.py``): a valid corpus per protocol, mutated (bit flips,
  insertions, deletions, truncation, splicing) a fixed number of times.

What each check accepts is in ``tests/support/fuzz_targets.py``: only the documented errors
(MQTT codec errors, a clean CoAP 4.xx, PayloadError, M_NOT_JSON/M_BAD_JSON), round trips that
lose nothing, and accepted values that are valid event content. The long run is
``bench/fuzz.py`` (a million inputs per protocol); the end-to-end pass against a live hub is
``tests/test_fuzz_e2e.py``.
"""
from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontends.coap import wire
from frontends.coap.translate import translate
from frontends.mqtt.codec import encode
from frontends.mqtt.packets import Connect
from matrix_core import errors
from tests.support import fuzz_targets
from tests.support.fuzz_targets import CORPORA, TARGETS, KnownElsewhere
from tests.support.mutate import Mutator, run
from tests.test_mqtt_codec import packets
from tests.test_payload_mapping import device_values

SEED = 20  # issue 20
#: Mutated inputs per protocol in CI: a few seconds each on the 2-core box.
MUTATIONS = {"mqtt": 12000, "mqtt-connection": 12000, "coap": 20000, "cbor": 12000, "json": 12000}

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Generating whole MQTT sessions is the slow part: fewer of them.
FUZZ_SESSIONS = settings(FUZZ, max_examples=120)


# ---------------------------------------------------------------------------------------------
# the mutator itself
# ---------------------------------------------------------------------------------------------


def test_mutator_is_reproducible_and_mutates() -> None:
    corpus = [b"hello world", b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"]
    a = [Mutator(7, corpus).next() for _ in range(1)]
    first = Mutator(7, corpus)
    second = Mutator(7, corpus)
    run_a = [first.next() for _ in range(500)]
    assert run_a == [second.next() for _ in range(500)]
    assert a[0] == run_a[0]
    assert run_a != [Mutator(8, corpus).next() for _ in range(500)]
    assert sum(x not in corpus for x in run_a) > 450  # nearly all are new inputs
    assert {len(x) for x in run_a} - {len(c) for c in corpus}  # lengths change too


def test_run_reports_failures_with_their_input_and_counts_known_classes() -> None:
    def check(data: bytes) -> None:
        if data.startswith(b"k"):
            raise KnownElsewhere("fixed elsewhere")
        if b"x" in data:
            raise IndexError("found it")

    result = run("demo", check, [b"kkkk", b"abc", b"xyz"], seed=1, count=200, known=(KnownElsewhere,))
    assert result.count >= 3 and result.failures
    failure = result.failures[0]
    assert failure.index == 2 and failure.data == b"xyz" and "IndexError: found it" in failure.error
    assert "seed=1" in str(failure) and b"xyz".hex() in str(failure)
    assert result.known["fixed elsewhere"] >= 1


def test_mutate_json_changes_types_and_never_shares_its_constants() -> None:
    """Shared constants once made a body cyclic (cbor2: cyclic data structure) after two rounds."""
    import random
    from tests.support.mutate import INTERESTING_JSON, mutate_json
    before = json.dumps(INTERESTING_JSON)
    rng = random.Random(3)
    body = {"name": "x", "invite": ["@bob:hub"], "creation_content": {"m.federate": False}}
    seen = set()
    for _ in range(3000):
        value = mutate_json(rng, json.loads(json.dumps(body)), 3)
        cbor2.dumps(value)  # no cycles
        seen.add(json.dumps(value, sort_keys=True))
    assert json.dumps(INTERESTING_JSON) == before
    assert len(seen) > 1000


# ---------------------------------------------------------------------------------------------
# mutation fuzzing, one seed, a fixed count per protocol
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(TARGETS))
def test_mutation_fuzz(protocol: str) -> None:
    result = run(protocol, TARGETS[protocol], CORPORA[protocol](), seed=SEED, count=MUTATIONS[protocol],
                 known=(KnownElsewhere,), max_failures=5)
    assert not result.failures, "\n".join(str(f) for f in result.failures)
    assert result.count == MUTATIONS[protocol]


# ---------------------------------------------------------------------------------------------
# property tests: MQTT
# ---------------------------------------------------------------------------------------------


def _mqtt_stream(level: int, pkts: list) -> bytes:
    return b"".join(encode(p, None if isinstance(p, Connect) else level) for p in pkts
                    if not isinstance(p, Connect) or p.protocol_level == level)


@FUZZ_SESSIONS
@given(st.sampled_from([4, 5]).flatmap(lambda lvl: st.tuples(st.just(lvl), st.lists(packets(lvl), max_size=4))),
       st.binary(max_size=8), st.integers(0, 1000))
def test_mqtt_valid_streams_with_a_tail_of_garbage(level_and_packets, garbage: bytes, cut: int) -> None:
    level, pkts = level_and_packets
    stream = _mqtt_stream(level, pkts)
    fuzz_targets.check_mqtt_codec(stream)
    fuzz_targets.check_mqtt_codec(stream[:cut] + garbage + stream[cut:])


@FUZZ_SESSIONS
@given(st.sampled_from([4, 5]).flatmap(lambda lvl: st.tuples(st.just(lvl), st.lists(packets(lvl), max_size=6))),
       st.text(max_size=8), st.binary(max_size=4), st.integers(0, 1000))
def test_mqtt_connection_takes_any_session(level_and_packets, client_id: str, garbage: bytes, cut: int) -> None:
    """A CONNECT then any packets (client's or not, in any order): events or a violation, and
    what the server writes back decodes."""
    level, pkts = level_and_packets
    connect = encode(Connect(client_id.replace("\x00", ""), True, 10, "alice", b"pw", None, level), None)
    stream = connect + _mqtt_stream(level, pkts)
    fuzz_targets.check_mqtt_connection(stream)
    fuzz_targets.check_mqtt_connection(stream[:cut] + garbage + stream[cut:])


# ---------------------------------------------------------------------------------------------
# property tests: CoAP
# ---------------------------------------------------------------------------------------------

_segment = st.one_of(
    st.sampled_from([b"_m", b"_matrix", b"c", b"client", b"a", b"v1", b"v3", b"r0", b"r", b"rooms", b"s",
                     b"send", b"st", b"sy", b"7", b"9", b"8", b"E", b"n", b"L", b"j", b"#sensors:hub",
                     b"!r:hub", b"m.room.message", b""]),
    st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates included
    st.binary(max_size=12),
)
_query = st.one_of(st.sampled_from([b"a=tok", b"s=s1", b"t=0", b"limit=99999999999999999999", b"dir=x", b"=",
                                    b"access_token", b"fi=%7B%7D"]), st.binary(max_size=16))
_body = st.one_of(device_values.map(lambda v: cbor2.dumps(v)), st.binary(max_size=32),
                  st.just(b'{"msgtype":"m.text","body":"hi"}'))


@FUZZ
@given(mtype=st.sampled_from([wire.CON, wire.NON]), code=st.integers(0, 31),
       path=st.lists(_segment, max_size=9), query=st.lists(_query, max_size=3),
       content_format=st.sampled_from([None, 0, 42, 50, 60, 65535]),
       accept=st.sampled_from([None, 50, 60, 0, 11542]), token=st.one_of(st.none(), st.binary(max_size=40)),
       extra=st.lists(st.tuples(st.sampled_from([1, 4, 5, 6, 8, 20, 23, 27, 28, 35, 60, 258, 2049]),
                                st.binary(max_size=4)), max_size=2),
       payload=_body)
def test_coap_any_request_is_a_call_or_a_clean_error(mtype, code, path, query, content_format, accept, token, extra,
                                                      payload) -> None:
    options = [(11, p) for p in path] + [(15, q) for q in query] + list(extra)
    if content_format is not None:
        options.append((12, wire.encode_uint(content_format)))
    if accept is not None:
        options.append((17, wire.encode_uint(accept)))
    if token is not None:
        options.append((256, token))
    options.sort(key=lambda o: o[0])  # stable: repeated options keep their order
    datagram = wire.encode(mtype, code, 0x1234, b"tk", options, payload)
    try:
        fuzz_targets.check_coap(datagram)
    except KnownElsewhere:
        pass  # non-UTF-8 Uri-Path/Query: aiocoap's decoder, fixed by the CoAP change (R3)


@FUZZ
@given(code=st.integers(0, 255), path=st.lists(st.text(max_size=10), max_size=10),
       query=st.lists(st.text(max_size=10), max_size=4), token=st.one_of(st.none(), st.binary(max_size=20)))
def test_translate_any_text_path(code: int, path: list[str], query: list[str], token: bytes | None) -> None:
    try:
        call = translate(code, path, query, token)
    except errors.MatrixError as err:
        assert 400 <= err.status < 500
    else:
        assert call.method in ("GET", "POST", "PUT", "DELETE")
        assert all(isinstance(s, str) for s in call.segments)


# ---------------------------------------------------------------------------------------------
# property tests: CBOR and JSON
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(device_values, st.integers(0, 64), st.binary(max_size=3))
def test_cbor_device_values_and_their_mutants(value, cut: int, noise: bytes) -> None:
    data = cbor2.dumps(value)
    fuzz_targets.check_cbor(data)
    fuzz_targets.check_cbor(data[:cut] + noise + data[cut:])
    fuzz_targets.check_cbor(data[:cut])


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(_json_values, st.sampled_from([None, 0, 2]), st.integers(0, 64), st.binary(max_size=3))
def test_json_bodies_and_their_mutants(value, indent, cut: int, noise: bytes) -> None:
    data = json.dumps(value, indent=indent, ensure_ascii=indent == 2).encode("utf-8")
    fuzz_targets.check_json(data)
    fuzz_targets.check_json(data[:cut] + noise + data[cut:])


@FUZZ
@given(st.binary(max_size=64))
def test_json_any_bytes(data: bytes) -> None:
    fuzz_targets.check_json(data)
