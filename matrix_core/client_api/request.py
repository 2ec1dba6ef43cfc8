"""A client-server request and response, independent of the transport that carried them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import errors, params
from ..canonical_json import CanonicalJSONError, JSONSyntaxError, parse_json, parse_plain_json

_UNSET: Any = object()


@dataclass(slots=True)
class ApiRequest:
    method: str
    segments: list[str]  # the decoded path segments after /_matrix/client/<version>/
    query: dict[str, list[str]]
    access_token: str | None
    remote: str
    # Each transport parses its own body format (JSON over HTTP, CBOR over CoAP) lazily, raising
    # MatrixError (M_NOT_JSON / M_BAD_JSON) when the body is malformed.
    load_body: Callable[[], Any] = lambda: None
    params: dict[str, str] = field(default_factory=dict)
    transport: str = "http"
    # The body read as plain JSON, fractions kept, for requests whose content never becomes an
    # event (account data, room tags): HTTP's `plain_json_body`, CoAP's content.decode_plain_body.
    # None: the transport has no such reading (plain_json_object falls back to json_object).
    load_plain_body: Callable[[], Any] | None = None
    # The body as it came and its media type (HTTP Content-Type; CoAP Content-Format as a media
    # type), for routes that take bytes, not JSON (a device's picture: device_media_handlers.py).
    raw_body: bytes = b""
    content_type: str | None = None
    # The Host the request was sent to (HTTP only): what the admin pages' device settings name.
    host: str | None = None
    _body: Any = _UNSET

    def json(self) -> Any:
        if self._body is _UNSET:
            self._body = self.load_body()
        return self._body

    def json_object(self) -> dict[str, Any]:
        """The body, which must be a JSON object; an absent body counts as {}."""
        body = self.json()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise errors.bad_json("Request body must be a JSON object")
        return body

    def plain_json_object(self) -> dict[str, Any]:
        """The body as a JSON object whose numbers may have fractions (account data, tags: not
        events, see canonical_json.parse_plain_json); M_BAD_JSON unless an object. Transports
        without a plain reading give their usual body."""
        if self.load_plain_body is None:
            return self.json_object()
        body = self.load_plain_body()
        if body is None:
            return {}  # as json_object: an absent body counts as {}
        if not isinstance(body, dict):
            raise errors.bad_json("Request body must be a JSON object")
        return body

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def int_arg(self, name: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self.arg(name)
        if raw is None:
            return default
        return params.int_param(name, raw, minimum, maximum)


@dataclass(slots=True)
class ApiResponse:
    status: int
    body: Any


def ok(body: Any = None) -> ApiResponse:
    return ApiResponse(200, {} if body is None else body)


def json_body(raw: bytes) -> Any:
    """A JSON request body (client API and federation alike), parsed strictly: None when empty;
    M_NOT_JSON when it is not JSON, M_BAD_JSON when it is JSON Matrix does not allow (floats,
    integers out of range, lone surrogates)."""
    if not raw.strip():
        return None
    try:
        return parse_json(raw)
    except JSONSyntaxError:
        raise errors.not_json() from None
    except CanonicalJSONError as exc:
        raise errors.bad_json(str(exc)) from None


def plain_json_body(raw: bytes) -> Any:
    """A JSON request body that is not event content: as `json_body`, but numbers with a fraction
    are kept as floats (canonical_json.parse_plain_json). None when empty."""
    if not raw.strip():
        return None
    try:
        return parse_plain_json(raw)
    except JSONSyntaxError:
        raise errors.not_json() from None
    except CanonicalJSONError as exc:
        raise errors.bad_json(str(exc)) from None


def error_answer(err: errors.MatrixError) -> ApiResponse:
    """The one mapping of a Matrix error to an answer: its status and {"errcode", "error", ...}.
    Each protocol edge encodes that once (JSON over HTTP and federation, CBOR with the matching
    CoAP code); none builds an error body of its own."""
    return ApiResponse(err.status, err.to_json())
