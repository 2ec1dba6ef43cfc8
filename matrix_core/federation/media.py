"""Federation media (spec v1.11): serve this hub's media to other servers, and fetch theirs.

Serving: GET /_matrix/federation/v1/media/download/{mediaId} and /thumbnail/{mediaId}, answered
`multipart/mixed`: a JSON part (metadata, empty: `{}`) and then the bytes with their Content-Type
and Content-Disposition, streamed from the file. Only this hub's own media are served (a server
asks the origin, never a cache).

Fetching: a client downloading `mxc://other.server/id` has the hub ask other.server's federation
download endpoint (a signed request); the answer's file part is streamed to disk under the upload
size limit (M_TOO_LARGE above it, nothing kept) and kept as a remote-origin row, so the next
download, and every thumbnail of it, is served from the cache. A server that does not answer or
does not have it: 404 M_NOT_FOUND (one log line). A redirect (Location) instead of bytes is not
followed: a home hub does not fetch arbitrary URLs on a remote server's word.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

import aiohttp
from aiohttp import web

from .. import errors
from .. import media_rules as rules
from ..log_limit import LogLimiter
from .client import DestinationRefused, DestinationUnreachable, FederationError, federation_path
from .server import FEDERATION_ROUTES, FederationRequest

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
FETCH_TIMEOUT = 120.0
_failures = LogLimiter(60.0)


def multipart_answer(content_type: str, filename: str | None, path: Path) -> web.Response:
    """The spec's federation media answer: `{}` metadata, then the file, streamed."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Disposition: {rules.content_disposition(content_type, filename)}\r\n\r\n").encode()

    async def body() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        yield head
        fh = await loop.run_in_executor(None, open, path, "rb")
        try:
            while chunk := await loop.run_in_executor(None, fh.read, READ_CHUNK):
                yield chunk
        finally:
            fh.close()
        yield f"\r\n--{boundary}--\r\n".encode()

    return web.Response(status=200, body=body(), headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})


async def on_download(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    row, path = await hs.media.find(hs.server_name, req.path_params["mediaId"], allow_remote=False)
    return 200, multipart_answer(row.content_type, row.filename, path)


async def on_thumbnail(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    width, height, method, animated = rules.thumbnail_request(req.arg("width"), req.arg("height"), req.arg("method"),
                                                              req.arg("animated"))
    path, content_type = await hs.media.thumbnail(hs.server_name, req.path_params["mediaId"], width, height, method,
                                                  animated, allow_remote=False)
    return 200, multipart_answer(content_type, None, path)


FEDERATION_ROUTES.add("GET", "/_matrix/federation/v1/media/download/{mediaId}", on_download)
FEDERATION_ROUTES.add("GET", "/_matrix/federation/v1/media/thumbnail/{mediaId}", on_thumbnail)


class RemoteMedia:
    """hs.media.remote: fetch a remote media over federation into the cache."""

    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs

    async def fetch(self, server_name: str, media_id: str) -> None:
        rules.check_media_id(media_id)
        path = federation_path("/_matrix/federation/v1/media/download/{mediaId}", mediaId=media_id)

        async def consume(resp: aiohttp.ClientResponse) -> None:
            if not resp.headers.get("Content-Type", "").lower().startswith("multipart/"):
                raise errors.not_found("The remote server's answer is not a media.")
            reader = aiohttp.MultipartReader(resp.headers, resp.content)
            metadata = await reader.next()
            if metadata is None:
                raise errors.not_found("The remote server's answer is empty.")
            await metadata.release()
            part = await reader.next()
            if not isinstance(part, aiohttp.BodyPartReader) or "Location" in part.headers:
                raise errors.not_found("The remote server did not send the media's bytes.")
            file_part = part

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await file_part.read_chunk(READ_CHUNK):
                    yield chunk

            await self.hs.media.store_remote(server_name, media_id,
                                             file_part.headers.get("Content-Type", rules.DEFAULT_CONTENT_TYPE),
                                             file_part.filename, chunks())

        try:
            await self.hs.federation_client.request(server_name, "GET", path, timeout=FETCH_TIMEOUT, consume=consume)
        except FederationError as exc:
            if exc.status != 404:
                _failures.log(log, logging.WARNING, server_name, "media: %s answered %d for %s", server_name,
                              exc.status, media_id)
        except (DestinationUnreachable, DestinationRefused) as exc:
            _failures.log(log, logging.WARNING, server_name, "media: cannot fetch from %s: %s", server_name, exc)
        except (aiohttp.ClientError, ValueError) as exc:
            _failures.log(log, logging.WARNING, server_name, "media: bad answer from %s: %s", server_name, exc)
