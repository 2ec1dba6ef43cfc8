"""The hub's own web pages (matrix_core/web/): `/` and `/web/<file>` on the client HTTP port.

Static files shipped in the package (no build step, no CDN: a Pi on a LAN without Internet
serves them), read once and kept gzipped in memory. Every answer carries a strict
Content-Security-Policy (scripts and styles only from this origin, no inline script) and
`nosniff`; files are revalidated by ETag (`no-cache`), so an upgraded hub's page is fresh at
once and an unchanged one costs a 304.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def _load() -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    root = resources.files("matrix_core") / "web"
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in TYPES:
            continue
        body = entry.read_bytes()
        files[entry.name] = StaticFile(body, gzip.compress(body, 9, mtime=0), TYPES[suffix],
                                       '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


_FILES: dict[str, StaticFile] | None = None


def files() -> dict[str, StaticFile]:
    global _FILES
    if _FILES is None:
        _FILES = _load()
    return _FILES


def web_route(segments: list[str]) -> str | None:
    """The file a path names (`/` is index.html), or None when the path is not the pages'."""
    if segments in ([""], ["index.html"]):
        return "index.html"
    if len(segments) == 2 and segments[0] == "web" and segments[1] != "index.html":
        return segments[1]
    return None


def serve(request: web.Request, name: str) -> web.Response:
    static = files().get(name)
    if static is None or request.method not in ("GET", "HEAD"):
        status = 404 if static is None else 405
        return web.Response(status=status, text="Not found\n" if status == 404 else "Method not allowed\n",
                            content_type="text/plain", headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "ETag": static.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if request.headers.get("If-None-Match") == static.etag:
        return web.Response(status=304, headers=headers)
    body = static.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = static.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=200, body=body, headers={**headers, "Content-Type": static.content_type})
