"""The federation listener: an aiohttp app over TLS serving the key API, the version endpoint and
a route table for the server-server API, every /_matrix/federation request authenticated first.

Handlers are registered by the federation handler modules:

    FEDERATION_ROUTES.add("PUT", "/_matrix/federation/v1/send/{txnId}", on_send)

    async def on_send(hs, origin: str, request: FederationRequest) -> tuple[int, Any]: ...

`origin` is the server whose X-Matrix signature was verified (against the raw path, with a key of
that server valid now, the destination being us). Errors raised as MatrixError become Matrix JSON.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote

from aiohttp import web

from .. import errors
from ..client_api.http_listener import HttpListener
from ..client_api.router import Router
from ..canonical_json import encode_json
from ..client_api.request import error_answer, json_body
from .keyring import KeyLookupError, KeyRing
from .keys import KeyDocumentError, parse_key_query
from .xmatrix import XMatrixError, parse_header, verify_request

if TYPE_CHECKING:
    from ..homeserver import Homeserver
    from .client import FederationClient

log = logging.getLogger(__name__)

__all__ = [
    "FEDERATION_ROUTES",
    "FederationFrontend",
    "FederationRequest",
    "FederationRoutes",
    "MAX_BODY_BYTES",
    "authenticate",
    "make_federation_app",
]

# A /send transaction holds up to 50 PDUs and 100 EDUs of at most 64 KiB each.
MAX_BODY_BYTES = 12 * 1024 * 1024
SERVER_SOFTWARE = {"name": "matrix-gateway", "version": "0.1.0"}


@dataclass(slots=True)
class FederationRequest:
    method: str
    raw_path: str  # the request target as received, percent-escapes untouched (path + query)
    path_params: dict[str, str]  # decoded
    query: dict[str, list[str]]  # decoded
    content: Any  # the parsed JSON body, or None
    origin: str = ""
    headers: Any = field(default=None, repr=False)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


Handler = Callable[["Homeserver", str, FederationRequest], Awaitable[tuple[int, Any]]]


class FederationRoutes(Router[Handler]):
    """Method + path template -> handler, with the client API's route matching (one router):
    templates use {name} for one decoded path segment and must live under /_matrix/."""

    def add(self, method: str, path: str, handler: Handler) -> None:
        if not path.startswith("/_matrix/"):
            raise ValueError(f"federation routes live under /_matrix/: {path}")
        super().add(method, path, handler)


FEDERATION_ROUTES = FederationRoutes()


def unauthorized(error: str) -> errors.MatrixError:
    return errors.MatrixError(401, "M_UNAUTHORIZED", error)


async def authenticate(keyring: KeyRing, our_server_name: str, method: str, raw_path: str,
                       authorization_headers: list[str], content: Any, now_ms: int) -> str:
    """The origin of a request whose X-Matrix header verifies; MatrixError 401 otherwise."""
    candidates = [h for h in authorization_headers if h.strip().lower().startswith("x-matrix")]
    if not candidates:
        raise unauthorized("Missing X-Matrix Authorization header.")
    problem = "no valid signature"
    for header in candidates:
        try:
            auth = parse_header(header)
            if auth.destination is not None and auth.destination != our_server_name:
                raise XMatrixError("request is not addressed to this server")
            key = await keyring.get_server_key(auth.origin, auth.key_id, now_ms)
            verify_request(auth, method, raw_path, our_server_name, key.key, content)
        except (XMatrixError, KeyLookupError, ValueError) as exc:
            problem = str(exc)
            continue
        return auth.origin
    raise unauthorized(f"Invalid X-Matrix signature: {problem}")


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=encode_json(body), content_type="application/json")


def _error(err: errors.MatrixError) -> web.Response:
    """Federation's edge: every Matrix error becomes its HTTP answer here."""
    answer = error_answer(err)
    return _json(answer.status, answer.body)


def _split(raw_path: str) -> tuple[list[str], dict[str, list[str]]]:
    path, _, query = raw_path.partition("?")
    return [unquote(seg) for seg in path.split("/")[1:]], parse_qs(query, keep_blank_values=True)


def make_federation_app(hs: Homeserver, routes: FederationRoutes, keyring: KeyRing,
                        clock: Callable[[], int] | None = None) -> web.Application:
    now = clock or keyring.clock

    async def key_query(wanted: dict[str, dict[str, int]]) -> web.Response:
        return _json(200, {"server_keys": await keyring.notary_documents(wanted)})

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            raw_path = request.raw_path
            segments, query = _split(raw_path)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes")
            raw = await request.read() if request.can_read_body else b""
            content = json_body(raw)
            method = request.method
            path = "/" + "/".join(segments)

            # The key API and the version are public.
            if segments[:3] == ["_matrix", "key", "v2"]:
                if method == "GET" and segments[3:4] == ["server"] and len(segments) <= 5:
                    return _json(200, keyring.own_document())
                if method == "GET" and segments[3:4] == ["query"] and len(segments) == 5:
                    minimum = query.get("minimum_valid_until_ts", ["0"])[-1]
                    try:
                        min_ts = int(minimum)
                    except ValueError:
                        raise errors.invalid_param("minimum_valid_until_ts must be an integer") from None
                    return await key_query({segments[4]: {"": min_ts}})
                if method == "POST" and segments[3:] == ["query"]:
                    try:
                        wanted = parse_key_query(content)
                    except KeyDocumentError as exc:
                        raise errors.bad_json(str(exc)) from None
                    return await key_query({s: (k or {"": 0}) for s, k in wanted.items()})
                raise errors.unrecognized()
            if method == "GET" and path == "/_matrix/federation/v1/version":
                return _json(200, {"server": SERVER_SOFTWARE})
            if segments[:2] != ["_matrix", "federation"]:
                raise errors.unrecognized()

            origin = await authenticate(keyring, hs.server_name, method, raw_path,
                                        request.headers.getall("Authorization", []), content, now())
            sender = getattr(hs, "federation_sender", None)
            if sender is not None:
                sender.wake(origin)  # any authenticated request: that server is up again
            handler, params = routes.resolve(method, segments)
            fed_request = FederationRequest(method, raw_path, params, query, content, origin, request.headers)
            status, body = await handler(hs, origin, fed_request)
            if isinstance(body, web.StreamResponse):  # a media answer (federation/media.py), not JSON
                return body
            return _json(status, body)
        except errors.MatrixError as err:
            return _error(err)
        except web.HTTPRequestEntityTooLarge:
            return _error(errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes"))
        except Exception:
            log.exception("unhandled error on federation %s %s", request.method, request.path)
            return _error(errors.MatrixError(500, "M_UNKNOWN", "Internal server error"))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class FederationFrontend:
    """The federation listener as a gateway front end: TLS on (bind, federation_port).

    On start it puts `federation_client`, `keyring` and `federation_routes` on the Homeserver.
    """

    name = "federation"

    def __init__(self, hs: Homeserver, data_dir: Path, bind: str, port: int, tls_cert: str = "", tls_key: str = "",
                 verify_tls: bool = True, allow_loopback: bool = False,
                 routes: FederationRoutes = FEDERATION_ROUTES, idle_timeout: float = 15.0,
                 max_per_address: int = 64, allowed_networks: tuple[str, ...] = (), mdns: bool = False) -> None:
        self.hs = hs
        self.allowed_networks = allowed_networks  # federation_allowed_networks
        self.mdns = mdns
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.port = port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.verify_tls = verify_tls
        self.allow_loopback = allow_loopback
        self.routes = routes
        self.idle_timeout = idle_timeout
        self.max_per_address = max_per_address
        self._listener: HttpListener | None = None
        self.client: FederationClient | None = None
        self.keyring: KeyRing | None = None

    async def start(self) -> None:
        from .client import FederationClient
        from .tls import certificate_paths, server_context

        cert, key = certificate_paths(self.data_dir, self.hs.server_name, self.tls_cert, self.tls_key)
        ssl_context = server_context(cert, key)
        self.client = FederationClient(self.hs, verify_tls=self.verify_tls, allow_loopback=self.allow_loopback,
                                       allowed_networks=self.allowed_networks, mdns=self.mdns)
        self.keyring = KeyRing(self.hs.server_name, self.hs.signing_key, client=self.client, db=self.hs.db)
        self.hs.federation_client = self.client
        self.hs.keyring = self.keyring
        self.hs.federation_routes = self.routes
        # The client API's listener, with TLS: idle and slowloris connections closed, a cap per address.
        self._listener = HttpListener(make_federation_app(self.hs, self.routes, self.keyring), self.bind,
                                      self.port, self.idle_timeout, self.max_per_address, ssl_context)
        self.port = await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.client is not None:
            await self.client.close()

    def describe(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"federation=https://{host}:{self.port}"
