"""The media API over HTTP: /_matrix/media/{v3,r0,v1}/... and /_matrix/client/v1/media/...

Why not the JSON route table: an upload is a raw body of up to `max_upload_size_mb` that must be
streamed to disk (not read whole, as the route table's ApiRequest does with its 128 KiB cap), and a
download is a file answered with its own headers. So http.py hands these two path families here;
their handlers read the aiohttp request's body in chunks and answer files with sendfile, and
their errors are the same MatrixErrors, mapped by http.py like every other answer.

Two families, as spec v1.11 has them:
- authenticated (`/_matrix/client/v1/media/`): download, thumbnail, config, preview_url.
- the media namespace (`/_matrix/media/<version>/`): upload, create and the async upload PUT, config;
  its unauthenticated download and thumbnail are frozen by the spec (v1.11): a server serves there
  only media stored before it started serving authenticated media. Every media of this hub was
  stored after (the repository arrived with the authenticated endpoints), so those answer
  404 M_NOT_FOUND, pointing clients at the authenticated paths.
URL previews are not offered (404 M_UNRECOGNIZED): fetching arbitrary URLs for clients is a
server-side request forgery risk a home hub does not need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from .. import errors
from .. import media_rules as rules
from ..params import int_param
from .request import ApiResponse, ok
from .router import Router

if TYPE_CHECKING:
    from ..homeserver import Homeserver

READ_CHUNK = 64 * 1024
MEDIA_VERSIONS = ("v3", "r0", "v1")


@dataclass(slots=True)
class MediaCall:
    """What a media handler gets besides the aiohttp request: path parameters, query, token."""
    query: dict[str, list[str]]
    access_token: str | None
    cors: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def allow_remote(self) -> bool:
        return self.arg("allow_remote") != "false"

    def timeout_ms(self) -> int:
        raw = self.arg("timeout_ms")
        return 20_000 if raw is None else int_param("timeout_ms", raw, 0, 2**31)


MediaAnswer = ApiResponse | web.StreamResponse
MediaHandler = Callable[["Homeserver", web.Request, MediaCall], Awaitable[MediaAnswer]]


# -- the media namespace: uploads ------------------------------------------------------------------

async def upload(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    requester = await hs.accounts.authenticate(call.access_token)
    uri = await hs.media.upload_stream(requester.user_id, request.content.iter_chunked(READ_CHUNK),
                                       request.headers.get("Content-Type", ""), call.arg("filename"),
                                       request.content_length)
    return ok({"content_uri": uri})


async def create(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    requester = await hs.accounts.authenticate(call.access_token)
    uri, expires = await hs.media.create(requester.user_id)
    return ok({"content_uri": uri, "unused_expires_at": expires})


async def upload_to(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    requester = await hs.accounts.authenticate(call.access_token)
    if call.params["serverName"] != hs.server_name:
        raise errors.not_found("Unknown media id.")
    await hs.media.upload_stream(requester.user_id, request.content.iter_chunked(READ_CHUNK),
                                 request.headers.get("Content-Type", ""), call.arg("filename"),
                                 request.content_length, media_id=rules.check_media_id(call.params["mediaId"]))
    return ok({})


async def config(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    await hs.accounts.authenticate(call.access_token)
    return ok(hs.media.config())


async def frozen(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    """Unauthenticated download/thumbnail: no media of this hub predates the freeze."""
    raise errors.not_found("Media are served only by the authenticated /_matrix/client/v1/media/ endpoints.")


async def no_previews(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    await hs.accounts.authenticate(call.access_token)
    raise errors.unrecognized("URL previews are not offered by this hub.")


# -- authenticated downloads -----------------------------------------------------------------------

async def download(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    await hs.accounts.authenticate(call.access_token)
    filename = rules.check_filename(call.params.get("fileName"))
    timeout = call.timeout_ms()
    row, path = await hs.media.find(call.params["serverName"], call.params["mediaId"], timeout, call.allow_remote())
    headers = {**call.cors, **rules.media_headers(row.content_type, filename or row.filename)}
    return web.FileResponse(path, headers=headers)


async def thumbnail(hs: Homeserver, request: web.Request, call: MediaCall) -> MediaAnswer:
    await hs.accounts.authenticate(call.access_token)
    width, height, method, animated = rules.thumbnail_request(call.arg("width"), call.arg("height"),
                                                              call.arg("method"), call.arg("animated"))
    path, content_type = await hs.media.thumbnail(call.params["serverName"], call.params["mediaId"], width, height,
                                                  method, animated, call.timeout_ms(), call.allow_remote())
    return web.FileResponse(path, headers={**call.cors, **rules.media_headers(content_type, None)})


MEDIA_NAMESPACE: Router[MediaHandler] = Router()
MEDIA_NAMESPACE.add("POST", "upload", upload)
MEDIA_NAMESPACE.add("POST", "create", create)
MEDIA_NAMESPACE.add("PUT", "upload/{serverName}/{mediaId}", upload_to)
MEDIA_NAMESPACE.add("GET", "config", config)
MEDIA_NAMESPACE.add("GET", "download/{serverName}/{mediaId}", frozen)
MEDIA_NAMESPACE.add("GET", "download/{serverName}/{mediaId}/{fileName}", frozen)
MEDIA_NAMESPACE.add("GET", "thumbnail/{serverName}/{mediaId}", frozen)
MEDIA_NAMESPACE.add("GET", "preview_url", no_previews)

AUTHENTICATED: Router[MediaHandler] = Router()
AUTHENTICATED.add("GET", "config", config)
AUTHENTICATED.add("GET", "download/{serverName}/{mediaId}", download)
AUTHENTICATED.add("GET", "download/{serverName}/{mediaId}/{fileName}", download)
AUTHENTICATED.add("GET", "thumbnail/{serverName}/{mediaId}", thumbnail)
AUTHENTICATED.add("GET", "preview_url", no_previews)


def media_route(segments: list[str]) -> tuple[Router[MediaHandler], list[str]] | None:
    """The media router and the path after its prefix, if this request is one for media."""
    if len(segments) >= 4 and segments[:2] == ["_matrix", "media"] and segments[2] in MEDIA_VERSIONS:
        return MEDIA_NAMESPACE, segments[3:]
    if len(segments) >= 5 and segments[:4] == ["_matrix", "client", "v1", "media"]:
        return AUTHENTICATED, segments[4:]
    return None


async def handle(hs: Homeserver, request: web.Request, router: Router[MediaHandler], rest: list[str],
                 call: MediaCall) -> MediaAnswer:
    method = "GET" if request.method == "HEAD" else request.method
    handler, params = router.resolve(method, rest)
    call.params = params
    return await handler(hs, request, call)
