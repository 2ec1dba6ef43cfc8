"""The one place where Matrix/HTTP outcomes become CoAP response codes (pure, no aiocoap).

The core raises MatrixError with an HTTP status; the route table answers 200. A CoAP code is
``class << 5 | detail`` (RFC 7252 §3), written below as ``c(4, 29)`` for "4.29".
"""
from __future__ import annotations

__all__ = ["c", "code_text", "error_code", "success_code", "CONTENT_FORMAT_CBOR",
           "CONTENT_FORMAT_JSON", "BAD_REQUEST", "UNSUPPORTED_CONTENT_FORMAT",
           "NOT_ACCEPTABLE", "REQUEST_ENTITY_INCOMPLETE", "REQUEST_ENTITY_TOO_LARGE", "INTERNAL_SERVER_ERROR"]

CONTENT_FORMAT_JSON = 50  # application/json
CONTENT_FORMAT_CBOR = 60  # application/cbor
#: Content-Formats of bodies taken as bytes (RFC 7252 §12.3 registry), as media types
MEDIA_TYPES = {0: "text/plain", 22: "image/gif", 23: "image/jpeg", 24: "image/png",
               42: "application/octet-stream", 50: "application/json", 60: "application/cbor"}


def c(klass: int, detail: int) -> int:
    """The numeric CoAP code for "klass.detail"."""
    return klass << 5 | detail


def code_text(code: int) -> str:
    """'4.29' for c(4, 29): how coap-client prints it."""
    return f"{code >> 5}.{code & 31:02d}"


CREATED, DELETED, CHANGED, CONTENT = c(2, 1), c(2, 2), c(2, 4), c(2, 5)
BAD_REQUEST = c(4, 0)
NOT_ACCEPTABLE = c(4, 6)
REQUEST_ENTITY_INCOMPLETE = c(4, 8)  # RFC 7959 §2.9.2
REQUEST_ENTITY_TOO_LARGE = c(4, 13)
UNSUPPORTED_CONTENT_FORMAT = c(4, 15)
INTERNAL_SERVER_ERROR = c(5, 0)

# HTTP status -> CoAP code (RFC 8075 §7 for the pairs that exist; 4.29 is RFC 8516).
_STATUS_TO_CODE: dict[int, int] = {
    400: BAD_REQUEST,
    401: c(4, 1),
    402: c(4, 3),
    403: c(4, 3),
    404: c(4, 4),
    405: c(4, 5),
    406: NOT_ACCEPTABLE,
    409: c(4, 9),
    412: c(4, 12),
    413: REQUEST_ENTITY_TOO_LARGE,
    415: UNSUPPORTED_CONTENT_FORMAT,
    429: c(4, 29),
    500: INTERNAL_SERVER_ERROR,
    501: c(5, 1),
    502: c(5, 2),
    503: c(5, 3),
    504: c(5, 4),
    507: c(5, 3),  # the hub's disk is full (M_RESOURCE_LIMIT_EXCEEDED): Service Unavailable, with Max-Age
}


def error_code(status: int) -> int:
    """CoAP code for an HTTP error status; unknown 4xx -> 4.00, anything else -> 5.00."""
    code = _STATUS_TO_CODE.get(status)
    if code is not None:
        return code
    return BAD_REQUEST if 400 <= status < 500 else INTERNAL_SERVER_ERROR


def success_code(method: str) -> int:
    """2.05 Content for GET, 2.02 Deleted for DELETE, 2.04 Changed for POST and PUT.

    POST answers are 2.04 rather than 2.01 Created: the new event has no CoAP resource of its
    own (its id is in the payload), and RFC 7252 ties 2.01 to a Location-Path.
    """
    if method == "GET":
        return CONTENT
    if method == "DELETE":
        return DELETED
    return CHANGED
