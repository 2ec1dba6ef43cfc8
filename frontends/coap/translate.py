"""A CoAP request's options -> the (method, path, query, token) of a client-server API call. Pure.

Rule 2 of the architecture: CoAP is a transport for the client-server API. The Uri-Path
options are expanded with the one short-path table (``short_paths.py``, MSC3079 codes
included), the Uri-Query keys likewise, and the result is cut to the route table's segments
exactly as the HTTP front end does, so every C-S endpoint answers over CoAP too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from matrix_core import errors
from matrix_core.client_api.router import client_api_segments

from .short_paths import UnknownShortPath, expand_path, expand_query

__all__ = ["ApiCall", "METHODS", "translate", "parse_query"]

#: CoAP method codes (RFC 7252 §12.1.1) the client-server API has an HTTP twin for.
METHODS: dict[int, str] = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    full_path: tuple[str, ...]  # /_matrix/... segments, expanded
    segments: list[str]  # after /_matrix/client/<version>/, what the route table matches
    query: dict[str, list[str]]
    access_token: str | None


def parse_query(options: Sequence[str]) -> list[tuple[str, str]]:
    """Uri-Query options ``k=v`` (already percent-decoded) -> pairs; ``k`` alone -> ``(k, "")``."""
    pairs = []
    for option in options:
        key, _, value = option.partition("=")
        pairs.append((key, value))
    return pairs


def translate(method_code: int, uri_path: Sequence[str], uri_query: Sequence[str],
              token_option: bytes | None = None) -> ApiCall:
    """Build the API call; raises MatrixError (405 unknown method, 404 unknown path).

    The access token comes from MSC3079's option 256 when present, else the ``a`` /
    ``access_token`` query key (the seed's form). A DTLS identity is resolved by the caller.
    """
    method = METHODS.get(method_code)
    if method is None:
        raise errors.MatrixError(405, "M_UNRECOGNIZED", "Only GET, POST, PUT and DELETE map to the API")
    path = list(uri_path)
    if path and path[-1] == "" and len(path) == 1:
        path = []
    try:
        full = expand_path(path)
    except UnknownShortPath as exc:
        raise errors.unrecognized(f"Unknown path: {exc}") from None
    segments = client_api_segments(full)
    query: dict[str, list[str]] = {}
    for key, value in expand_query(parse_query(uri_query)):
        query.setdefault(key, []).append(value)
    token: str | None = None
    if token_option:
        try:
            token = token_option.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.unknown_token() from None
    elif query.get("access_token"):
        token = query["access_token"][-1]
    return ApiCall(method, tuple(full), segments, query, token)
