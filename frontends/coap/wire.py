"""RFC 7252 §3 message format over UDP: parse a request datagram, build a response one. Pure.

Only what the hub's own message layer (``message_layer.py``) needs for its hot path: a
confirmable or non-confirmable POST/PUT whose options are all in ``FAST_OPTIONS``. Anything
else (other methods, Observe, Block1/2, No-Response, OSCORE, unknown or critical options, a
malformed datagram) makes ``parse_request`` return None and the datagram goes to aiocoap,
unchanged. Responses are built by ``encode``. Both are checked against aiocoap's own
``Message.encode``/``decode`` (tests/test_coap_wire.py, hypothesis round trips).
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

__all__ = ["CON", "NON", "ACK", "RST", "Request", "FAST_OPTIONS", "parse_request", "encode",
           "encode_uint", "empty", "STRING_OPTIONS", "Rejection", "bad_string_option"]

CON, NON, ACK, RST = 0, 1, 2, 3

URI_HOST, URI_PORT, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT, SIZE1 = 3, 7, 11, 12, 14, 15, 17, 60
ACCESS_TOKEN = 256  # MSC3079's token option (short_paths.ACCESS_TOKEN_OPTION)

#: Options a hot-path request may carry; any other one sends the datagram to aiocoap.
FAST_OPTIONS = frozenset({URI_HOST, URI_PORT, URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT, ACCESS_TOKEN})

_POST, _PUT = 2, 3
_HEADER = struct.Struct("!BBH")


class Request(NamedTuple):
    mtype: int  # CON or NON
    code: int  # 2 (POST) or 3 (PUT)
    mid: int
    token: bytes
    uri_path: list[str]
    uri_query: list[str]
    content_format: int | None
    accept: int | None
    access_token: bytes | None  # the last option 256, as aiocoap's get_option(...)[-1]
    payload: bytes


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def parse_request(data: bytes) -> Request | None:
    """The request in `data` if it is a hot-path one, else None (aiocoap decides).

    None is also the answer for anything malformed: aiocoap then answers or ignores it
    exactly as it always did.
    """
    n = len(data)
    if n < 4:
        return None
    first = data[0]
    code = data[1]
    if first >> 6 != 1 or (code != _POST and code != _PUT):
        return None
    mtype = (first >> 4) & 3
    if mtype > NON:
        return None
    tkl = first & 0x0F
    if tkl > 8:
        return None
    pos = 4 + tkl
    if pos > n:
        return None
    mid = data[2] << 8 | data[3]
    token = data[4:pos]
    path: list[str] = []
    query: list[str] = []
    content_format = accept = None
    access_token = None
    number = 0
    payload = b""
    try:
        while pos < n:
            byte = data[pos]
            pos += 1
            if byte == 0xFF:
                if pos == n:
                    return None  # payload marker with no payload: a format error
                payload = data[pos:]
                break
            delta = byte >> 4
            length = byte & 0x0F
            if delta >= 13:
                if delta == 13:
                    delta = data[pos] + 13
                    pos += 1
                elif delta == 14:
                    delta = (data[pos] << 8 | data[pos + 1]) + 269
                    pos += 2
                else:
                    return None
            if length >= 13:
                if length == 13:
                    length = data[pos] + 13
                    pos += 1
                elif length == 14:
                    length = (data[pos] << 8 | data[pos + 1]) + 269
                    pos += 2
                else:
                    return None
            number += delta
            end = pos + length
            if end > n:
                return None
            if number == URI_PATH:
                path.append(data[pos:end].decode("utf-8"))
            elif number == URI_QUERY:
                query.append(data[pos:end].decode("utf-8"))
            elif number == CONTENT_FORMAT:
                if length > 2 or content_format is not None:  # aiocoap's call on odd repeats
                    return None
                content_format = _uint(data[pos:end])
            elif number == ACCEPT:
                if length > 2 or accept is not None:
                    return None
                accept = _uint(data[pos:end])
            elif number == ACCESS_TOKEN:
                access_token = data[pos:end]
            elif number not in FAST_OPTIONS:
                return None
            pos = end
    except (IndexError, UnicodeDecodeError):
        return None
    return Request(mtype, code, mid, token, path, query, content_format, accept, access_token, payload)


#: RFC 7252 §5.10 / RFC 8613: options whose value is a UTF-8 string (Uri-Host, Location-Path,
#: Uri-Path, Uri-Query, Location-Query, Proxy-Uri, Proxy-Scheme).
STRING_OPTIONS = {3: "Uri-Host", 8: "Location-Path", 11: "Uri-Path", 15: "Uri-Query", 20: "Location-Query",
                  35: "Proxy-Uri", 39: "Proxy-Scheme"}


class Rejection(NamedTuple):
    """A request to answer 4.00 without aiocoap: enough of it to address the answer."""

    mtype: int  # CON or NON
    mid: int
    token: bytes
    reason: str  # the diagnostic, e.g. "Uri-Path option is not UTF-8"


def bad_string_option(data: bytes) -> Rejection | None:
    """The request in `data` if it is well-formed but a string option is not UTF-8, else None.

    Why: aiocoap's decoder raises UnicodeDecodeError for such a datagram, which escapes its
    receive callback (no answer, a 2 KB traceback per datagram). RFC 7252 §5.4.1 leaves a bad
    option value to the server; a request gets 4.00 Bad Request here. Anything else (a response,
    an empty message, a malformed datagram) is None: aiocoap handles it as before.
    """
    n = len(data)
    if n < 4:
        return None
    first, code = data[0], data[1]
    if first >> 6 != 1 or not 1 <= code <= 31:  # version 1, a request (0.01-0.31)
        return None
    mtype = (first >> 4) & 3
    tkl = first & 0x0F
    if mtype > NON or tkl > 8 or 4 + tkl > n:
        return None
    pos = 4 + tkl
    number = 0
    bad: str | None = None
    try:
        while pos < n:
            byte = data[pos]
            pos += 1
            if byte == 0xFF:
                if pos == n:
                    return None
                break
            delta, length = byte >> 4, byte & 0x0F
            if delta == 15 or length == 15:
                return None
            if delta == 13:
                delta = data[pos] + 13
                pos += 1
            elif delta == 14:
                delta = (data[pos] << 8 | data[pos + 1]) + 269
                pos += 2
            if length == 13:
                length = data[pos] + 13
                pos += 1
            elif length == 14:
                length = (data[pos] << 8 | data[pos + 1]) + 269
                pos += 2
            number += delta
            end = pos + length
            if end > n:
                return None
            if bad is None and number in STRING_OPTIONS:
                try:
                    data[pos:end].decode("utf-8")
                except UnicodeDecodeError:
                    bad = STRING_OPTIONS[number]
            pos = end
    except IndexError:
        return None
    if bad is None:
        return None
    return Rejection(mtype, data[2] << 8 | data[3], data[4:4 + tkl], f"{bad} option is not UTF-8")


def encode_uint(value: int) -> bytes:
    """A uint option value: big-endian, no leading zero bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _extended(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(mtype: int, code: int, mid: int, token: bytes, options: Sequence[tuple[int, bytes]] = (),
           payload: bytes = b"") -> bytes:
    """One datagram. `options` must be sorted by number (repeats keep their order)."""
    out = bytearray(_HEADER.pack(0x40 | mtype << 4 | len(token), code, mid))
    out += token
    last = 0
    for number, value in options:
        d, d_ext = _extended(number - last)
        length, l_ext = _extended(len(value))
        out.append(d << 4 | length)
        out += d_ext
        out += l_ext
        out += value
        last = number
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def empty(mtype: int, mid: int) -> bytes:
    """An empty message (code 0.00, no token): an empty ACK or a RST."""
    return _HEADER.pack(0x40 | mtype << 4, 0, mid)
