"""The content repository (hs.media): uploads, downloads, thumbnails and quotas, for every front
end (the HTTP media API, and devices over MQTT and CoAP through `store_bytes`/`read_bytes`).

Uploads stream: a request body is read in chunks into a temporary file (store/media_files.py) and
never held whole in memory, so a 50 MB upload costs the hub about a megabyte of RAM. Limits are
checked as the bytes come: the declared length first (a 413 before anything is read), then the
running count against the upload limit and the quotas, so an upload that lies about its length
is cut off at the limit and nothing of it is kept.

Quotas count local media only (remote media fetched over federation are a cache). Bytes of
uploads still in flight count against their user, so parallel uploads cannot each pass alone.
"""
from __future__ import annotations

import asyncio
import io
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from .. import errors
from .. import media_rules as rules
from ..clock import now_ms
from ..store import media as store
from ..store.media_files import MediaFiles

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from ..store import Database

log = logging.getLogger(__name__)

MiB = 1 << 20
UNUSED_EXPIRY_MS = 24 * 3600 * 1000  # a created mxc:// URI must get its bytes within a day
MAX_PENDING_PER_USER = 5  # created, not yet uploaded (Synapse's max_pending_media_uploads)
DEFAULT_DOWNLOAD_TIMEOUT_MS = 20_000
MAX_DOWNLOAD_TIMEOUT_MS = 120_000
# Pillow refuses images above this many pixels before decoding them (a decompression bomb: a
# small PNG that decodes to gigabytes). 32 Mpx is a 8000x4000 photo, ~100 MB decoded as RGB.
MAX_THUMBNAIL_PIXELS = 32_000_000
READ_CHUNK = 256 * 1024


class Media:
    def __init__(self, db: Database, server_name: str, root: Path, max_upload_bytes: int,
                 quota_per_user_bytes: int = 0, quota_total_bytes: int = 0, admin_contact: str = "") -> None:
        self.db = db
        self.server_name = server_name
        self.files = MediaFiles(root, admin_contact)
        self.max_upload_bytes = max_upload_bytes
        self.quota_per_user_bytes = quota_per_user_bytes
        self.quota_total_bytes = quota_total_bytes
        self.admin_contact = admin_contact
        self._inflight: dict[str, int] = {}  # user -> bytes of their uploads still streaming
        self._uploaded: dict[tuple[str, str], asyncio.Event] = {}  # downloads waiting on a created id
        self._thumbnailing = asyncio.Semaphore(1)  # one Pillow decode at a time (RAM, 2 cores)
        # Fetches a remote media into the cache (federation/media.py sets it when federation
        # starts; without federation, remote media are simply not found).
        self.remote: Callable[[str, str], Awaitable[None]] | None = None
        self._fetching: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.files.prepare)

    def config(self) -> dict[str, int]:
        return {"m.upload.size": self.max_upload_bytes}

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    # -- uploads ---------------------------------------------------------------------------------

    async def store_bytes(self, user_id: str, data: bytes, content_type: str, filename: str | None) -> str:
        """Store `data` as a new media of `user_id`; returns its mxc:// URI (once durable)."""
        async def one() -> AsyncIterator[bytes]:
            for i in range(0, len(data), READ_CHUNK):
                yield data[i:i + READ_CHUNK]

        return await self.upload_stream(user_id, one(), content_type, filename, len(data))

    async def upload_stream(self, user_id: str, chunks: AsyncIterator[bytes], content_type: str,
                            filename: str | None, declared_length: int | None = None,
                            media_id: str | None = None) -> str:
        """Store a streamed upload as a new media, or as the bytes of a created one (`media_id`);
        returns its mxc:// URI once file and row are committed."""
        content_type = rules.check_content_type(content_type)
        filename = rules.check_filename(filename)
        if media_id is not None:
            await self._check_created(user_id, media_id)
        if declared_length is not None:
            self._check_size(declared_length)
        base_user = await store.local_usage(self.db, self.server_name, user_id) if self.quota_per_user_bytes else 0
        base_total = await store.local_usage(self.db, self.server_name) if self.quota_total_bytes else 0
        if declared_length is not None:
            self._check_quota(user_id, base_user, base_total, declared_length)
        counted = 0

        def check(size: int) -> None:
            nonlocal counted
            self._check_size(size)
            self._inflight[user_id] = self._inflight.get(user_id, 0) + size - counted
            counted = size
            self._check_quota(user_id, base_user, base_total, 0)

        try:
            sha, size = await self.files.write_stream(chunks, check)
        finally:
            left = self._inflight.get(user_id, 0) - counted
            if left > 0:
                self._inflight[user_id] = left
            else:
                self._inflight.pop(user_id, None)
        try:
            if media_id is None:
                media_id = secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]
                row = store.MediaRow(self.server_name, media_id, user_id, content_type, filename, size, sha, now_ms(), None)
                await self.db.write(lambda conn: store.insert_media(conn, row))
            else:
                mid = media_id
                done = await self.db.write(lambda conn: store.complete_upload(
                    conn, self.server_name, mid, content_type, filename, size, sha))
                if not done:
                    raise errors.MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "This media already has content.")
                event = self._uploaded.pop((self.server_name, mid), None)
                if event is not None:
                    event.set()
        except BaseException:
            await self._drop_unreferenced([sha])
            raise
        return self.mxc(media_id)

    def _check_size(self, size: int) -> None:
        if size > self.max_upload_bytes:
            raise errors.too_large(f"Upload over the limit of {self.max_upload_bytes} bytes.")

    def _check_quota(self, user_id: str, base_user: int, base_total: int, extra: int) -> None:
        if self.quota_per_user_bytes and base_user + self._inflight.get(user_id, 0) + extra > self.quota_per_user_bytes:
            raise errors.resource_limit_exceeded(
                f"Your media quota of {self.quota_per_user_bytes} bytes is used up.", self.admin_contact)
        if self.quota_total_bytes and base_total + sum(self._inflight.values()) + extra > self.quota_total_bytes:
            raise errors.resource_limit_exceeded(
                f"The hub's media quota of {self.quota_total_bytes} bytes is used up.", self.admin_contact)

    async def create(self, user_id: str) -> tuple[str, int]:
        """A new mxc:// URI whose bytes come later (async upload); (URI, expiry time in ms)."""
        now = now_ms()
        if await store.pending_count(self.db, self.server_name, user_id, now) >= MAX_PENDING_PER_USER:
            raise errors.MatrixError(429, "M_LIMIT_EXCEEDED", "Too many media waiting for their content.",
                                     retry_after_ms=60_000)
        media_id = secrets.token_urlsafe(18)
        expires = now + UNUSED_EXPIRY_MS
        row = store.MediaRow(self.server_name, media_id, user_id, rules.DEFAULT_CONTENT_TYPE, None, 0, None, now, expires)

        def write(conn: sqlite3.Connection) -> None:
            store.drop_expired_pending(conn, now)  # expired ones go whenever a new one is made
            store.insert_media(conn, row)

        await self.db.write(write)
        return self.mxc(media_id), expires

    async def _check_created(self, user_id: str, media_id: str) -> None:
        row = await store.get_media(self.db, self.server_name, rules.check_media_id(media_id))
        if row is None or (row.sha256 is None and (row.unused_expires_ts or 0) < now_ms()):
            raise errors.not_found("Unknown media id.")
        if row.user_id != user_id:
            raise errors.forbidden("This media was created by another user.")
        if row.sha256 is not None:
            raise errors.MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "This media already has content.")

    # -- downloads -------------------------------------------------------------------------------

    async def find(self, server_name: str, media_id: str, timeout_ms: int = 0,
                   allow_remote: bool = True) -> tuple[store.MediaRow, Path]:
        """The row and file of a media with content; waits up to `timeout_ms` for a created one
        (then 504 M_NOT_YET_UPLOADED). M_NOT_FOUND for anything unknown."""
        rules.check_media_id(media_id)
        origin = server_name
        row = await store.get_media(self.db, origin, media_id)
        if row is None and server_name != self.server_name and allow_remote and self.remote is not None:
            await self._fetch_remote(server_name, media_id)
            row = await store.get_media(self.db, origin, media_id)
        if row is None:
            raise errors.not_found("Unknown media.")
        if row.sha256 is None:
            if (row.unused_expires_ts or 0) < now_ms():
                raise errors.not_found("Unknown media.")
            event = self._uploaded.setdefault((origin, media_id), asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), min(timeout_ms, MAX_DOWNLOAD_TIMEOUT_MS) / 1000)
            except asyncio.TimeoutError:
                raise errors.MatrixError(504, "M_NOT_YET_UPLOADED", "The media's content has not been uploaded yet.") \
                    from None
            row = await store.get_media(self.db, origin, media_id)
            if row is None or row.sha256 is None:
                raise errors.not_found("Unknown media.")
        return row, self.files.path_for(row.sha256)

    async def _fetch_remote(self, server_name: str, media_id: str) -> None:
        """One fetch per remote media at a time: concurrent downloads of it wait for the same one."""
        key = (server_name, media_id)
        pending = self._fetching.get(key)
        if pending is None:
            assert self.remote is not None
            pending = asyncio.ensure_future(self.remote(server_name, media_id))
            self._fetching[key] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        await asyncio.shield(pending)

    async def store_remote(self, origin: str, media_id: str, content_type: str, filename: str | None,
                           chunks: AsyncIterator[bytes]) -> None:
        """Cache a remote media's bytes under its own mxc:// URI (user ''; no quota, the upload
        size limit as the cap)."""
        rules.check_media_id(media_id)
        try:
            content_type = rules.check_content_type(content_type)
        except errors.MatrixError:
            content_type = rules.DEFAULT_CONTENT_TYPE
        try:
            filename = rules.check_filename(filename)
        except errors.MatrixError:
            filename = None
        sha, size = await self.files.write_stream(chunks, self._check_size)
        row = store.MediaRow(origin, media_id, "", content_type, filename, size, sha, now_ms(), None)
        try:
            await self.db.write(lambda conn: store.insert_remote(conn, row))
        except BaseException:
            await self._drop_unreferenced([sha])
            raise

    async def read_bytes(self, mxc_uri: str) -> tuple[bytes, str] | None:
        """(content, content type) of a stored media, or None if there is none (whole in memory:
        for device payloads, which are bounded by their protocol's limits)."""
        try:
            server, media_id = rules.parse_mxc(mxc_uri)
            row, path = await self.find(server, media_id)
        except errors.MatrixError:
            return None
        data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        return data, row.content_type

    # -- thumbnails ------------------------------------------------------------------------------

    async def thumbnail(self, server_name: str, media_id: str, width: int, height: int, method: str,
                        animated: bool, timeout_ms: int = 0, allow_remote: bool = True) -> tuple[Path, str]:
        """(file, content type) of a thumbnail, made once with Pillow and kept like media (of a
        remote media: from its cached original)."""
        row, source = await self.find(server_name, media_id, timeout_ms, allow_remote)
        if rules.base_type(row.content_type) not in rules.THUMBNAIL_SOURCE_TYPES:
            raise errors.unknown(f"Cannot make a thumbnail of {row.content_type} content.")
        cached = await store.get_thumbnail(self.db, row.origin, media_id, width, height, method, animated)
        if cached is None:
            async with self._thumbnailing:
                cached = await store.get_thumbnail(self.db, row.origin, media_id, width, height, method, animated)
                if cached is None:
                    cached = await self._make_thumbnail(row, source, width, height, method, animated)
        content_type, sha = cached
        return self.files.path_for(sha), content_type

    async def _make_thumbnail(self, row: store.MediaRow, source: Path, width: int, height: int, method: str,
                              animated: bool) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        data, content_type = await loop.run_in_executor(None, render_thumbnail, source, width, height, method,
                                                        animated)

        async def one() -> AsyncIterator[bytes]:
            yield data

        sha, size = await self.files.write_stream(one(), lambda n: None)
        try:
            await self.db.write(lambda conn: store.insert_thumbnail(
                conn, row.origin, row.media_id, width, height, method, animated, content_type, size, sha))
        except BaseException:
            await self._drop_unreferenced([sha])
            raise
        return content_type, sha

    # -- removal and counts ----------------------------------------------------------------------

    async def remove(self, mxc_uris: list[str]) -> int:
        """Remove media (retention: referenced by purged events); returns how many rows went."""
        keys = []
        for uri in mxc_uris:
            try:
                server, media_id = rules.parse_mxc(uri)
            except errors.MatrixError:
                continue
            keys.append((server, media_id))
        if not keys:
            return 0
        unreferenced = await self.db.write(lambda conn: store.delete_media(conn, keys))
        def remove_files() -> None:
            for sha in unreferenced:
                self.files.remove(sha)

        await asyncio.get_running_loop().run_in_executor(None, remove_files)
        return len(keys)

    async def _drop_unreferenced(self, hashes: list[str]) -> None:
        """A file written for a row that was then not committed: remove it unless a row names it."""
        for sha in hashes:
            try:
                if not await store.is_referenced(self.db, sha):
                    self.files.remove(sha)
            except Exception as exc:  # the original error says more; a leftover file is harmless
                log.warning("media: could not remove unreferenced file %s: %s", sha, exc)


def render_thumbnail(source: Path, width: int, height: int, method: str,
                     animated: bool = False) -> tuple[bytes, str]:
    """Decode, resize and encode one thumbnail (run in a thread). JPEG sources give JPEG, others
    PNG; with `animated`, an animated GIF/WebP/APNG within the caps gives an animation of its own
    format (else the static first frame). A file that is not a decodable image, or one over
    MAX_THUMBNAIL_PIXELS: 400 M_UNKNOWN."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_THUMBNAIL_PIXELS  # Pillow's bomb check: warns above, refuses at twice
    try:
        with Image.open(source) as im:
            if im.width * im.height > MAX_THUMBNAIL_PIXELS:
                raise errors.unknown("The image is too large to make a thumbnail of.")
            fmt = im.format
            size, box = rules.thumbnail_geometry(im.size, width, height, method)
            if animated and fmt in rules.ANIMATED_THUMBNAIL_TYPES and getattr(im, "is_animated", False):
                out_size = (box[2] - box[0], box[3] - box[1]) if box is not None else size
                frames = int(getattr(im, "n_frames", 1))
                if rules.animated_thumbnail_fits(frames, im.size, out_size):
                    return _render_animation(im, fmt, frames, size, box), rules.ANIMATED_THUMBNAIL_TYPES[fmt]
                im.seek(0)
            im.draft("RGB", size)  # JPEG: decode at a reduced scale where it can
            frame = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else "RGB")
            out = frame.resize(size, Image.Resampling.LANCZOS)
            if box is not None:
                out = out.crop(box)
            buf = io.BytesIO()
            if fmt == "JPEG":
                out.convert("RGB").save(buf, "JPEG", quality=80)
                return buf.getvalue(), "image/jpeg"
            out.save(buf, "PNG", optimize=False)
            return buf.getvalue(), "image/png"
    except errors.MatrixError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise errors.unknown(f"Cannot make a thumbnail: the content is not a readable image ({type(exc).__name__}).") \
            from None


def _render_animation(im: "PILImage", fmt: str, count: int, size: tuple[int, int],
                      box: tuple[int, int, int, int] | None) -> bytes:
    """Each of the `count` frames of an open animation scaled (and cropped) alike, saved in its own
    format with its frame durations and loop count (a GIF without a loop count still plays once)."""
    from PIL import Image

    frames = []
    durations = []
    for index in range(count):
        im.seek(index)
        frame = im.convert("RGBA").resize(size, Image.Resampling.LANCZOS)
        frames.append(frame.crop(box) if box is not None else frame)
        durations.append(int(im.info.get("duration") or 100))
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": durations}
    if "loop" in im.info:
        options["loop"] = im.info["loop"]
    if fmt == "GIF":
        options["disposal"] = 2  # each frame replaces the last (frames are whole, with transparency)
    elif fmt == "WEBP":
        options["quality"] = 80
    buf = io.BytesIO()
    frames[0].save(buf, fmt, **options)
    return buf.getvalue()
