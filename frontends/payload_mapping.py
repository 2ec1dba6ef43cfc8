"""One reversible mapping between device values (CBOR / MQTT payloads) and Matrix event content.

Matrix event content is canonical JSON: objects with string keys, arrays, strings, booleans, null
and integers within ±(2**53-1) -- no floats, no byte strings.  Devices send floats (``21.5``),
NaN, huge integers, byte strings, CBOR tags and maps with integer keys.  This module defines ONE
documented mapping between the two worlds (see ``docs/payload-mapping.md``):

* JSON-safe values map to themselves: strings, booleans, null, safe integers, lists, and maps
  whose keys are all strings not starting with ``$``.
  ``{"msgtype": "m.text", "body": "hello"}`` stays exactly that.
* Everything else becomes a *tagged object*: a JSON object with exactly one key, taken from the
  reserved ``$`` markers below, whose value is readable by a person in Element:

  - ``$f``: float as Python's shortest round-trip repr: ``{"$f": "21.5"}``, ``{"$f": "-0.0"}``,
    ``{"$f": "nan"}``, ``{"$f": "inf"}``, ``{"$f": "-inf"}``
  - ``$i``: int outside ±(2**53-1) as a decimal string (hex beyond 13000 bits):
    ``{"$i": "9007199254740992"}``
  - ``$b``: bytes as standard base64 with padding: ``{"$b": "3q2+7w=="}``
  - ``$map``: map with any non-string key, as ``[[key, value], ...]``: ``{"$map": [[1, "on"]]}``
  - ``$tag``: CBOR tag as ``[tag number, content]``: ``{"$tag": [40000, [1, 2]]}``
  - ``$simple``: CBOR simple value 0..19 / 32..255: ``{"$simple": 16}``
  - ``$undefined``: CBOR undefined, always ``{"$undefined": null}``

* A string-keyed map whose own keys start with ``$`` is escaped by prepending one more ``$`` to
  each such key (``{"$unit": "C"}`` -> ``{"$$unit": "C"}``); a JSON object key starting with a
  single ``$`` therefore only ever appears as the sole key of a tagged object.

``to_event_value`` and ``from_event_value`` are exact inverses on every value ``cbor2`` can
decode (NaN compares specially: the NaN payload and sign are not kept).  ``from_event_value`` is
strict: it accepts exactly the image of ``to_event_value`` and raises :class:`PayloadError` for
anything else (non-canonical float text, a lone ``$`` key, floats in the JSON, ...), so the
mapping is a bijection and two gateways can never disagree about what an event means.

Semantic tags that cbor2 decodes into Python objects (datetime tag 0/1, date 100/1004, Decimal 4,
Fraction 30, UUID 37, regex 35, MIME 36, set 258, IP address 52/54, ...) are carried as the
``$tag`` form cbor2 itself would encode them as, e.g. a datetime is
``{"$tag": [0, "2020-01-01T00:00:00Z"]}``; reading such a ``$tag`` back lets cbor2 rebuild the
Python object.

The module is pure: no I/O, no global state.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

import cbor2

from matrix_core.canonical_json import DEVICE_JSON_DECODER as _JSON_DECODER  # the one device-JSON decoder

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INT",
    "PayloadError",
    "content_to_mqtt_payload",
    "device_view",
    "from_device_cbor",
    "from_event_value",
    "mqtt_payload_to_content",
    "to_device_cbor",
    "to_event_value",
]

MAX_SAFE_INT = 2**53 - 1
#: Maximum container nesting (maps, arrays and tags each count one level) on both sides.
MAX_DEPTH = 32

F, I, B, MAP, TAG, SIMPLE, UNDEF = "$f", "$i", "$b", "$map", "$tag", "$simple", "$undefined"
_MARKERS = frozenset({F, I, B, MAP, TAG, SIMPLE, UNDEF})

# Ints with more bits than this are written in hex ("0x..."/"-0x..."), because Python refuses to
# convert ints of more than 4300 decimal digits to/from str (CVE-2020-10735 limit); 13_000 bits is
# at most 3914 decimal digits.
_DECIMAL_INT_MAX_BITS = 13_000
_DEC_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_HEX_INT_RE = re.compile(r"-?0x[1-9a-f][0-9a-f]*\Z")


class PayloadError(ValueError):
    """A device payload or event value is malformed, too deep, or outside the documented mapping."""


# --------------------------------------------------------------------------------------------
# device value -> event value
# --------------------------------------------------------------------------------------------


def to_event_value(device_value: Any) -> Any:
    """Map a device value (anything cbor2 decodes) to a canonical-JSON-safe event value.

    Raises PayloadError for nesting deeper than MAX_DEPTH (this also catches cyclic values),
    strings that are not valid Unicode, and Python objects cbor2 could not have produced.
    """
    return _to_event(device_value, 0)


def _to_event(v: Any, depth: int) -> Any:
    t = type(v)
    if v is None or t is bool or t is str:
        if t is str:
            _check_unicode(v)
        return v
    if t is int:
        if -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
            return v
        return {I: _int_to_text(v)}
    if t is float:
        return {F: repr(v)}
    if t is bytes:
        return {B: base64.b64encode(v).decode("ascii")}
    if isinstance(v, (list, tuple)) and not _is_namedtuple(v):
        _check_depth(depth + 1)
        return [_to_event(x, depth + 1) for x in v]
    if isinstance(v, (dict, cbor2.frozendict)):
        _check_depth(depth + 1)
        items = list(v.items())
        if all(type(k) is str for k, _ in items):
            out = {}
            for k, x in items:
                _check_unicode(k)
                out["$" + k if k.startswith("$") else k] = _to_event(x, depth + 1)
            return out
        return {MAP: [[_to_event(k, depth + 1), _to_event(x, depth + 1)] for k, x in items]}
    if t is cbor2.CBORTag:
        _check_depth(depth + 1)
        return {TAG: [_to_event(v.tag, depth + 1), _to_event(v.value, depth + 1)]}
    if t is cbor2.CBORSimpleValue:
        return {SIMPLE: int(v.value)}
    if v is cbor2.undefined:
        return {UNDEF: None}
    # Subclasses of the plain types (IntEnum, str subclasses...) are never produced by cbor2.
    if isinstance(v, (bool, int, float, str, bytes)):
        raise PayloadError(f"unsupported device value type {t.__name__}")
    return _semantic_to_event(v, depth)


def _is_namedtuple(v: Any) -> bool:
    return isinstance(v, tuple) and type(v) is not tuple


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"value nested deeper than {MAX_DEPTH} levels")


def _check_unicode(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError("string is not valid Unicode (lone surrogate)") from None


def _int_to_text(n: int) -> str:
    if n.bit_length() <= _DECIMAL_INT_MAX_BITS:
        return str(n)
    return ("-" if n < 0 else "") + hex(abs(n))


def _text_to_int(s: Any) -> int:
    if type(s) is not str:
        raise PayloadError("$i needs a string")
    if _DEC_INT_RE.match(s) and len(s) <= 4000:
        n = int(s)
        if n.bit_length() > _DECIMAL_INT_MAX_BITS:
            raise PayloadError("$i: integer this large must be written in hex")
    elif _HEX_INT_RE.match(s):
        n = int(s, 16)
        if n.bit_length() <= _DECIMAL_INT_MAX_BITS:
            raise PayloadError("$i: integer this small must be written in decimal")
    else:
        raise PayloadError(f"$i: not a canonical integer: {s[:40]!r}")
    if -MAX_SAFE_INT <= n <= MAX_SAFE_INT:
        raise PayloadError("$i: safe integers must be plain JSON numbers")
    return n


def _semantic_to_event(v: Any, depth: int) -> Any:
    """A Python object cbor2 produces from a semantic tag (datetime, Decimal, UUID, set, ...).

    Let cbor2 encode it (canonical mode, so set elements come out sorted), split the tag header off, and map the tag content; check that cbor2
    reads the same object back so the mapping stays exact (or fails loudly).
    """
    _check_depth(depth + 1)
    try:
        raw = cbor2.dumps(v, canonical=True)  # canonical: sets in a deterministic order
        tag, offset = _read_tag_header(raw)
        # cbor2 must read back what it wrote (compared as bytes, so NaN inside is fine).
        if tag is None or cbor2.dumps(cbor2.loads(raw), canonical=True) != raw:
            raise PayloadError(f"unsupported device value type {type(v).__name__}")
        content = cbor2.loads(raw[offset:])
    except PayloadError:
        raise
    except Exception:
        raise PayloadError(f"unsupported device value type {type(v).__name__}") from None
    return {TAG: [_to_event(tag, depth + 1), _to_event(content, depth + 1)]}


def _read_tag_header(raw: bytes) -> tuple[int | None, int]:
    if not raw or raw[0] >> 5 != 6:
        return None, 0
    info = raw[0] & 0x1F
    if info < 24:
        return info, 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None:
        return None, 0
    return int.from_bytes(raw[1 : 1 + size], "big"), 1 + size


# --------------------------------------------------------------------------------------------
# event value -> device value
# --------------------------------------------------------------------------------------------


def from_event_value(json_value: Any) -> Any:
    """Exact inverse of :func:`to_event_value`.

    Accepts only values in the image of ``to_event_value`` (strict), so malformed tagged objects,
    object keys starting with a single ``$`` outside a tagged object, floats or out-of-range ints
    in the JSON raise PayloadError.
    """
    return _from_event(json_value, 0, False)


def _from_event(j: Any, depth: int, frozen: bool) -> Any:
    """``frozen``: inside a map key or tag content, where cbor2 yields tuples/frozendicts."""
    t = type(j)
    if j is None or t is bool:
        return j
    if t is str:
        _check_unicode(j)
        return j
    if t is int:
        if not -MAX_SAFE_INT <= j <= MAX_SAFE_INT:
            raise PayloadError("integer outside ±(2**53-1) in event JSON")
        return j
    if t is list:
        _check_depth(depth + 1)
        items = [_from_event(x, depth + 1, frozen) for x in j]
        return tuple(items) if frozen else items
    if t is not dict:
        raise PayloadError(f"not a canonical JSON value: {t.__name__}")
    if len(j) == 1:
        (key,) = j
        if type(key) is str and key in _MARKERS:
            return _from_tagged(key, j[key], depth, frozen)
    _check_depth(depth + 1)
    out = {}
    for k, x in j.items():
        if type(k) is not str:
            raise PayloadError("object keys must be strings")
        _check_unicode(k)
        if k.startswith("$"):
            if not k.startswith("$$"):
                raise PayloadError(f"reserved key {k[:40]!r} (device keys starting with '$' are written '$$...')")
            k = k[1:]
        out[k] = _from_event(x, depth + 1, frozen)
    return cbor2.frozendict(out) if frozen else out


_B64_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64decode(text: str, where: str) -> bytes:
    """The one base64 rule of the mapping (``$b`` and a payload's ``base64``): standard alphabet,
    with padding, canonical (no stray bits), as encoding writes it; anything else is refused, so
    that one byte string has one spelling in an event."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{where}invalid base64") from None
    # What encoding would write (checked without re-encoding: this runs per delivered payload):
    # whole quads, and no stray bits under the padding.
    if len(text) % 4 or (text[-2:] == "==" and _B64_VALUE.get(text[-3], 15) & 15) or (
            text[-1:] == "=" and text[-2:] != "==" and _B64_VALUE.get(text[-2], 3) & 3):
        raise PayloadError(f"{where}non-canonical base64")
    return data


def _from_tagged(marker: str, arg: Any, depth: int, frozen: bool) -> Any:
    if marker == F:
        if type(arg) is not str:
            raise PayloadError("$f needs a string")
        try:
            f = float(arg)
        except ValueError:
            raise PayloadError(f"$f: not a float: {arg[:40]!r}") from None
        if repr(f) != arg:
            raise PayloadError(f"$f: not the shortest repr ({arg[:40]!r} should be {repr(f)!r})")
        return f
    if marker == I:
        return _text_to_int(arg)
    if marker == B:
        if type(arg) is not str:
            raise PayloadError("$b needs a string")
        return _b64decode(arg, "$b: ")
    if marker == SIMPLE:
        if type(arg) is not int or not (0 <= arg <= 19 or 32 <= arg <= 255):
            raise PayloadError("$simple needs an integer 0..19 or 32..255")
        return cbor2.CBORSimpleValue(arg)
    if marker == UNDEF:
        if arg is not None:
            raise PayloadError("$undefined takes null")
        return cbor2.undefined
    if marker == MAP:
        _check_depth(depth + 1)
        if type(arg) is not list:
            raise PayloadError("$map needs a list of [key, value] pairs")
        out: dict = {}
        for pair in arg:
            if type(pair) is not list or len(pair) != 2:
                raise PayloadError("$map needs a list of [key, value] pairs")
            k = _from_event(pair[0], depth + 1, True)
            try:
                hash(k)
            except TypeError:
                raise PayloadError("$map: unhashable key") from None
            if k in out:
                raise PayloadError("$map: duplicate key")
            out[k] = _from_event(pair[1], depth + 1, frozen)
        if all(type(k) is str for k in out):
            raise PayloadError("$map with only string keys must be written as a plain object")
        return cbor2.frozendict(out) if frozen else out
    # marker == TAG
    _check_depth(depth + 1)
    if type(arg) is not list or len(arg) != 2:
        raise PayloadError("$tag needs [tag number, content]")
    number = _from_event(arg[0], depth + 1, False)
    if type(number) is not int or not 0 <= number < 2**64:
        raise PayloadError("$tag: tag number must be an integer 0..2**64-1")
    # cbor2 decodes the content of every tag immutably (tuples, frozendicts), like map keys.
    content = _from_event(arg[1], depth + 1, True)
    return _materialize_tag(number, content, {TAG: arg}, depth, frozen)


def _materialize_tag(number: int, content: Any, original: Any, depth: int, frozen: bool) -> Any:
    """CBORTag(number, content), or the Python object cbor2 makes of that tag."""
    tag = cbor2.CBORTag(number, content)
    try:
        encoded = cbor2.dumps(tag)
        if frozen:
            # cbor2 decodes tags inside map keys immutably (frozenset, tuples): decode it there.
            decoded = next(iter(cbor2.loads(b"\xa1" + encoded + b"\xf6")))
        else:
            decoded = cbor2.loads(encoded)
    except Exception:
        raise PayloadError(f"$tag {number}: content cbor2 cannot read") from None
    if type(decoded) is cbor2.CBORTag and decoded.tag == number:
        return tag  # not a tag cbor2 interprets: keep our (already exact) content
    # A semantic tag: accept only the exact form to_event_value writes for the resulting object.
    try:
        again = _to_event(decoded, depth)
    except PayloadError:
        again = None
    if again != original:
        raise PayloadError(f"$tag {number}: not the canonical form of a {type(decoded).__name__}")
    return decoded


# --------------------------------------------------------------------------------------------
# CBOR bytes
# --------------------------------------------------------------------------------------------

# Tags that make cbor2 build shared (possibly cyclic or exponentially large) structures or
# string-reference tables; sensors have no use for them and they defeat the depth limit.
_REJECTED_TAGS = {25: "stringref", 256: "stringref namespace", 28: "shareable", 29: "sharedref"}


def from_device_cbor(data: bytes) -> Any:
    """Decode one CBOR data item from a device and map it with :func:`to_event_value`.

    Raises PayloadError on malformed CBOR, trailing bytes, nesting deeper than MAX_DEPTH,
    value-sharing / string-reference tags, or content cbor2 cannot interpret.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("CBOR payload must be bytes")
    data = bytes(data)
    _check_cbor_structure(data)
    try:
        value = cbor2.loads(data)
    except Exception as e:  # cbor2 raises CBORDecodeError, ValueError, TypeError, OverflowError...
        raise PayloadError(f"invalid CBOR: {e}") from None
    return to_event_value(value)


def to_device_cbor(json_value: Any) -> bytes:
    """Map an event value back (:func:`from_event_value`) and encode it as canonical CBOR.

    cbor2's canonical mode: definite lengths, sorted map keys, smallest integer encodings, and
    each float in the shortest of half/single/double precision that keeps its value exactly
    (NaN as f97e00).  Integers beyond 64 bits become bignum tags 2/3.
    """
    value = from_event_value(json_value)
    try:
        return cbor2.dumps(value, canonical=True)
    except Exception as e:
        raise PayloadError(f"cannot encode as CBOR: {e}") from None


def _check_cbor_structure(data: bytes) -> None:
    """Iteratively walk exactly one well-formed CBOR item; enforce depth and rejected tags.

    Runs before cbor2 so that cbor2 only ever sees bounded, well-formed input (no recursion
    blow-up, no lengths pointing past the end of the payload, no trailing bytes).
    """
    n = len(data)
    pos = 0
    # Each stack entry: [remaining items (None = indefinite), depth of items inside, is_tag]
    stack: list[list] = []
    expect_top = True
    while expect_top or stack:
        # Close finished containers.
        if stack and stack[-1][0] == 0:
            stack.pop()
            continue
        if not expect_top and not stack:
            break
        if pos >= n:
            raise PayloadError("invalid CBOR: truncated")
        ib = data[pos]
        pos += 1
        major, info = ib >> 5, ib & 0x1F
        if ib == 0xFF:
            if stack and stack[-1][0] is None:
                stack.pop()
                _item_done(stack)
                continue
            raise PayloadError("invalid CBOR: unexpected break")
        depth = len(stack)
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > n:
                raise PayloadError("invalid CBOR: truncated")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info == 31 and major in (2, 3, 4, 5):
            arg = None
        else:
            raise PayloadError("invalid CBOR: reserved additional information")
        expect_top = False
        if major in (0, 1):
            _item_done(stack)
        elif major in (2, 3):
            if arg is None:  # indefinite string: definite chunks of the same major type
                while True:
                    if pos >= n:
                        raise PayloadError("invalid CBOR: truncated")
                    cb = data[pos]
                    pos += 1
                    if cb == 0xFF:
                        break
                    if cb >> 5 != major or (cb & 0x1F) > 27:
                        raise PayloadError("invalid CBOR: bad indefinite-length string chunk")
                    ci = cb & 0x1F
                    if ci < 24:
                        clen = ci
                    else:
                        size = 1 << (ci - 24)
                        if pos + size > n:
                            raise PayloadError("invalid CBOR: truncated")
                        clen = int.from_bytes(data[pos : pos + size], "big")
                        pos += size
                    if clen > n - pos:
                        raise PayloadError("invalid CBOR: truncated")
                    pos += clen
            else:
                if arg > n - pos:
                    raise PayloadError("invalid CBOR: truncated")
                pos += arg
            _item_done(stack)
        elif major in (4, 5):
            if depth + 1 > MAX_DEPTH:
                raise PayloadError(f"CBOR nested deeper than {MAX_DEPTH} levels")
            if arg is None:
                stack.append([None, depth + 1, False])
            else:
                count = arg * (2 if major == 5 else 1)
                if count > n - pos:  # every item takes at least one byte
                    raise PayloadError("invalid CBOR: truncated")
                if count == 0:
                    _item_done(stack)
                else:
                    stack.append([count, depth + 1, False])
        elif major == 6:
            if arg in _REJECTED_TAGS:
                raise PayloadError(f"CBOR tag {arg} ({_REJECTED_TAGS[arg]}) is not supported")
            if depth + 1 > MAX_DEPTH:
                raise PayloadError(f"CBOR nested deeper than {MAX_DEPTH} levels")
            stack.append([1, depth + 1, True])
        else:  # major 7: simple values and floats
            if info == 24 and arg is not None and arg < 32:
                raise PayloadError("invalid CBOR: two-byte simple value below 32")
            _item_done(stack)
    if stack:
        raise PayloadError("invalid CBOR: truncated")
    if pos != n:
        raise PayloadError(f"invalid CBOR: {n - pos} trailing bytes after the data item")


def _item_done(stack: list[list]) -> None:
    """One item finished inside the innermost container; cascade through finished ones."""
    while stack:
        top = stack[-1]
        if top[0] is None:
            return
        top[0] -= 1
        if top[0] > 0:
            return
        stack.pop()
    return


# --------------------------------------------------------------------------------------------
# MQTT raw payloads
# --------------------------------------------------------------------------------------------

_JSON_HINTS = {"application/json", "json", 50}
_TEXT_HINTS = {"text/plain", "text", 0}
_CBOR_HINTS = {"application/cbor", "cbor", 60}
_BYTES_HINTS = {"application/octet-stream", "octet-stream", "bytes", 42}

_REENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=True)


def _normalize_hint(hint: Any) -> Any:
    if isinstance(hint, str):
        return hint.split(";", 1)[0].strip().lower()
    if type(hint) is int:
        return hint
    return None  # None or anything unrecognised: sniff


def _json_text_of(value: Any) -> str | None:
    """Canonical re-encoding of a parsed JSON payload (sorted keys, compact, floats by repr)."""
    try:
        return _REENCODER.encode(value)
    except (ValueError, TypeError, RecursionError):
        return None


def mqtt_payload_to_content(payload: bytes, content_format_hint: Any = None) -> dict:
    """Carry a raw MQTT (or CoAP) payload in event content, readable and exactly reversible.

    Result is one of (``value`` mapped with :func:`to_event_value`):

    * ``{"kind": "json", "value": V}`` -- UTF-8 JSON whose canonical re-encoding (sorted keys,
      no whitespace, Python float repr) reproduces the payload byte for byte;
      ``{"kind": "json", "text": T}`` -- other UTF-8 JSON; ``T`` is the exact payload text (one
      representation, never both: events stored before issue 15 may hold ``value`` + ``text``,
      and :func:`content_to_mqtt_payload` still reads them).
    * ``{"kind": "text", "text": T}`` -- valid UTF-8 that is not JSON (or a text/plain hint).
    * ``{"kind": "cbor", "value": V}`` / ``... "base64": B64}`` -- only with a CBOR hint; the
      exact bytes are added when canonical CBOR would not reproduce them.
    * ``{"kind": "bytes", "base64": B64}`` -- everything else.

    ``content_format_hint``: None (sniff JSON, then text, then bytes), a media type
    (``application/json``, ``text/plain``, ``application/cbor``, ``application/octet-stream``)
    or a CoAP Content-Format number (50, 0, 60, 42).  A hint never makes this raise: a payload
    that does not match its hint falls back to text/bytes.  Unknown hints are treated as None.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError("payload must be bytes")
    payload = bytes(payload)
    hint = _normalize_hint(content_format_hint)

    if hint in _BYTES_HINTS:
        return _bytes_content(payload)
    if hint in _CBOR_HINTS:
        try:
            value = from_device_cbor(payload)
            exact = to_device_cbor(value) == payload
        except PayloadError:
            return _bytes_content(payload)
        out = {"kind": "cbor", "value": value}
        if not exact:
            out["base64"] = base64.b64encode(payload).decode("ascii")
        return out
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return _bytes_content(payload)
    if hint not in _TEXT_HINTS and _may_be_json(text):
        try:
            parsed = _JSON_DECODER.decode(text)
            value = to_event_value(parsed)
        except (ValueError, RecursionError):  # JSONDecodeError and PayloadError are ValueErrors
            pass
        else:
            # ONE representation: the parsed value when re-encoding it gives the payload back,
            # else the exact text alone (still JSON a reader can parse). Keeping both doubled
            # every non-canonical payload and refused 31 KB device lists (issue 15).
            if _json_text_of(parsed) == text:
                return {"kind": "json", "value": value}
            return {"kind": "json", "text": text}
    return {"kind": "text", "text": text}


# What a JSON text can start with (after optional whitespace): an object, array, string,
# number, true, false or null. Anything else is text, and raising JSONDecodeError for each such
# message costs more than the check.
_JSON_FIRST_CHARS = frozenset('{["-0123456789tfn')


def _may_be_json(text: str) -> bool:
    stripped = text.lstrip(" \t\r\n")
    return bool(stripped) and stripped[0] in _JSON_FIRST_CHARS


def _bytes_content(payload: bytes) -> dict:
    return {"kind": "bytes", "base64": base64.b64encode(payload).decode("ascii")}


def content_to_mqtt_payload(content: object) -> bytes:
    """Exact inverse of :func:`mqtt_payload_to_content`: the original payload bytes.

    Raises PayloadError for content that is not in the documented shape.
    """
    if not isinstance(content, Mapping):
        raise PayloadError("payload content must be an object")
    kind = content.get("kind")
    if kind == "json" and "value" not in content and "text" in content:
        # Since issue 15 a non-canonical JSON payload is stored as its text alone; events stored
        # before keep value + text (read below: the text wins).
        if set(content) != {"kind", "text"}:
            raise PayloadError("payload kind 'json' needs keys ['kind', 'value'] (+ ['text']) or ['kind', 'text']")
        text = content["text"]
        if type(text) is not str:
            raise PayloadError("text must be a string")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError("text is not valid Unicode") from None
    allowed = {
        "json": ({"kind", "value"}, {"text"}),
        "text": ({"kind", "text"}, set()),
        "cbor": ({"kind", "value"}, {"base64"}),
        "bytes": ({"kind", "base64"}, set()),
    }
    if kind not in allowed:
        raise PayloadError(f"unknown payload kind {kind!r}")
    required, optional = allowed[kind]
    keys = set(content)
    if not required <= keys or not keys <= required | optional:
        raise PayloadError(f"payload kind {kind!r} needs keys {sorted(required)} (+ {sorted(optional)})")

    if "base64" in content:
        b64 = content["base64"]
        if type(b64) is not str:
            raise PayloadError("base64 must be a string")
        return _b64decode(b64, "")
    if "text" in content:
        text = content["text"]
        if type(text) is not str:
            raise PayloadError("text must be a string")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError("text is not valid Unicode") from None
    if kind == "cbor":
        return to_device_cbor(content["value"])
    # kind == "json" without text: the canonical re-encoding is the payload.
    value = from_event_value(content["value"])
    text = _json_text_of(value)
    if text is None:
        raise PayloadError("value cannot be written as JSON")
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# whole API responses -> device values (CoAP answers)
# --------------------------------------------------------------------------------------------


def device_view(json_value: Any) -> Any:
    """Map a whole client-server API answer (sync, messages, an event...) for a device.

    Event content posted by a device is in the image of :func:`to_event_value`, and this gives it
    back exactly as :func:`from_event_value` would.  An API answer, though, also holds values
    that are not device content (receipts keyed by ``$event_id``, content sent by a phone with
    its own ``$`` keys): those pass through unchanged instead of raising.  So: a one-key object
    whose key is a ``$`` marker becomes its device value when it is well-formed; ``$$key``
    object keys lose one ``$``; everything else is kept as it is.
    """
    return _device_view(json_value, 0)


#: An answer wraps content in a few levels of its own (rooms/join/ROOM/timeline/events/...).
_VIEW_MAX_DEPTH = MAX_DEPTH + 16


def _device_view(j: Any, depth: int) -> Any:
    t = type(j)
    if depth > _VIEW_MAX_DEPTH:
        raise PayloadError(f"nesting deeper than {_VIEW_MAX_DEPTH}")
    if t is list:
        return [_device_view(x, depth + 1) for x in j]
    if t is not dict:
        return j
    if len(j) == 1:
        (key,) = j
        if key in _MARKERS:
            try:
                return _from_event(j, 0, False)
            except PayloadError:
                pass
    return {(k[1:] if k.startswith("$$") else k): _device_view(x, depth + 1) for k, x in j.items()}
