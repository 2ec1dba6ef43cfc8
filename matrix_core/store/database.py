"""The database: SQLite in WAL mode, one writer thread with group commit, an aiosqlite reader.

Why one writer: SQLite allows one writer at a time anyway; funnelling every write through one
queue lets concurrent requests share a transaction (and its fsync), which is what makes
durability cheap on an SD card. Each queued write runs inside its own SAVEPOINT so one bad write
fails alone while the rest of the batch commits. Nothing resolves before COMMIT returns.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import aiosqlite

from .migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]
WriteBatch = list[tuple[str, Iterable[tuple[Any, ...]]]]

MAX_BATCH = 512


def configure_connection(conn: sqlite3.Connection, synchronous: str = "FULL") -> None:
    """Pragmas shared by every connection to the store (the hub's and the CLI's)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")


def open_sync(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A migrated autocommit connection, for the CLI and the writer thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure_connection(conn, synchronous)
    migrate(conn)
    return conn


class Database:
    """Owns the writer thread and the reader connection of one SQLite file."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer_conn: sqlite3.Connection | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="db-writer")
        self._queue: asyncio.Queue[tuple[WriteFn, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self.reader: aiosqlite.Connection | None = None
        self.batches_committed = 0
        self.writes_committed = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer_conn = await loop.run_in_executor(self._executor, open_sync, self.path, self.synchronous)
        self.reader = await aiosqlite.connect(self.path)
        await self.reader.execute("PRAGMA busy_timeout=10000")
        self._writer_task = asyncio.create_task(self._writer_loop(), name="db-writer")

    async def close(self) -> None:
        """Commit everything already queued, then close."""
        if self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
            self._writer_task = None
        if self.reader is not None:
            await self.reader.close()
            self.reader = None
        if self._writer_conn is not None:
            conn = self._writer_conn
            self._writer_conn = None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    # -- writes -----------------------------------------------------------------------------

    def submit(self, fn: WriteFn) -> "asyncio.Future[Any]":
        """Queue `fn(conn)` for the next group commit; the future resolves after COMMIT."""
        if self._writer_task is None:
            raise RuntimeError("database is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, fut))
        return fut

    async def write(self, fn: WriteFn) -> Any:
        return await self.submit(fn)

    async def execute_write(self, batch: WriteBatch) -> None:
        """Run (sql, rows) pairs with executemany inside one queued write."""

        def run(conn: sqlite3.Connection) -> None:
            for sql, rows in batch:
                conn.executemany(sql, rows)

        await self.submit(run)

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            fns = [fn for fn, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, fns)
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                log.error("group commit of %d writes failed: %s", len(batch), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                continue
            self.batches_committed += 1
            self.writes_committed += len(batch)
            for (_, fut), (ok, value) in zip(batch, outcomes):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(self, fns: list[WriteFn]) -> list[tuple[bool, Any]]:
        conn = self._writer_conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                conn.execute("SAVEPOINT w")
                try:
                    value = fn(conn)
                except Exception as exc:  # this write alone is undone
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE w")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    # -- reads ------------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        assert self.reader is not None
        async with self.reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        assert self.reader is not None
        async with self.reader.execute(sql, params) as cur:
            return await cur.fetchone()
