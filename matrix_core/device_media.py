"""Device payloads that belong in the media repository: images and payloads too large for an
event. Pure (no I/O): what is an image, its size in pixels, and the event content that refers
to the stored bytes (docs/mqtt.md "Images and large payloads", docs/payload-mapping.md).

Here in the core because the client API's picture route (client_api/device_media_handlers.py)
uses it as well as the MQTT front end. The front ends store the bytes through a `MediaRepository` (`hs.media`) and then
send the content built here; subscribers get the exact bytes back from the repository.
"""
from __future__ import annotations

import re
import struct
from typing import Any, Protocol

__all__ = ["INLINE_CONTENT_MAX", "MEDIA_KIND", "MediaRepository", "image_content", "image_size",
           "image_type", "media_payload", "sniff_image"]

#: The most canonical-JSON bytes an `mqtt` object may take inside an event: the event (at most
#: 64 KiB, MAX_EVENT_BYTES) also holds the body preview (<= 300 characters, up to 6 bytes each
#: escaped), hashes, signatures, auth and prev events. Larger payloads go to the media repository.
INLINE_CONTENT_MAX = 48 * 1024

MEDIA_KIND = "media"

_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\Z")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
               "application/json": "json", "text/plain": "txt", "application/cbor": "cbor"}


class MediaRepository(Protocol):
    """The media repository's interface as the device front ends use it (`hs.media`)."""

    async def store_bytes(self, user_id: str, data: bytes, content_type: str, filename: str | None) -> str:
        """Store durably; "mxc://server/mediaId". Raises MatrixError over the size limit or a quota."""
        ...

    async def read_bytes(self, mxc_uri: str) -> tuple[bytes, str] | None:
        """(data, content type), or None for unknown media."""
        ...


def sniff_image(data: bytes) -> str | None:
    """The image type the magic bytes say (JPEG, PNG), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def clean_mimetype(value: Any) -> str | None:
    """A declared content type reduced to `type/subtype` (lower case), or None if it is not one."""
    if not isinstance(value, str):
        return None
    mime = value.split(";", 1)[0].strip().lower()
    return mime if _MIME.match(mime) else None


def image_type(data: bytes, content_type: Any, sniff: bool) -> str | None:
    """The image type of a payload: a declared `image/*` content type (MQTT 5, CoAP), or, where
    the topic's rule says to look (`sniff`), JPEG/PNG magic bytes. None: not an image."""
    if not data:
        return None
    declared = clean_mimetype(content_type)
    if declared is not None and declared.startswith("image/"):
        return declared
    return sniff_image(data) if sniff else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or baseline/progressive JPEG, read from its header; None if the
    header cannot be read (no decoding: cheap, and never a decompression bomb)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return (w, h) if w and h else None
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if length < 2:
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return (w, h) if w and h else None
        pos += 2 + length
    return None


def generic_type(kind: str) -> str:
    """The content type of a large non-image payload, from the kind the payload mapping sniffs."""
    return {"json": "application/json", "text": "text/plain", "cbor": "application/cbor"}.get(
        kind, "application/octet-stream")


def filename_for(topic_or_path: str, mimetype: str) -> str:
    """A file name Element can show: the last topic level plus an extension for the type."""
    last = topic_or_path.rstrip("/").rsplit("/", 1)[-1] or "payload"
    ext = _EXTENSIONS.get(mimetype, "bin")
    return last if last.endswith("." + ext) else f"{last}.{ext}"


def media_payload(url: str, mimetype: str, size: int) -> dict[str, Any]:
    """The payload mapping's reference to bytes kept in the media repository (docs/payload-mapping.md)."""
    return {"kind": MEDIA_KIND, "url": url, "mimetype": mimetype, "size": size}


def media_url(payload: Any) -> str | None:
    """The mxc URL of a media payload reference, or None (anything else)."""
    if isinstance(payload, dict) and payload.get("kind") == MEDIA_KIND:
        url = payload.get("url")
        if isinstance(url, str) and url.startswith("mxc://"):
            return url
    return None


def image_content(body: str, url: str, mimetype: str, data: bytes) -> dict[str, Any]:
    """An `m.image` message (what Element shows as a picture): body, url, info."""
    info: dict[str, Any] = {"mimetype": mimetype, "size": len(data)}
    size = image_size(data)
    if size is not None:
        info["w"], info["h"] = size
    return {"msgtype": "m.image", "body": body, "url": url, "info": info}


def file_content(body: str, filename: str, url: str, mimetype: str, size: int) -> dict[str, Any]:
    """An `m.file` message for a payload too large for an event."""
    return {"msgtype": "m.file", "body": body, "filename": filename, "url": url,
            "info": {"mimetype": mimetype, "size": size}}
