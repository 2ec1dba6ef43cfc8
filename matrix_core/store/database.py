"""The database: SQLite in WAL mode, one writer thread with group commit, an aiosqlite reader.

Why one writer: SQLite allows one writer at a time anyway; funnelling every write through one
queue lets concurrent requests share a transaction (and its fsync), which is what makes
durability cheap on an SD card. Each queued write runs inside its own SAVEPOINT so one bad write
fails alone while the rest of the batch commits. Nothing resolves before COMMIT returns.

A full disk is not a bug: every write it refuses fails with `errors.StorageFull` (SQLite undoes
it whole), the writer goes on, and later writes succeed once space is back. `storage` says
whether the disk was last found full and writes the log about it (disk_space.py).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

import aiosqlite

from .. import errors
from . import event_index, relations, series
from .disk_space import FullDiskLog, means_full, no_room
from .migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]
# A queued write: the function, its future, and the monotonic time by which it must be committed.
_Write = tuple[WriteFn, "asyncio.Future[Any]", float]

MAX_BATCH = 512
# SQLite's page cache per connection (KiB; its default is 2000). The kernel's page cache already
# holds the file: a second copy per connection is resident memory a 512 MB Pi can spare less.
CACHE_KIB = 512


def configure_connection(conn: sqlite3.Connection, synchronous: str = "FULL") -> None:
    """Pragmas shared by every connection to the store (the hub's and the CLI's)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA secure_delete=OFF")  # freed pages (merged index runs) are not rewritten
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    event_index.register(conn)
    relations.register(conn)  # the relations index's backfill migration reads event JSON
    series.register(conn)  # so does the readings index's (store/series.py)


def open_sync(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A migrated autocommit connection, for the CLI and the writer thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure_connection(conn, synchronous)
    migrate(conn)
    return conn


class Database:
    """Owns the writer thread and the reader connection of one SQLite file.

    The writer is a plain thread fed by a thread-safe queue, so a commit (and its fsync) runs while
    the event loop goes on building the next events: batches pipeline instead of alternating.
    """

    def __init__(self, path: Path, synchronous: str = "FULL", commit_window: float = 0.0) -> None:
        self.path = path
        self.synchronous = synchronous
        # Seconds the writer waits for more writes before committing: 0 commits at once; a few
        # milliseconds let many devices share one fsync (fewer bytes written to an SD card per
        # reading), at that much added latency.
        self.commit_window = commit_window
        self._writer_conn: sqlite3.Connection | None = None
        self._hurry = False  # set by stop_delaying
        self._queue: queue.SimpleQueue[list[_Write] | None] = queue.SimpleQueue()
        self._pending: list[_Write] = []
        self._writer_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reader: aiosqlite.Connection | None = None
        self.batches_committed = 0
        self.writes_committed = 0
        self.storage = FullDiskLog(path)
        self.admin_contact = ""  # named in the storage-full answers (set by the Homeserver)

    async def open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._writer_conn = await loop.run_in_executor(None, open_sync, self.path, self.synchronous)
        self.reader = await aiosqlite.connect(self.path)
        await self.reader.execute("PRAGMA busy_timeout=10000")
        await self.reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        await self.reader.create_function("event_key", 1, event_index.event_key, deterministic=True)
        self._writer_thread = threading.Thread(target=self._writer_main, name="db-writer", daemon=True)
        self._writer_thread.start()

    async def close(self) -> None:
        """Commit everything already queued, then close."""
        if self._writer_thread is not None:
            self._flush()
            self._queue.put(None)
            thread, self._writer_thread = self._writer_thread, None
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
            self.storage.tick(force=True)  # what a full disk refused since its last line
        if self.reader is not None:
            await self.reader.close()
            self.reader = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    # -- writes -----------------------------------------------------------------------------

    def submit(self, fn: WriteFn, delay: float = 0.0) -> "asyncio.Future[Any]":
        """Queue `fn(conn)` for the next group commit; the future resolves after COMMIT.

        `delay`: seconds the commit may wait for more writes to share it. Only for writes nobody
        is waiting to see acknowledged (an MQTT QoS 0 publish): fewer, larger commits write fewer
        bytes to an SD card. Any write without a delay commits everything queued before it."""
        if self._writer_thread is None:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        # Handed to the writer once per pass of the event loop: one thread wake-up for all the
        # writes a burst of requests produced, instead of one per write.
        if not self._pending:
            loop.call_soon(self._flush)
        if self._hurry:
            delay = 0.0
        self._pending.append((fn, fut, time.monotonic() + max(delay, self.commit_window)))
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._queue.put(pending)

    def commit_soon(self) -> None:
        """Commit what is queued without waiting out any write's delay (a front end whose
        client is held back by writes that are only waiting to share a commit)."""
        if self._writer_thread is not None:  # not open (a start that failed): nothing waits
            self.submit(_nothing)

    def stop_delaying(self) -> None:
        """Shutting down: commit what waits now, and let no later write wait either (the
        front ends finish their in-flight work before the database closes)."""
        self._hurry = True
        self.commit_soon()

    async def write(self, fn: WriteFn) -> Any:
        return await self.submit(fn)

    def _writer_main(self) -> None:
        """The writer thread: take what is queued, commit it as one transaction, report back."""
        assert self._loop is not None
        loop = self._loop
        stopping = False
        nxt: Any = None
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = list(item)
            deadline = min(due for _, _, due in batch)
            while len(batch) < MAX_BATCH:
                try:
                    wait = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.extend(nxt)
                deadline = min(deadline, min(due for _, _, due in nxt))
            stored = False
            try:
                outcomes, stored = self._run_batch([fn for fn, _, _ in batch])
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                if self.is_full(exc):  # counted and logged once a minute by self.storage
                    outcomes = [(False, errors.storage_full(self.admin_contact)) for _ in batch]
                else:
                    log.error("group commit of %d writes failed: %s", len(batch), exc)
                    failure = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                    outcomes = [(False, failure)] * len(batch)
            else:
                self.batches_committed += 1
                self.writes_committed += len(batch)
            loop.call_soon_threadsafe(self._settle, batch, outcomes, stored)
            # Drop this batch before waiting for the next: up to MAX_BATCH writes' rows (a burst's
            # worth of event JSON) would otherwise stay resident for as long as the hub is idle.
            item = nxt = batch = outcomes = None  # type: ignore[assignment]

    def _run_batch(self, fns: list[WriteFn]) -> tuple[list[tuple[bool, Any]], bool]:
        """Outcomes per write, and whether a write that succeeded changed rows (so the disk had
        room: `storage` stops saying it is full)."""
        conn = self._writer_conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        changed = False
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                conn.execute("SAVEPOINT w")
                before = conn.total_changes
                try:
                    value = fn(conn)
                except Exception as exc:  # this write alone is undone
                    if self.is_full(exc):
                        if not conn.in_transaction:  # SQLite undid the whole transaction itself
                            raise
                        exc = errors.storage_full(self.admin_contact)
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE w")
                    outcomes.append((True, value))
                    changed = changed or conn.total_changes > before
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the error being raised says more
                    pass
            raise
        return outcomes, changed

    def is_full(self, exc: BaseException) -> bool:
        """Does this error from a write mean the disk holding the database is full?"""
        return means_full(exc, lambda: no_room(self.path))

    def _settle(self, batch: list[_Write], outcomes: list[tuple[bool, Any]], stored: bool) -> None:
        """On the event loop: settle the futures, then tell `storage` what the disk did."""
        _resolve(batch, outcomes)
        refused = sum(1 for (fn, _, _), (ok, value) in zip(batch, outcomes)
                      if not ok and isinstance(value, errors.StorageFull) and fn is not _nothing)
        if refused:
            self.storage.refused(refused)
        elif stored:
            self.storage.stored()

    # -- reads ------------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        assert self.reader is not None
        async with self.reader.execute(sql, params) as cur:
            return cast(list[tuple[Any, ...]], await cur.fetchall())  # no row_factory: rows are tuples

    async def fetchone(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        assert self.reader is not None
        async with self.reader.execute(sql, params) as cur:
            return cast("tuple[Any, ...] | None", await cur.fetchone())


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _resolve(batch: list[_Write], outcomes: list[tuple[bool, Any]]) -> None:
    """On the event loop: settle each write's future, in queue order."""
    for (_, fut, _), (ok, value) in zip(batch, outcomes):
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
