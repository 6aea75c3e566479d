"""Session answers kept on disk: the encoded answer of every session, read in microseconds
where the engine takes tens of milliseconds (it plans and scans for the few rows of one).

A read model derived from the facts, like them rebuilt whenever in doubt: a SQLite file beside
them (`answers`, one row per session; `meta`, one row). What it holds is true of the facts
except for the sessions it was told changed (`touch`) and not yet given new answers (`put`):
those are dirty, and asked of the engine meanwhile. A row's body is None for a session with
requests pending, whose answer depends on the clock (the engine answers those).

`meta` says what the rows were computed on (`basis`: the facts' generation, the prices, the
answer policy), whether every session has its row (`complete`) and `watermark`, a position of
the facts at which no session was dirty. After a restart, the sessions changed after the
watermark are dirty again (the caller finds them in the facts), so a crash loses nothing.
Anything else (another basis, an erasure, new prices) deletes the file and starts over: no
answer outlives what it shows, not even in free pages.

Reads (`lookup`) run on the caller's thread (a primary-key probe); writes on the store's own.
Bodies are deflated with a preset dictionary (the answer's field names): JSON answers of ~1.5 KB
take ~250 bytes, and inflating one costs ~9 us (docs/ingest-performance.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import zlib
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (session_id TEXT PRIMARY KEY, body BLOB);
CREATE TABLE IF NOT EXISTS meta (basis TEXT NOT NULL, complete INTEGER NOT NULL,
                                 watermark INTEGER NOT NULL);
"""


class AnswerStore:
    """Encoded session answers on disk. Open with `await AnswerStore.open(path, basis)`;
    `basis()` says what answers computed now would be computed on (include `dictionary` in
    it: the bodies are deflated with it)."""

    def __init__(self, path: str | Path, basis: Callable[[], str], dictionary: bytes = b""):
        self.path = Path(path)
        self.basis = basis
        self.dictionary = dictionary
        # What the caller computes the answers for (its staleness limit and so on).
        self.policy: object = None
        self.complete = False
        self.watermark = 0
        # Bumped when everything is forgotten: a write begun before is not made.
        self.epoch = 0
        # Session -> the stamp of its last touch (a write clears only the touch it answered).
        self._dirty: dict[str, int] = {}
        self._stamp = 0
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="answers")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._forgetting = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, basis: Callable[[], str], dictionary: bytes = b""
                   ) -> "AnswerStore":
        """The answers at `path` if they were computed on `basis`, else an empty store."""
        store = cls(path, basis, dictionary)
        store.complete, store.watermark = await store._run(store._open_writer)
        store._open_reader()
        return store

    # ---- reads -------------------------------------------------------------------------------

    def serves(self, session_id: str) -> bool:
        """Whether `lookup(session_id)` tells the truth now."""
        return self.complete and self._reader is not None and session_id not in self._dirty

    def lookup(self, session_id: str) -> tuple[bool, bytes | None]:
        """(whether the session has a row, its body: None while requests are pending)."""
        row = self._reader.execute("SELECT body FROM answers WHERE session_id = ?",
                                   (session_id,)).fetchone()
        if row is None:
            return False, None
        if row[0] is None:
            return True, None
        return True, zlib.decompressobj(zdict=self.dictionary).decompress(row[0])

    # ---- what changed ------------------------------------------------------------------------

    def touch(self, sessions: Iterable[str]) -> None:
        """These sessions changed: their rows no longer hold until `put` answers them."""
        self._stamp += 1
        stamp, dirty = self._stamp, self._dirty
        for session in sessions:
            dirty[session] = stamp

    @property
    def stamp(self) -> int:
        """The stamp of the last touch (see `finish`)."""
        return self._stamp

    @property
    def dirty(self) -> int:
        """How many sessions wait for new answers."""
        return len(self._dirty)

    def dirty_batch(self, limit: int) -> dict[str, int]:
        """Up to `limit` dirty sessions (oldest first) with their stamps, for `put`."""
        batch = {}
        for session, stamp in self._dirty.items():
            if len(batch) >= limit:
                break
            batch[session] = stamp
        return batch

    # ---- writes ------------------------------------------------------------------------------

    async def put(self, epoch: int, answered: dict[str, int],
                  encode: Callable[[], tuple[dict[str, bytes | None], list[str]]],
                  position: int) -> None:
        """Write the answers of the `answered` sessions (taken from `dirty_batch`), computed on
        the facts after each one's touch: `encode()` (run on the store's thread) returns the
        bodies and the sessions that have none any more. `position` is the facts' position
        now: the watermark, if nothing else is dirty."""
        clean = all(self._dirty.get(s) == stamp for s, stamp in answered.items()) and \
            len(self._dirty) == len(answered)

        def write():
            if epoch != self.epoch:
                return
            bodies, gone = encode()
            with self._writer:
                self._writer.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                                         [(s, None if b is None else self._deflate(b))
                                          for s, b in bodies.items()])
                self._writer.executemany("DELETE FROM answers WHERE session_id = ?",
                                         [(s,) for s in gone])
                if clean and self.complete:
                    self._writer.execute("UPDATE meta SET watermark = ?", (position,))

        await self._run(write)
        if epoch != self.epoch:
            return
        self._settle(answered)
        if clean and self.complete:
            self.watermark = position

    async def finish(self, epoch: int, started_stamp: int, started_at: int, position: int
                     ) -> None:
        """Every session has its row (a build that began at facts position `started_at`,
        after touch `started_stamp`, has written them all): from now on the rows serve."""
        stale = {s: st for s, st in self._dirty.items() if st <= started_stamp}
        watermark = position if len(stale) == len(self._dirty) else started_at

        def write():
            if epoch == self.epoch:
                with self._writer:
                    self._writer.execute("UPDATE meta SET complete = 1, watermark = ?",
                                         (watermark,))

        await self._run(write)
        if epoch == self.epoch:
            self._settle(stale)
            self.complete, self.watermark = True, watermark

    async def forget_all(self) -> None:
        """Anything may have changed: the file is deleted and made anew, empty."""
        self.complete = False
        self.epoch += 1
        self._dirty.clear()
        async with self._forgetting:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            await self._run(self._recreate)
            self._open_reader()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(self._close_writer)
        self._thread.shutdown()

    # ---- the file ----------------------------------------------------------------------------

    def _deflate(self, body: bytes) -> bytes:
        deflate = zlib.compressobj(6, zdict=self.dictionary)
        return deflate.compress(body) + deflate.flush()

    def _settle(self, answered: dict[str, int]) -> None:
        dirty = self._dirty
        for session, stamp in answered.items():
            if dirty.get(session) == stamp:
                del dirty[session]

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # A lost write is found again at the next start (the watermark), so no fsync per write.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open_writer(self) -> tuple[bool, int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA)
            row = self._writer.execute("SELECT basis, complete, watermark FROM meta").fetchone()
        except sqlite3.DatabaseError:  # not a database, or damaged: it is only derived
            row = None
        if row is None or row[0] != self.basis():
            self._recreate()
            return False, 0
        return bool(row[1]), row[2]

    def _open_reader(self) -> None:
        self._reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       check_same_thread=False)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _recreate(self) -> None:
        self._close_writer()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        with self._writer:
            self._writer.execute("INSERT INTO meta VALUES (?, 0, 0)", (self.basis(),))
