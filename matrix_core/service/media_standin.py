"""LEAD: replace with service/media.py at merge (issue 15's media repository, `hs.media`).

A minimal stand-in with exactly the interface the device front ends use
(matrix_core/device_media.py `MediaRepository`): bytes are files under the data dir's media/
named by their sha256, written atomically (temp file, fsync, rename, fsync of the directory)
before the mxc URI is returned; a small JSON record per media id keeps the content type.
No quotas, no HTTP, no retention: the real service has those.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import secrets
from pathlib import Path

from .. import errors

_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


class MediaStandIn:
    def __init__(self, root: Path, server_name: str, max_upload_size: int = 50 * 1024 * 1024,
                 admin_contact: str = "") -> None:
        self.root = root
        self.server_name = server_name
        self.max_upload_size = max_upload_size
        self.admin_contact = admin_contact

    async def store_bytes(self, user_id: str, data: bytes, content_type: str, filename: str | None) -> str:
        if len(data) > self.max_upload_size:
            raise errors.too_large(f"Media over the {self.max_upload_size} byte upload limit.")
        media_id = secrets.token_urlsafe(18)
        try:
            await asyncio.to_thread(self._write, media_id, data, content_type)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.storage_full(self.admin_contact) from None
            raise
        return f"mxc://{self.server_name}/{media_id}"

    async def read_bytes(self, mxc_uri: str) -> tuple[bytes, str] | None:
        prefix = f"mxc://{self.server_name}/"
        media_id = mxc_uri[len(prefix):] if mxc_uri.startswith(prefix) else ""
        if not _MEDIA_ID.match(media_id):
            return None
        return await asyncio.to_thread(self._read, media_id)

    def _write(self, media_id: str, data: bytes, content_type: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256(data).hexdigest()
        _atomic_write(self.root / sha, data)
        record = json.dumps({"sha256": sha, "content_type": content_type}).encode()
        _atomic_write(self.root / f"{media_id}.json", record)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, media_id: str) -> tuple[bytes, str] | None:
        try:
            record = json.loads((self.root / f"{media_id}.json").read_bytes())
            return (self.root / record["sha256"]).read_bytes(), record["content_type"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a crash or a full disk leaves the old file or none, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
