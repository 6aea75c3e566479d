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
import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb


class EngineError(Exception):
    """The engine failed (a bug or a damaged facts file); the message says what DuckDB said."""


class QueryTimeout(EngineError):
    """A read ran past its time limit and was stopped."""


class FactsDamaged(EngineError):
    """The facts file is damaged (DuckDB found a bad checksum or a short read). The engine
    leaves a marker beside the file (`rebuild_marker`), so the next start rebuilds the facts."""


_DAMAGE = ("Corrupt database file", "Could not read enough bytes", "checksum")


def rebuild_marker(path: str | Path) -> Path:
    return Path(f"{path}.rebuild")


def _translate(exc: duckdb.Error, path: str) -> EngineError:
    text = str(exc)
    if any(sign in text for sign in _DAMAGE):
        if path != ":memory:":
            rebuild_marker(path).touch()
        return FactsDamaged(f"the facts file {path} is damaged ({text}); it is rebuilt from "
                            "the log at the next start")
    return EngineError(text)


class Engine:
    """A DuckDB database file. Open with `Engine.open(path)`; `":memory:"` works for tests."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: str, readers: int,
                 config: dict | None = None):
        self._conn = conn
        self.path = path
        self._config = config or {}
        # Reads under way, and whether `compact` is swapping the file (see `_compact`).
        self._gate = threading.Condition()
        self._reading = 0
        self._swapping = False
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
        config = {
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
            }
        try:
            conn = duckdb.connect(path, config=config)
        except duckdb.Error as exc:
            raise FactsDamaged(f"cannot open the facts file {path}: {exc}") from exc
        return cls(conn, path, readers, config)

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
                raise _translate(exc, self.path) from exc
            raise

    async def compact(self) -> None:
        """Rewrite the file so that it holds only what the tables hold now.

        DuckDB does not overwrite the blocks that deleted rows freed: their strings stay in the
        file until reused. After an erasure the tables are copied into a fresh file, which then
        replaces this one (docs/event-log.md, "Erasure"). Writes wait meanwhile; reads go on
        during the copy and pause only for the swap.
        """
        if self.path == ":memory:":
            return
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(self._writer, self._compact))

    def _compact(self) -> None:
        fresh = self.path + ".compact"
        for leftover in (fresh, fresh + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        cur = self._write_cursor
        try:
            name = cur.execute("SELECT current_database()").fetchone()[0]
            quoted = fresh.replace("'", "''")
            cur.execute(f"ATTACH '{quoted}' AS compacted")
            try:
                cur.execute(f'COPY FROM DATABASE "{name.replace(chr(34), chr(34) * 2)}" '
                            "TO compacted")
            finally:
                cur.execute("DETACH compacted")
        except duckdb.Error as exc:
            raise EngineError(f"could not rewrite the facts file {self.path}: {exc}") from exc
        with self._gate:
            # No cursor of the old file may be open at the swap: wait for the reads under way;
            # new ones wait for the new file.
            self._swapping = True
            try:
                while self._reading:
                    self._gate.wait()
                self._write_cursor.close()
                self._conn.close()
                os.replace(fresh, self.path)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path + ".wal")
                self._conn = duckdb.connect(self.path, config=self._config)
                self._write_cursor = self._conn.cursor()
            finally:
                self._swapping = False
                self._gate.notify_all()

    # -- reading ---------------------------------------------------------------------------------

    async def read(self, sql: str, params: Sequence[Any] | None = None, *,
                   timeout: float | None = None) -> list[tuple]:
        """The rows of one query, run in a reader thread. Cancelling the caller (a client gone)
        or passing `timeout` seconds interrupts the query in the engine."""
        started = threading.Event()
        cursor = None

        def run():
            nonlocal cursor
            # Made in the reader thread: a compaction swaps the connection between two reads.
            with self._gate:
                while self._swapping:
                    self._gate.wait()
                self._reading += 1
                cursor = self._conn.cursor()
            started.set()
            try:
                return cursor.execute(sql, params).fetchall()
            finally:
                cursor.close()
                with self._gate:
                    self._reading -= 1
                    self._gate.notify_all()

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._readers, run)
        try:
            return await asyncio.wait_for(future, timeout)
        except (asyncio.CancelledError, TimeoutError) as exc:
            if started.is_set() and cursor is not None:
                cursor.interrupt()
            if isinstance(exc, TimeoutError):
                raise QueryTimeout(f"the question took longer than {timeout:g} s and was "
                                   "stopped") from None
            raise
        except duckdb.Error as exc:
            raise _translate(exc, self.path) from exc

    def read_sync(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        cursor = self._conn.cursor()
        try:
            return cursor.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise _translate(exc, self.path) from exc
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
