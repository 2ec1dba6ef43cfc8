"""`GET /_gateway/admin/v1/backup` (admins): the archive `matrix-gateway backup` writes, streamed
as a download (the Status page's button).

Not a routed JSON answer: the body is written as it is made. The archive is written by the
injected `hub_ops.write_backup` (gateway/ops/backup.py: an SQLite online-backup snapshot, so it
is consistent while the hub keeps committing) in a worker thread, into a bounded queue of chunks
the response drains: memory stays at `QUEUE_CHUNKS` chunks of tar/gzip output whatever the size of
the database. A client that goes away stops the writer (its next write raises) and the staged
snapshot is removed. One backup at a time: a second request waits its turn (a lock); past
`MAX_WAITING` waiting, 429 (each waiter would make a whole archive in turn, even for a client long
gone: a burst of requests must not queue a burst of full backups).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from aiohttp import web

from .. import errors

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

SEGMENTS = ["_gateway", "admin", "v1", "backup"]
QUEUE_CHUNKS = 16
_DONE = object()
MAX_WAITING = 2
_lock = asyncio.Lock()
_waiting = 0


class _Gone(Exception):
    """The download was abandoned: the writer thread stops here."""


class _QueueWriter:
    """A write-only binary file object whose writes go into a bounded queue (blocking when full)."""

    def __init__(self, chunks: "queue.Queue[Any]", cancelled: threading.Event) -> None:
        self.chunks, self.cancelled = chunks, cancelled

    def write(self, data: bytes) -> int:
        if data:
            chunk = bytes(data)
            while True:
                if self.cancelled.is_set():
                    raise _Gone()
                try:
                    self.chunks.put(chunk, timeout=0.5)
                    break
                except queue.Full:
                    continue
        return len(data)

    def flush(self) -> None:
        pass


def is_backup(segments: list[str]) -> bool:
    return segments == SEGMENTS


@contextlib.asynccontextmanager
async def _turn() -> AsyncIterator[None]:
    """This request's turn to make a backup, or 429 when too many wait already."""
    global _waiting
    if _lock.locked() and _waiting >= MAX_WAITING:
        raise errors.MatrixError(429, "M_LIMIT_EXCEEDED", "A backup is being made already: try again when it is done",
                                 retry_after_ms=5000)
    _waiting += 1
    try:
        await _lock.acquire()
    finally:
        _waiting -= 1
    try:
        yield
    finally:
        _lock.release()


async def handle(hs: Homeserver, request: web.Request, token: str | None, headers: dict[str, str]) -> web.StreamResponse:
    if request.method != "GET":
        raise errors.MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request")
    requester = await hs.accounts.authenticate(token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may download a backup")
    write_backup = hs.hub_ops.write_backup
    if write_backup is None:
        raise errors.not_found("This hub offers no backup download")
    async with _turn():
        if request.transport is None or request.transport.is_closing():  # gone while it waited: no archive
            log.info("backup download from %s abandoned by the client before it began", request.remote)
            return web.Response(status=503)  # never written (aiohttp drops it)
        chunks: queue.Queue[Any] = queue.Queue(QUEUE_CHUNKS)
        cancelled = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                write_backup(_QueueWriter(chunks, cancelled))
            except _Gone:
                pass
            except BaseException as exc:  # reported below (and logged), never a traceback to the client
                failure.append(exc)
            finally:
                while True:
                    try:
                        chunks.put(_DONE, timeout=0.5)
                        return
                    except queue.Full:
                        if cancelled.is_set():
                            return

        loop = asyncio.get_running_loop()
        worker = loop.run_in_executor(None, work)
        first = await loop.run_in_executor(None, chunks.get)
        if first is _DONE:  # nothing written: it failed before the archive began
            await worker
            log.error("backup download failed: %r", failure[0] if failure else "no data")
            raise errors.MatrixError(500, "M_UNKNOWN", f"Backup failed: {failure[0] if failure else 'no data'}")
        name = time.strftime("matrix-gateway-backup-%Y-%m-%d-%H%M%S.tar.gz", time.gmtime())
        response = web.StreamResponse(status=200, headers={
            **headers, "Content-Type": "application/gzip", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{name}"'})
        try:
            try:
                await response.prepare(request)  # raises too when the client has just gone
                chunk = first
                while chunk is not _DONE:
                    await response.write(chunk)
                    chunk = await loop.run_in_executor(None, chunks.get)
            except ConnectionError:  # the client went away: stop making it (finally), one line
                log.info("backup download from %s abandoned by the client", request.remote)
                return response
            if failure:  # cut the connection: the client sees a broken download, never a short "good" one
                log.error("backup download failed part-way: %r", failure[0])
                if request.transport is not None:
                    request.transport.abort()
            else:
                await response.write_eof()
        finally:
            cancelled.set()
            await worker
        return response
