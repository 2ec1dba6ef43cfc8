"""CoAP bodies: CBOR (or JSON) in -> event values; API answers -> CBOR (or JSON) out. Pure.

Why a CoAP body is not parsed like an HTTP one: devices send floats and byte strings, which
Matrix events cannot hold. Both directions go through the one lossless mapping of
``frontends/payload_mapping.py`` (docs/payload-mapping.md): ``21.5`` is stored as
``{"$f": "21.5"}`` and comes back to a device as the CBOR float 21.5.
"""
from __future__ import annotations

from typing import Any

import cbor2

from frontends.payload_mapping import (PayloadError, device_view, from_device_cbor, from_event_value,
                                     to_event_value)
from matrix_core import errors
from matrix_core.canonical_json import decode_device_json, encode_json

from .codes import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON

__all__ = ["MAX_BODY_BYTES", "decode_body", "decode_plain_body", "response_format", "encode_body"]

#: Same ceiling as the HTTP front end (a whole request body, after Block1 assembly).
MAX_BODY_BYTES = 128 * 1024


def decode_body(payload: bytes, content_format: int | None) -> Any:
    """The event value a request body stands for; None for an empty body.

    No Content-Format means CBOR (the seed's pipeline sends none). Raises MatrixError:
    M_TOO_LARGE (413), M_NOT_JSON (400, with the CBOR/JSON diagnostic) or, for any other
    Content-Format, 415.
    """
    if len(payload) > MAX_BODY_BYTES:
        raise errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes")
    if content_format not in (None, CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON):
        raise errors.MatrixError(415, "M_NOT_JSON", f"Content-Format {content_format} is not supported: "
                                 f"send CBOR ({CONTENT_FORMAT_CBOR}) or JSON ({CONTENT_FORMAT_JSON})")
    if not payload:
        return None
    if content_format == CONTENT_FORMAT_JSON:
        try:
            return to_event_value(decode_device_json(payload.decode("utf-8")))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # PayloadError is a ValueError
            raise errors.not_json(f"Malformed JSON: {exc}") from None
    try:
        return text_keyed(from_device_cbor(payload))
    except PayloadError as exc:
        raise errors.not_json(f"Malformed CBOR: {exc}") from None


def decode_plain_body(payload: bytes, content_format: int | None) -> Any:
    """The body as plain JSON, for requests whose content never becomes an event (account data,
    room tags: `ApiRequest.plain_json_object`): the device's own value, floats as floats, as
    HTTP's plain reading gives them. Byte strings and non-text keys have no plain JSON form: the
    handler refuses them (M_BAD_JSON)."""
    value = decode_body(payload, content_format)
    if value is None:
        return None
    try:
        return from_event_value(value)
    except PayloadError as exc:  # pragma: no cover - decode_body only yields mapped values
        raise errors.not_json(f"Malformed body: {exc}") from None


def text_keyed(value: Any) -> Any:
    """Read a map whose keys are ALL byte strings (valid UTF-8) as text: its UTF-8 bytes -> str.

    Why: Perl's CBOR::XS, as in the seed's own pipeline, writes every ASCII string as a CBOR
    byte string, so ``{"msgtype": "m.text"}`` arrives as ``{b"msgtype": b"m.text"}``. A
    device that means bytes uses text or integer keys, so an all-byte-keyed top-level map is
    that encoder's signature; inside it, byte strings that are valid UTF-8 become text (Perl
    reads both back as the same string), others stay bytes. Every other payload is untouched.
    """
    if not (isinstance(value, dict) and list(value) == ["$map"]):
        return value
    device = from_event_value(value)
    if not all(type(k) is bytes and _utf8(k) is not None for k in device):
        return value
    return to_event_value(_bytes_as_text(device))


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _bytes_as_text(v: Any) -> Any:
    if type(v) is bytes:
        text = _utf8(v)
        return v if text is None else text
    if isinstance(v, dict):
        return {_bytes_as_text(k): _bytes_as_text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_bytes_as_text(x) for x in v]
    return v


def response_format(accept: int | None) -> int:
    """The Content-Format of the answer: CBOR unless the request's Accept asks for JSON.

    Raises MatrixError 406 for any other Accept.
    """
    if accept is None or accept == CONTENT_FORMAT_CBOR:
        return CONTENT_FORMAT_CBOR
    if accept == CONTENT_FORMAT_JSON:
        return CONTENT_FORMAT_JSON
    raise errors.MatrixError(406, "M_UNRECOGNIZED", f"Accept {accept} is not available: "
                             f"CBOR ({CONTENT_FORMAT_CBOR}) or JSON ({CONTENT_FORMAT_JSON})")


def encode_body(value: Any, content_format: int) -> bytes:
    """An API answer as bytes.

    CBOR: device values (tagged objects decoded, see ``device_view``), canonical encoding.
    JSON: exactly what HTTP would answer (JSON cannot carry bytes or NaN, so the tagged
    objects stay: that is the lossless JSON form).
    """
    if content_format == CONTENT_FORMAT_JSON:
        return encode_json(value)
    return cbor2.dumps(device_view(value), canonical=True)
