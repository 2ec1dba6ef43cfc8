"""The content repository's files: `DATA_DIR/media/ab/cd/<sha256>`, one file per distinct content.

Durable before acknowledged, as for events: bytes stream into a temporary file in `media/tmp/`
(hashed as they come, never held whole in memory), which is fsynced, renamed to its sha256 name
and its directory fsynced before the row naming it is committed and the upload answered. Any
failure on the way (a full disk, a client that goes away, a limit) removes the temporary file:
no partial file is left and nothing is acknowledged. A file already there under the same sha256
is the same content: the new copy is dropped (deduplication for free).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import AsyncIterator, Callable

from .. import errors
from .disk_space import means_full, no_room

SWEEP_GRACE_S = 3600.0
WRITE_BATCH = 1 << 20  # bytes gathered before one write() in a thread: bounded memory, few thread hops


class MediaFiles:
    def __init__(self, root: Path, admin_contact: str = "") -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.admin_contact = admin_contact

    def prepare(self) -> None:
        """Make the directories; drop temporary files a crash left (never acknowledged)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def write_stream(self, chunks: AsyncIterator[bytes], check: Callable[[int], None]) -> tuple[str, int]:
        """Store the bytes `chunks` yields; returns (sha256, size) once the file is durable.
        `check(size so far)` raises (a MatrixError) to refuse the upload part way."""
        loop = asyncio.get_running_loop()
        fd, tmp_name = await loop.run_in_executor(None, self._open_tmp)
        hasher = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_len = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                check(size)
                hasher.update(chunk)
                pending.append(chunk)
                pending_len += len(chunk)
                if pending_len >= WRITE_BATCH:
                    data, pending, pending_len = b"".join(pending), [], 0
                    await loop.run_in_executor(None, _write_all, fd, data)
                    del data
            if pending:
                data, pending = b"".join(pending), []
                await loop.run_in_executor(None, _write_all, fd, data)
                del data
            sha = hasher.hexdigest()
            await loop.run_in_executor(None, self._finish, fd, tmp_name, sha)
            fd = -1
            return sha, size
        except OSError as exc:
            if means_full(exc, lambda: no_room(self.root)):
                raise errors.storage_full(self.admin_contact) from None
            raise
        finally:
            if fd >= 0:
                os.close(fd)
                Path(tmp_name).unlink(missing_ok=True)

    def _open_tmp(self) -> tuple[int, str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        name = str(self.tmp / f"up-{os.getpid()}-{os.urandom(8).hex()}")
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name

    def _finish(self, fd: int, tmp_name: str, sha: str) -> None:
        """fsync the file, rename it to its sha256 name, fsync the directories it entered."""
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.path_for(sha)
        try:
            if final.exists():  # the same bytes are stored already
                Path(tmp_name).unlink(missing_ok=True)
                os.utime(final)  # fresh again: the sweep leaves young files alone (see sweep)
                return
            made = not final.parent.exists()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp_name, final)
            _fsync_dir(final.parent)
            if made:
                _fsync_dir(final.parent.parent)
                _fsync_dir(self.root)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def remove(self, sha256: str) -> None:
        """Delete a file no row names any more (synchronous: retention and the service's thread)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def sweep(self, referenced: set[str], older_than_s: float = SWEEP_GRACE_S) -> int:
        """Remove files no row names (retention removed their rows), except young ones: a file is
        renamed into place before its row commits, so a file younger than the grace period may
        be an upload about to be acknowledged (a re-upload of known bytes touches the file)."""
        import time

        removed = 0
        cutoff = time.time() - older_than_s
        for path in self.root.glob("??/??/*"):
            try:
                if path.name not in referenced and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed

    def usage(self) -> tuple[int, int]:
        """(files, bytes) under the media directory (for `status` when the database says less)."""
        count = total = 0
        for path in self.root.glob("??/??/*"):
            try:
                total += path.stat().st_size
                count += 1
            except OSError:
                pass
        return count, total


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_tree(source: Path, target: Path) -> int:
    """Copy the content-addressed files (not tmp/) from one media dir to another; returns the
    number copied. For backup and restore."""
    copied = 0
    for path in source.glob("??/??/*"):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        copied += 1
    return copied
