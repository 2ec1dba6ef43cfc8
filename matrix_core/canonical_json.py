"""Matrix canonical JSON: the byte form that event hashes, signatures and event ids are computed over.

Two servers must produce byte-identical output for the same value or signatures fail to verify,
so the encoder is strict (no floats, integers only within ±(2**53-1), string keys only) and the
parser refuses anything that could not be re-encoded canonically.

The encoder is on the hot path of every event (content hash, signature, reference hash, storage),
so it lets the C encoder in the standard library do the writing and adds one cheap validation walk
for what that encoder does not check (floats, integer range, non-string keys).
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

__all__ = [
    "CANONICALJSON_MAX_INT",
    "CANONICALJSON_MIN_INT",
    "CanonicalJSONError",
    "encode_canonical_json",
    "encode_json",
    "parse_json",
    "parse_plain_json",
]

CANONICALJSON_MAX_INT = 2**53 - 1
CANONICALJSON_MIN_INT = -CANONICALJSON_MAX_INT


class CanonicalJSONError(ValueError):
    """A value cannot be represented as (or was not valid) Matrix canonical JSON."""


class JSONSyntaxError(CanonicalJSONError):
    """The input is not JSON at all (bad syntax or bad UTF-8), as opposed to JSON we refuse."""


# Built once: `json.dumps` with non-default arguments builds a new encoder on every call.
# ensure_ascii=False writes non-ASCII as UTF-8 and escapes exactly what the spec's grammar
# requires: '"', '\\', the short escapes \b \f \n \r \t and other C0 controls as lowercase \u00XX.
# The stdlib's own string encoder for ensure_ascii=False (C when available): the escapes
# canonical JSON asks for (", \\ and control characters), nothing else.
_encode_string = json.encoder.encode_basestring
_CANONICAL_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    sort_keys=True,
)
_COMPACT_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
)


def _check_value(value: Any) -> None:
    """Reject what the stdlib encoder would silently accept: floats, out-of-range ints, non-str keys.

    Iterative (no recursion limit issues) and only ever called on values the stdlib encoder already
    accepted, so the structure is known to be acyclic and to contain only JSON-able types.
    """
    stack: list[Any] = [value]
    pop = stack.pop
    push = stack.append
    while stack:
        obj = pop()
        t = type(obj)
        if t is dict:
            for k, v in obj.items():
                if type(k) is not str and not isinstance(k, str):
                    raise CanonicalJSONError(f"object keys must be strings, got {type(k).__name__}")
                tv = type(v)
                if tv is str or tv is bool or v is None:
                    continue
                if tv is int:
                    if not CANONICALJSON_MIN_INT <= v <= CANONICALJSON_MAX_INT:
                        raise CanonicalJSONError(f"integer out of range: {v}")
                    continue
                push(v)
        elif t is list or t is tuple:
            for v in obj:
                tv = type(v)
                if tv is str or tv is bool or v is None:
                    continue
                if tv is int:
                    if not CANONICALJSON_MIN_INT <= v <= CANONICALJSON_MAX_INT:
                        raise CanonicalJSONError(f"integer out of range: {v}")
                    continue
                push(v)
        elif t is str or t is bool or obj is None:
            continue
        elif t is int:
            if not CANONICALJSON_MIN_INT <= obj <= CANONICALJSON_MAX_INT:
                raise CanonicalJSONError(f"integer out of range: {obj}")
        # Subclasses, which the stdlib encoder also accepts: the slow path.
        elif isinstance(obj, float):
            raise CanonicalJSONError("floats are not allowed in canonical JSON")
        elif isinstance(obj, (str, bool)):
            continue
        elif isinstance(obj, int):
            if not CANONICALJSON_MIN_INT <= obj <= CANONICALJSON_MAX_INT:
                raise CanonicalJSONError(f"integer out of range: {int(obj)}")
        elif isinstance(obj, dict):
            push(dict(obj))
        elif isinstance(obj, (list, tuple)):
            push(list(obj))
        else:  # pragma: no cover - the stdlib encoder rejects everything else first
            raise CanonicalJSONError(f"unsupported type {type(obj).__name__}")


def encode_canonical_json(obj: Any) -> bytes:
    """Encode `obj` as Matrix canonical JSON (sorted keys, no whitespace, UTF-8).

    Raises CanonicalJSONError for floats (including NaN/inf), integers outside ±(2**53-1),
    non-string keys, unsupported types, cycles and strings that are not valid Unicode
    (lone surrogates), since any of them would make two servers disagree about the bytes.
    """
    return canonical_utf8(check_canonical_value(obj))


def canonical_utf8(text: str) -> bytes:
    """Canonical JSON text as bytes; a lone surrogate anywhere in it is a CanonicalJSONError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalJSONError(f"string is not valid Unicode: {e}") from None


def encode_canonical_json_trusted(obj: Any) -> bytes:
    """`encode_canonical_json` without the validation walk, for values built from parts that were
    already validated (an event we signed after checking its content): the hot path encodes each
    event several times and needs the checks only once."""
    return _CANONICAL_ENCODER.encode(obj).encode("utf-8")


def encode_canonical_json_parts(parts: dict[str, str]) -> str:
    """The canonical JSON object whose members are `parts`: key -> value already encoded as
    canonical JSON text. Lets a caller encode a big value once and reuse it in several objects
    (an event's content hash, its signed form and its stored form differ only in a few keys)."""
    return "{" + ",".join([_encode_string(k) + ":" + parts[k] for k in sorted(parts)]) + "}"


def encode_canonical_json_text(value: Any) -> str:
    """Canonical JSON text of a value (not yet UTF-8): plain strings, integers and lists of
    strings without the encoder's set-up cost, the rest through it. Does not validate: for values
    built here or already checked with `check_canonical_value`."""
    t = type(value)
    if t is str:
        return _encode_string(value)
    if t is int:
        return str(value)
    if t is list and all(type(item) is str for item in value):
        return "[" + ",".join([_encode_string(item) for item in value]) + "]"
    return _CANONICAL_ENCODER.encode(value)


def check_canonical_value(value: Any) -> str:
    """Validate `value` as `encode_canonical_json` does and return its canonical JSON text
    (not yet UTF-8: `canonical_utf8` refuses lone surrogates)."""
    try:
        # Encoding first also proves the value acyclic and made of JSON-able types, which the
        # validation walk below then relies on.
        text = _CANONICAL_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise CanonicalJSONError(f"value is not canonical JSON: {e}") from None
    _check_value(value)
    return text


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON for HTTP responses: no key sorting and no canonical checks, just fast.

    Still refuses NaN/inf and unencodable strings, which no JSON peer could read back.
    """
    try:
        return _COMPACT_ENCODER.encode(obj).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise CanonicalJSONError(f"value is not JSON-encodable: {e}") from None


def _reject_constant(name: str) -> Any:
    raise CanonicalJSONError(f"{name} is not allowed in JSON")


def _parse_int(text: str) -> int:
    # "-9007199254740991" is 17 characters; anything longer is out of range (JSON has no leading
    # zeros), and checking the length first avoids converting huge digit strings.
    if len(text) > 17:
        raise CanonicalJSONError(f"integer out of range: {text[:20]}...")
    value = int(text)
    if not CANONICALJSON_MIN_INT <= value <= CANONICALJSON_MAX_INT:
        raise CanonicalJSONError(f"integer out of range: {text}")
    return value


_MAX_DECIMAL = Decimal(CANONICALJSON_MAX_INT)


def _parse_float(text: str) -> int:
    """Numbers with a fraction or exponent: accept them only if they are integral and in range.

    The spec's canonical JSON example expects `1e10` to read as the integer 10000000000, so such
    numbers become ints (never Python floats, which would re-encode as `10000000000.0`).
    """
    try:
        d = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the JSON scanner only passes valid numbers
        raise CanonicalJSONError(f"invalid number {text!r}") from None
    if d.is_zero():
        return 0
    # Check the magnitude via the exponent first, with no arithmetic: abs() or int() of
    # Decimal("1e999999999") would overflow the decimal context or take forever.
    if d.adjusted() > 15 or d.copy_abs() > _MAX_DECIMAL:
        raise CanonicalJSONError(f"number out of range: {text}")
    if d != d.to_integral_value():
        raise CanonicalJSONError(f"non-integral numbers are not allowed: {text}")
    return int(d)


_DECODER = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    strict=True,
)


def _not_json(name: str) -> Any:
    raise CanonicalJSONError(f"{name} is not JSON")


#: JSON as devices send it (CoAP bodies, MQTT payloads): the one decoder for it. Floats are kept
#: (the payload mapping carries them losslessly); NaN/Infinity are refused, since no JSON peer
#: could read them back. Raises CanonicalJSONError/JSONDecodeError (both ValueErrors). Matrix
#: content from clients goes through the stricter `parse_json` instead.
DEVICE_JSON_DECODER = json.JSONDecoder(parse_constant=_not_json)
decode_device_json: Callable[[str], Any] = DEVICE_JSON_DECODER.decode
# A \u escape of a UTF-16 surrogate: only then can the parsed strings hold lone surrogates.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_strings_encodable(value: Any) -> None:
    stack = [value]
    while stack:
        obj = stack.pop()
        if isinstance(obj, str):
            obj.encode("utf-8")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                k.encode("utf-8")
                stack.append(v)
        elif isinstance(obj, list):
            stack.extend(obj)


def parse_json(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse untrusted JSON strictly, so that whatever is accepted can be re-encoded canonically.

    Rejects (with CanonicalJSONError): invalid UTF-8, NaN/Infinity literals, non-integral numbers,
    integers outside ±(2**53-1), lone surrogate escapes and any syntax error. Integral numbers
    written with a fraction or exponent (`1e10`, `2.0`) become ints; `-0` becomes 0. For duplicate
    keys the last one wins.
    """
    if isinstance(data, str):
        text = data
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise CanonicalJSONError("JSON text contains a lone surrogate") from None
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONSyntaxError(f"invalid UTF-8: {e}") from None
    return _decode_checked(_DECODER, text)


def _decode_checked(decoder: json.JSONDecoder, text: str) -> Any:
    """Decode with one of our strict decoders; JSONSyntaxError for what is not JSON, and lone
    surrogates (escaped \\udXXX that no UTF-8 can hold) refused after decoding."""
    try:
        value = decoder.decode(text)
    except CanonicalJSONError:
        raise
    except (ValueError, RecursionError) as e:
        raise JSONSyntaxError(f"invalid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _check_strings_encodable(value)
        except UnicodeEncodeError:
            raise CanonicalJSONError("JSON string contains a lone surrogate") from None
    return value


def _parse_finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise CanonicalJSONError(f"number out of range: {text[:20]}")
    return value


_PLAIN_DECODER = json.JSONDecoder(
    parse_float=_parse_finite_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    strict=True,
)


def parse_plain_json(data: bytes | bytearray | memoryview) -> Any:
    """Parse untrusted JSON that is NOT event content (account data, room tags): as `parse_json`,
    except that numbers with a fraction or exponent are kept as (finite) floats.

    Why a second parser: account data never enters an event, a hash or a signature, and clients
    store fractions there (Element's room tags: `"order": 0.5`); refusing them as `parse_json`
    must for events would break those clients. Integers keep the ±(2**53-1) range (no JavaScript
    client could read more back) and lone surrogates are refused (they cannot be stored).
    """
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONSyntaxError(f"invalid UTF-8: {e}") from None
    return _decode_checked(_PLAIN_DECODER, text)
