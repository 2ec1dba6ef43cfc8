"""The content repository's rules, without I/O: what a media id, an mxc:// URI and a file name may
be, the headers a download is served with, and the size of a thumbnail.

Why these headers: media are anyone's bytes served from the hub's own origin. A browser must never
run them as a page of the hub (an uploaded HTML or SVG file could otherwise read a logged-in
Element's tokens): so the spec's short list of safe types is shown inline and everything else is
an attachment, `X-Content-Type-Options: nosniff` stops the browser guessing a type, and the
Content-Security-Policy (Synapse's) sandboxes whatever still gets rendered.
"""
from __future__ import annotations

import re

from . import errors

MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_FILENAME = 255
MAX_CONTENT_TYPE = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Spec v1.11, client-server API, "Content repository": types a server may serve `inline`
# (Synapse's INLINE_CONTENT_TYPES); any other type is served as an attachment.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

# Synapse's policy for media answers: nothing in a downloaded file may run or load anything.
CONTENT_SECURITY_POLICY = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
                           "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")

# Images Pillow may thumbnail; anything else (or a file that is not what it says) is a 400.
THUMBNAIL_SOURCE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                                    "image/apng"})
THUMBNAIL_METHODS = ("scale", "crop")
MAX_THUMBNAIL_SIDE = 1600  # asked sizes above this are served at this size (Synapse's largest is 800)

# Animated thumbnails (spec v1.11 `animated=true`, MSC2705): an animated GIF, WebP or PNG (APNG) source
# keeps its format, with the content types the spec names for them (image/png for APNG).
ANIMATED_THUMBNAIL_TYPES = {"GIF": "image/gif", "WEBP": "image/webp", "PNG": "image/png"}
# Caps on one animated thumbnail (above any of them the thumbnail is the static first frame, which the
# spec allows: animated only "if possible"): frames, pixels decoded (frames x source: CPU time) and
# pixels kept until encoded (frames x thumbnail, 4 bytes each: 64 MB at most).
MAX_ANIMATED_FRAMES = 200
MAX_ANIMATED_SOURCE_PIXELS = 128_000_000
MAX_ANIMATED_THUMBNAIL_PIXELS = 16_000_000


def check_media_id(media_id: str) -> str:
    """A media id names a row, never a path: only [A-Za-z0-9_-] (no `..`, `/`, `%2F`)."""
    if not MEDIA_ID.fullmatch(media_id):
        raise errors.not_found("Unknown media id.")
    return media_id


def parse_mxc(uri: str) -> tuple[str, str]:
    """(server name, media id) of an `mxc://server/id`; M_INVALID_PARAM if it is not one."""
    if not isinstance(uri, str) or not uri.startswith("mxc://"):
        raise errors.invalid_param("Not an mxc:// URI.")
    server, _, media_id = uri[len("mxc://"):].partition("/")
    if not server or not MEDIA_ID.fullmatch(media_id):
        raise errors.invalid_param("Not an mxc:// URI.")
    return server, media_id


def check_filename(name: str | None) -> str | None:
    """A file name as a client gives it (upload `filename`, download path): shown to users, never
    a path on the hub; still, separators, control characters and `.`/`..` are refused, so that no
    client saving the file under the name it is served with can be led outside its folder."""
    if name is None or name == "":
        return None
    if (len(name) > MAX_FILENAME or name in (".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)):
        raise errors.invalid_param("Invalid file name.")
    return name


def check_content_type(value: str | None) -> str:
    """The upload's Content-Type (without it: application/octet-stream); printable ASCII only."""
    if value is None or not value.strip():
        return DEFAULT_CONTENT_TYPE
    value = value.strip()
    if len(value) > MAX_CONTENT_TYPE or not all(0x20 <= ord(c) < 0x7F for c in value):
        raise errors.invalid_param("Invalid Content-Type.")
    return value


def base_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _quote_utf8(name: str) -> str:
    """RFC 5987 percent-encoding of a UTF-8 file name (attr-char kept)."""
    keep = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")
    return "".join(c if c in keep else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def content_disposition(content_type: str, filename: str | None) -> str:
    """`inline` only for the spec's safe types, `attachment` otherwise; the file name as a plain
    token when it is one, else RFC 6266's filename*=utf-8''..."""
    kind = "inline" if base_type(content_type) in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return kind
    if re.fullmatch(r"[A-Za-z0-9!#$&+.^_`|~-]+", filename):
        return f"{kind}; filename={filename}"
    return f"{kind}; filename*=utf-8''{_quote_utf8(filename)}"


def media_headers(content_type: str, filename: str | None) -> dict[str, str]:
    """Every header a media answer (download or thumbnail) carries besides its length."""
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(content_type, filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Cache-Control": "private, max-age=86400",
    }


def thumbnail_request(width: str | None, height: str | None, method: str | None,
                      animated: str | None) -> tuple[int, int, str, bool]:
    """(width, height, method, animated) of a thumbnail request; 400 for nonsense."""
    if width is None or height is None:
        raise errors.missing_param("width and height are required.")
    try:
        w, h = int(width), int(height)
    except ValueError:
        raise errors.invalid_param("width and height must be integers.") from None
    if w < 1 or h < 1:
        raise errors.invalid_param("width and height must be positive.")
    method = method or "scale"
    if method not in THUMBNAIL_METHODS:
        raise errors.invalid_param("method must be scale or crop.")
    if animated not in (None, "true", "false"):
        raise errors.invalid_param("animated must be true or false.")
    return min(w, MAX_THUMBNAIL_SIDE), min(h, MAX_THUMBNAIL_SIDE), method, animated == "true"


def thumbnail_geometry(source: tuple[int, int], width: int, height: int,
                       method: str) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """(size to resize to, crop box applied after it or None).

    scale: the largest size that fits in width x height keeping the aspect ratio, never larger
    than the source. crop: cover width x height keeping the aspect ratio, then cut the middle
    (never larger than the source either: a small source gives a smaller thumbnail)."""
    sw, sh = source
    if sw < 1 or sh < 1:
        raise errors.unknown("The image has no pixels.")
    if method == "scale":
        ratio = min(width / sw, height / sh, 1.0)
        return (max(1, round(sw * ratio)), max(1, round(sh * ratio))), None
    ratio = min(max(width / sw, height / sh), 1.0)
    rw, rh = max(1, round(sw * ratio)), max(1, round(sh * ratio))
    cw, ch = min(width, rw), min(height, rh)
    left, top = (rw - cw) // 2, (rh - ch) // 2
    return (rw, rh), (left, top, left + cw, top + ch)


def animated_thumbnail_fits(frames: int, source: tuple[int, int], thumbnail: tuple[int, int]) -> bool:
    """Whether an animation of `frames` frames of `source` size may be thumbnailed, animated, to
    `thumbnail` size within the caps (else its thumbnail is static)."""
    return (1 < frames <= MAX_ANIMATED_FRAMES
            and frames * source[0] * source[1] <= MAX_ANIMATED_SOURCE_PIXELS
            and frames * thumbnail[0] * thumbnail[1] <= MAX_ANIMATED_THUMBNAIL_PIXELS)


def mxc_references(content: object) -> list[tuple[str, str]]:
    """(server, media id) of the media an event's content points at: `url` (m.image, m.file,
    m.sticker, avatars), `info.thumbnail_url`, and the encrypted-file forms `file.url` and
    `info.thumbnail_file.url`. Anything malformed is skipped."""
    if not isinstance(content, dict):
        return []
    raw_info = content.get("info")
    info: dict[str, object] = raw_info if isinstance(raw_info, dict) else {}
    candidates = [content.get("url"), info.get("thumbnail_url")]
    for holder in (content.get("file"), info.get("thumbnail_file")):
        if isinstance(holder, dict):
            candidates.append(holder.get("url"))
    found = []
    for uri in candidates:
        if isinstance(uri, str) and uri.startswith("mxc://"):
            server, _, media_id = uri[len("mxc://"):].partition("/")
            if server and MEDIA_ID.fullmatch(media_id):
                found.append((server, media_id))
    return found
