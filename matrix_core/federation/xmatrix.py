"""The X-Matrix Authorization scheme of the server-server API. Pure: no I/O, no clock.

A request is signed by signing the JSON object {method, uri, origin, destination[, content]}
where `uri` is the request target exactly as sent on the wire (path and query, percent-escapes
untouched). The header carries origin, destination, key id and signature as RFC 9110
auth-params: any order, values as tokens or quoted strings, parameter names case-insensitive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..signing import SignatureError, SigningKey, sign_json, verify_json_signature

__all__ = [
    "XMatrixError",
    "XMatrixAuth",
    "build_authorization",
    "format_header",
    "parse_header",
    "request_json",
    "verify_request",
]

SCHEME = "X-Matrix"
_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Characters a value may carry unquoted when we write the header ourselves. ':' and '"' are not
# tchars, so server names with a port and key ids ("ed25519:abc") are always quoted.


class XMatrixError(ValueError):
    """The header is missing, malformed, or its signature does not verify."""


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key_id: str
    signature: str  # unpadded base64, as in the header


def request_json(method: str, uri: str, origin: str, destination: str, content: Any = None) -> dict[str, Any]:
    """The object whose canonical JSON is signed (content only when the request has a body)."""
    obj: dict[str, Any] = {"method": method.upper(), "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def _quote(value: str) -> str:
    if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        # Never needed for valid server names, key ids and base64; refuse rather than guess.
        raise XMatrixError(f"value cannot go into an X-Matrix header: {value!r}")
    return f'"{value}"'


def format_header(auth: XMatrixAuth) -> str:
    parts = [f"origin={_quote(auth.origin)}"]
    if auth.destination is not None:
        parts.append(f"destination={_quote(auth.destination)}")
    parts.append(f"key={_quote(auth.key_id)}")
    parts.append(f"sig={_quote(auth.signature)}")
    return f"{SCHEME} " + ",".join(parts)


def build_authorization(
    method: str, uri: str, origin: str, destination: str, key: SigningKey, content: Any = None
) -> str:
    """The Authorization header value for an outbound request signed with `key`."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    signature = signed["signatures"][origin][key.key_id]
    return format_header(XMatrixAuth(origin, destination, key.key_id, signature))


def _parse_params(text: str) -> dict[str, str]:
    """auth-param *( OWS "," OWS auth-param ), values token or quoted-string (RFC 9110 11.2)."""
    params: dict[str, str] = {}
    i, n = 0, len(text)

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t":
            j += 1
        return j

    while True:
        i = skip_ws(i)
        while i < n and text[i] == ",":  # empty list elements are allowed
            i = skip_ws(i + 1)
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TCHAR:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise XMatrixError(f"expected a parameter name at offset {start}")
        i = skip_ws(i)
        if i >= n or text[i] != "=":
            raise XMatrixError(f"parameter {name!r} has no value")
        i = skip_ws(i + 1)
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise XMatrixError(f"unterminated quoted value for {name!r}")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise XMatrixError(f"dangling escape in {name!r}")
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
            value = "".join(chars)
        else:
            # A bare value: be lenient like Synapse and take everything up to the next comma
            # (key ids such as ed25519:abc contain ':', which is not a tchar).
            start = i
            while i < n and text[i] != ",":
                i += 1
            value = text[start:i].rstrip(" \t")
            if not value:
                raise XMatrixError(f"parameter {name!r} has an empty value")
        if name in params:
            raise XMatrixError(f"parameter {name!r} given twice")
        params[name] = value
        i = skip_ws(i)
        if i < n:
            if text[i] != ",":
                raise XMatrixError(f"expected ',' at offset {i}")
            i += 1
    return params


def parse_header(value: str) -> XMatrixAuth:
    """Parse one Authorization header value of the X-Matrix scheme (scheme name case-insensitive)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise XMatrixError("not an X-Matrix Authorization header")
    params = _parse_params(rest)
    missing = [p for p in ("origin", "key", "sig") if not params.get(p)]
    if missing:
        raise XMatrixError(f"X-Matrix header lacks {', '.join(missing)}")
    return XMatrixAuth(params["origin"], params.get("destination"), params["key"], params["sig"])


def verify_request(
    auth: XMatrixAuth,
    method: str,
    uri: str,
    our_server_name: str,
    verify_key_bytes: bytes,
    content: Any = None,
) -> None:
    """Check a parsed header against the request as received; raise XMatrixError if it fails.

    `uri` must be the raw request target (aiohttp's `request.raw_path`), never a re-encoded one.
    The destination must be present and name us.
    """
    if auth.destination is None:
        raise XMatrixError("X-Matrix header has no destination")
    if auth.destination != our_server_name:
        raise XMatrixError(f"request is addressed to {auth.destination!r}, not to us")
    obj = request_json(method, uri, auth.origin, auth.destination, content)
    obj["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
    try:
        verify_json_signature(obj, auth.origin, auth.key_id, verify_key_bytes)
    except SignatureError as exc:
        raise XMatrixError(str(exc)) from None
