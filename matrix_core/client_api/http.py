"""The HTTP front end: aiohttp in, ApiRequest through the route table, JSON out."""
from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from aiohttp import web

from .. import errors
from ..canonical_json import encode_json
from . import backup_http, media_http, web_http
from .discovery_handlers import well_known_client
from .gateway_routes import gateway_route
from .request import ApiRequest, ApiResponse, error_answer, json_body, ok, plain_json_body
from .router import client_api_segments
from .routes import ROUTER

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 128 * 1024
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
# The hub's own and admin answers (/_gateway/..., /_synapse/admin/...) carry a new device's access
# token, coaps key and QR code, the first admin's token, account lists: no browser or proxy may
# keep a copy (the pages are served with no-cache; these must never be stored at all). nosniff:
# their errors quote what was sent (a user id), which must never be read as anything but JSON.
PRIVATE_HEADERS = {**CORS_HEADERS, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def split_raw_path(raw_path: str) -> tuple[list[str], dict[str, list[str]]]:
    """Split the raw request target into decoded segments and query (ids carry %-escapes)."""
    path, _, query = raw_path.partition("?")
    segments = [unquote(seg) for seg in path.split("/")[1:]]
    return segments, parse_qs(query, keep_blank_values=True)


ADMIN_PREFIX = ["_gateway", "admin", "v1"]


def token_from(headers: Any, query: dict[str, list[str]], header_only: bool = False) -> str | None:
    """The bearer token; `?access_token=` too (deprecated by the spec, kept for clients) except
    where `header_only`: the hub's own admin API, new, whose backup download is a GET URL a person
    might paste into a browser or wget, and so into history, shell logs and proxies' logs."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if header_only:
        if "access_token" in query:
            raise errors.MatrixError(401, "M_MISSING_TOKEN",
                                     "Send the access token in the Authorization header, not in the URL")
        return None
    values = query.get("access_token")
    return values[-1] if values else None


def json_response(response: ApiResponse, headers: dict[str, str] = CORS_HEADERS) -> web.Response:
    return web.Response(status=response.status, body=encode_json(response.body),
                        content_type="application/json", headers=headers)


def error_response(err: errors.MatrixError) -> web.Response:
    """The client API's edge: every Matrix error becomes its HTTP answer here."""
    return json_response(error_answer(err))


def _listener_url(request: web.Request) -> str:
    """The address the request came in on, for a request without a Host header."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return f"{request.scheme}://localhost"
    host = sockname[0]
    return f"{request.scheme}://{'[' + host + ']' if ':' in host else host}:{sockname[1]}"


def make_app(hs: Homeserver) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS_HEADERS)
        try:
            segments, query = split_raw_path(request.raw_path)
            if segments == [".well-known", "matrix", "client"] and request.method in ("GET", "HEAD"):
                return json_response(ok(well_known_client(hs, request.scheme, request.headers.get("Host"),
                                                          _listener_url(request))))
            page = web_http.web_route(segments)
            if page is not None:  # the hub's own pages (web_http.py)
                return web_http.serve(request, page)
            media = media_http.media_route(segments)
            if media is not None:  # streamed bodies and file answers (media_http.py says why)
                call = media_http.MediaCall(query, token_from(request.headers, query), CORS_HEADERS)
                answer = await media_http.handle(hs, request, media[0], media[1], call)
                return json_response(answer) if isinstance(answer, ApiResponse) else answer
            if backup_http.is_backup(segments):  # a streamed download (backup_http.py)
                return await backup_http.handle(hs, request, token_from(request.headers, query, True), CORS_HEADERS)
            own = gateway_route(segments)  # the hub's own and admin APIs (gateway_routes.py)
            if own is not None:
                router, api_segments = own
            else:
                router, api_segments = ROUTER, client_api_segments(segments)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes")
            raw = await request.read() if request.can_read_body else b""

            api_request = ApiRequest(
                method=request.method,
                segments=api_segments,
                query=query,
                access_token=token_from(request.headers, query, segments[:3] == ADMIN_PREFIX),
                remote=request.remote or "",
                load_body=partial(json_body, raw),
                load_plain_body=partial(plain_json_body, raw),
                raw_body=raw,
                content_type=request.headers.get("Content-Type"),
                host=request.headers.get("Host"),
            )
            answer = await router.dispatch(hs, api_request)
            return json_response(answer, PRIVATE_HEADERS if own is not None else CORS_HEADERS)
        except errors.MatrixError as err:
            return error_response(err)
        except web.HTTPRequestEntityTooLarge:
            return error_response(errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes"))
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(errors.MatrixError(500, "M_UNKNOWN", "Internal server error"))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
