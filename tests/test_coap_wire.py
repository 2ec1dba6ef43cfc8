"""frontends.coap.wire (the hot path's datagram parser and builder) against aiocoap's own codec."""
from __future__ import annotations

import warnings

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption, UintOption
from hypothesis import given, settings
from hypothesis import strategies as st

from frontends.coap import wire

# aiocoap deprecates giving a message its type and id; these tests pin exact datagrams
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_segment = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
_payload = st.binary(max_size=600)
_uint16 = st.one_of(st.none(), st.integers(0, 65535))


def aiocoap_request(mtype: Type, code: Code, mid: int, token: bytes, path: list[str], query: list[str],
                    cf: int | None, accept: int | None, access: bytes | None, payload: bytes,
                    host: str | None = None, port: int | None = None) -> bytes:
    msg = aiocoap.Message(mtype=mtype, code=code, mid=mid, token=token, payload=payload)
    msg.opt.uri_path = path
    msg.opt.uri_query = query
    if host is not None:
        msg.opt.uri_host = host
    if port is not None:
        msg.opt.uri_port = port
    if cf is not None:
        msg.opt.content_format = cf
    if accept is not None:
        msg.opt.accept = accept
    if access is not None:
        msg.opt.add_option(OpaqueOption(256, access))
    return msg.encode()


@settings(max_examples=300, deadline=None)
@given(mtype=st.sampled_from([Type.CON, Type.NON]), code=st.sampled_from([Code.POST, Code.PUT]),
       mid=st.integers(0, 65535), token=st.binary(max_size=8), path=st.lists(_segment, max_size=10),
       query=st.lists(_segment, max_size=4), cf=_uint16, accept=_uint16,
       access=st.one_of(st.none(), st.binary(max_size=300)), payload=_payload,
       host=st.one_of(st.none(), st.text("abcdefgh.-", min_size=1, max_size=20)),
       port=st.one_of(st.none(), st.integers(0, 65535)))
def test_parses_what_aiocoap_encodes(mtype, code, mid, token, path, query, cf, accept, access, payload,
                                     host, port) -> None:
    data = aiocoap_request(mtype, code, mid, token, path, query, cf, accept, access, payload, host, port)
    parsed = wire.parse_request(data)
    assert parsed is not None
    decoded = aiocoap.Message.decode(data)  # and it means what aiocoap reads
    assert parsed.mtype == decoded.mtype.value and parsed.code == decoded.code.value
    assert parsed.mid == decoded.mid and parsed.token == decoded.token
    assert parsed.uri_path == list(decoded.opt.uri_path) == path
    assert parsed.uri_query == list(decoded.opt.uri_query) == query
    assert parsed.content_format == (None if decoded.opt.content_format is None else int(decoded.opt.content_format))
    assert parsed.accept == (None if decoded.opt.accept is None else int(decoded.opt.accept))
    opts = decoded.opt.get_option(256)
    assert parsed.access_token == (opts[-1].value if opts else None)
    assert parsed.payload == decoded.payload == payload


@settings(max_examples=300, deadline=None)
@given(mtype=st.sampled_from([wire.CON, wire.NON, wire.ACK]), code=st.integers(0, 255), mid=st.integers(0, 65535),
       token=st.binary(max_size=8), cf=st.integers(0, 65535), max_age=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       size1=st.one_of(st.none(), st.integers(0, 2**32 - 1)), payload=_payload)
def test_aiocoap_decodes_what_we_encode(mtype, code, mid, token, cf, max_age, size1, payload) -> None:
    options = [(wire.CONTENT_FORMAT, wire.encode_uint(cf))]
    if max_age is not None:
        options.append((wire.MAX_AGE, wire.encode_uint(max_age)))
    if size1 is not None:
        options.append((wire.SIZE1, wire.encode_uint(size1)))
    data = wire.encode(mtype, code, mid, token, options, payload)
    msg = aiocoap.Message.decode(data)
    assert (msg.mtype.value, msg.code.value, msg.mid, msg.token, msg.payload) == (mtype, code, mid, token, payload)
    assert int(msg.opt.content_format) == cf
    assert msg.opt.max_age == max_age
    assert msg.opt.size1 == size1
    # byte for byte what aiocoap itself would send
    ours = aiocoap.Message(mtype=Type(mtype), code=Code(code), mid=mid, token=token, payload=payload,
                           content_format=cf)
    if max_age is not None:
        ours.opt.max_age = max_age
    if size1 is not None:
        ours.opt.size1 = size1
    assert ours.encode() == data


def test_empty_ack_and_rst() -> None:
    for mtype in (wire.ACK, wire.RST):
        msg = aiocoap.Message.decode(wire.empty(mtype, 0xBEEF))
        assert msg.mtype.value == mtype and msg.code == Code.EMPTY and msg.mid == 0xBEEF and msg.token == b""


with warnings.catch_warnings():  # aiocoap deprecates giving a message its type and id
    warnings.simplefilter("ignore", DeprecationWarning)
    NOT_HOT_PATH = [
        ("GET", aiocoap.Message(mtype=Type.CON, code=Code.GET, mid=1, uri_path=("x",))),
        ("DELETE", aiocoap.Message(mtype=Type.CON, code=Code.DELETE, mid=1)),
        ("FETCH", aiocoap.Message(mtype=Type.CON, code=Code.FETCH, mid=1)),
        ("ACK", aiocoap.Message(mtype=Type.ACK, code=Code.POST, mid=1)),
        ("a response", aiocoap.Message(mtype=Type.CON, code=Code.CHANGED, mid=1)),
        ("Observe", aiocoap.Message(mtype=Type.CON, code=Code.POST, mid=1, observe=0)),
        ("Block1", aiocoap.Message(mtype=Type.CON, code=Code.PUT, mid=1,
                                   block1=aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 6))),
        ("Block2", aiocoap.Message(mtype=Type.CON, code=Code.POST, mid=1,
                                   block2=aiocoap.optiontypes.BlockOption.BlockwiseTuple(1, False, 6))),
        ("No-Response", aiocoap.Message(mtype=Type.NON, code=Code.POST, mid=1, no_response=2)),
        ("Size1", aiocoap.Message(mtype=Type.CON, code=Code.POST, mid=1, size1=3)),
        ("If-Match", aiocoap.Message(mtype=Type.CON, code=Code.PUT, mid=1, if_match=[b"x"])),
    ]


@pytest.mark.parametrize("describe, message", NOT_HOT_PATH)
def test_everything_else_goes_to_aiocoap(describe: str, message: aiocoap.Message) -> None:
    assert wire.parse_request(message.encode()) is None, describe


def test_unknown_and_odd_options_go_to_aiocoap() -> None:
    msg = aiocoap.Message(mtype=Type.CON, code=Code.POST, mid=1, uri_path=("a",))
    msg.opt.add_option(UintOption(2049, 5))  # unknown, critical (odd)
    assert wire.parse_request(msg.encode()) is None
    two_formats = aiocoap.Message(mtype=Type.CON, code=Code.POST, mid=1)
    two_formats.opt.add_option(UintOption(12, 60))
    two_formats.opt.add_option(UintOption(12, 50))
    assert wire.parse_request(two_formats.encode()) is None  # not repeatable: aiocoap's call


@pytest.mark.parametrize("data", [
    b"", b"\x44\x02\x00", b"\x84\x02\x00\x01abcd",  # short; version 2
    b"\x49\x02\x00\x01" + b"t" * 9,  # token length 9
    b"\x44\x02\x00\x01abc",  # token cut short
    b"\x44\x02\x00\x01abcd\xff",  # payload marker, no payload
    b"\x40\x02\x00\x01\xb5abc",  # option longer than the datagram
    b"\x40\x02\x00\x01\xf0",  # delta 15 that is not the payload marker
    b"\x40\x02\x00\x01\x1f",  # length 15
    b"\x40\x02\x00\x01\xd0",  # extended delta missing
    b"\x40\x02\x00\x01\xb2\xff\xfe",  # Uri-Path that is not UTF-8
])
def test_malformed_goes_to_aiocoap(data: bytes) -> None:
    assert wire.parse_request(data) is None


@given(st.binary(max_size=64))
def test_never_raises(data: bytes) -> None:
    wire.parse_request(data)


# -- bad_string_option: requests aiocoap cannot decode (issue 20, R3) ----------------------------

@settings(max_examples=200, deadline=None)
@given(mtype=st.sampled_from([Type.CON, Type.NON]), code=st.sampled_from([Code.GET, Code.POST, Code.PUT]),
       mid=st.integers(0, 65535), token=st.binary(max_size=8), path=st.lists(_segment, max_size=6),
       query=st.lists(_segment, max_size=3), payload=_payload)
def test_good_strings_are_not_rejected(mtype, code, mid, token, path, query, payload) -> None:
    data = aiocoap_request(mtype, code, mid, token, path, query, None, None, None, payload)
    assert wire.bad_string_option(data) is None


@pytest.mark.parametrize("number, name", [(11, "Uri-Path"), (15, "Uri-Query"), (3, "Uri-Host")])
@given(mtype=st.sampled_from([wire.CON, wire.NON]), mid=st.integers(0, 65535), token=st.binary(max_size=8))
def test_a_string_option_that_is_not_utf8_is_rejected(number: int, name: str, mtype: int, mid: int,
                                                      token: bytes) -> None:
    data = wire.encode(mtype, 1, mid, token, [(number, b"\xc3\x28")], b"body")
    with pytest.raises(UnicodeDecodeError):  # what aiocoap's decoder does with it
        aiocoap.Message.decode(data)
    assert wire.bad_string_option(data) == wire.Rejection(mtype, mid, token, f"{name} option is not UTF-8")


@pytest.mark.parametrize("data", [
    b"\x60\x01\x00\x01\xb2\xc3\x28",  # an ACK
    b"\x40\x45\x00\x01\xb2\xc3\x28",  # a response (2.05)
    b"\x40\x00\x00\x01",  # empty
    b"\x40\x01\x00\x01\xb5\xc3\x28",  # option longer than the datagram
    b"\x40\x01\x00\x01\xf2\xc3\x28",  # delta 15
])
def test_rejects_only_well_formed_requests(data: bytes) -> None:
    assert wire.bad_string_option(data) is None


@given(st.binary(max_size=64))
def test_bad_string_option_never_raises(data: bytes) -> None:
    wire.bad_string_option(data)
