"""The one module that talks to the query engine (DuckDB): a file of facts, one writer, readers.

DuckDB runs each statement on its own threads and lets go of the GIL while it does, so the
event loop keeps serving while a query or an apply runs. Writes go through one thread (one
connection, so its temporary tables and transaction stay its own); reads each get a fresh cursor
in a small pool of threads, see the last committed state (MVCC), and can be interrupted: a
question whose client went away, or that runs past its time limit, stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb


class EngineError(Exception):
    """The engine failed (a bug or a damaged facts file); the message says what DuckDB said."""


class QueryTimeout(EngineError):
    """A read ran past its time limit and was stopped."""


class Engine:
    """A DuckDB database file. Open with `Engine.open(path)`; `":memory:"` works for tests."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: str, readers: int):
        self._conn = conn
        self.path = path
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="facts-write")
        self._readers = concurrent.futures.ThreadPoolExecutor(readers,
                                                              thread_name_prefix="facts-read")
        self._write_cursor = conn.cursor()

    @classmethod
    def open(cls, path: str | Path, *, memory_limit: str = "256MB", threads: int = 2,
             readers: int = 4) -> "Engine":
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = duckdb.connect(path, config={
                "memory_limit": memory_limit,
                "threads": threads,
                # Facts are rebuilt from the log whatever happens, so no extension, no network.
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "preserve_insertion_order": False,
                # Facts are derived from the log: a commit need not wait for the disk. A killed
                # process loses nothing (the OS has the writes); after an OS crash a damaged
                # file is rebuilt from the log (`Engine.open` callers, see service.app).
                "fsync_mode": "NONE",
            })
        except duckdb.Error as exc:
            raise EngineError(f"cannot open the facts file {path}: {exc}") from exc
        return cls(conn, path, readers)

    # -- writing ---------------------------------------------------------------------------------

    async def write(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run `fn(connection)` inside one transaction in the writer thread; commit, or roll back
        and raise `EngineError`."""
        loop = asyncio.get_running_loop()
        # Shielded: once a write has started, its caller's cancellation must not leave the
        # writer's connection mid-transaction.
        return await asyncio.shield(loop.run_in_executor(self._writer, self._transaction, fn))

    def write_sync(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """`write` for callers without an event loop (the replay command, tests)."""
        return self._writer.submit(self._transaction, fn).result()

    def _transaction(self, fn):
        cur = self._write_cursor
        cur.execute("BEGIN TRANSACTION")
        try:
            result = fn(cur)
            cur.execute("COMMIT")
            return result
        except BaseException as exc:
            try:
                cur.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if isinstance(exc, duckdb.Error):
                raise EngineError(str(exc)) from exc
            raise

    # -- reading ---------------------------------------------------------------------------------

    async def read(self, sql: str, params: Sequence[Any] | None = None, *,
                   timeout: float | None = None) -> list[tuple]:
        """The rows of one query, run in a reader thread. Cancelling the caller (a client gone)
        or passing `timeout` seconds interrupts the query in the engine."""
        cursor = self._conn.cursor()
        started = threading.Event()

        def run():
            started.set()
            try:
                return cursor.execute(sql, params).fetchall()
            finally:
                cursor.close()

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._readers, run)
        try:
            return await asyncio.wait_for(future, timeout)
        except (asyncio.CancelledError, TimeoutError) as exc:
            if started.is_set():
                cursor.interrupt()
            if isinstance(exc, TimeoutError):
                raise QueryTimeout(f"the question took longer than {timeout:g} s and was "
                                   "stopped") from None
            raise
        except duckdb.Error as exc:
            raise EngineError(str(exc)) from exc

    def read_sync(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        cursor = self._conn.cursor()
        try:
            return cursor.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise EngineError(str(exc)) from exc
        finally:
            cursor.close()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True, cancel_futures=True)
        try:
            self._write_cursor.execute("CHECKPOINT")
        except duckdb.Error:
            pass  # a checkpoint is an optimisation: the WAL replays at the next open
        self._write_cursor.close()
        self._conn.close()
