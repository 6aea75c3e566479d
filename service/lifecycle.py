"""Data lifecycle: erase a session's or a user's requests for good, and a retention period.

The request facts say which log positions hold a session's or a user's events
(`projections.query.positions_of`); the store deletes those rows and appends an `Erased`
tombstone (`EventStore.erase`) between two group commits (`Writer.erase`); the read models of
every replica apply the tombstone like any event (README, "Data lifecycle").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from events.erasure import chunks
from events.records import erasure_key
from events.store import Accepted, EventStore
from projections.facts import Facts
from projections.query import positions_of
from service.writer import Writer

log = logging.getLogger(__name__)


class Lifecycle:
    """Erasure and the retention sweep, over one store, its facts and its writer."""

    def __init__(self, store: EventStore, facts: Facts, writer: Writer,
                 retention_s: float = 0.0, sweep_s: float = 3600.0):
        self._store = store
        self._facts = facts
        self._writer = writer
        self.retention_s = retention_s
        self._sweep_s = sweep_s
        self._task: asyncio.Task | None = None
        # One erasure at a time: two would only race to delete the same rows.
        self._one = asyncio.Lock()

    async def erase_session(self, session_id: str) -> int:
        """Erase every event of the session's requests; returns how many went (0: unknown)."""
        return await self._erase("session", erasure_key("session", session_id),
                                 session_id=session_id)

    async def erase_user(self, user_id: str) -> int:
        """Erase every event of every request any of whose events names `user_id`."""
        return await self._erase("user", erasure_key("user", user_id), user_id=user_id)

    async def sweep(self, now_us: int | None = None) -> int:
        """Erase every request older than the retention (by event time); 0 when it is off."""
        if not self.retention_s:
            return 0
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        return await self._erase("retention", "",
                                 older_than_us=now_us - int(self.retention_s * 1_000_000))

    async def _erase(self, scope: str, key_hash: str, **which) -> int:
        # Shielded: a client that goes away must not stop an erasure between its commit and
        # the read models' applying its tombstone.
        return await asyncio.shield(self._erase_now(scope, key_hash, **which))

    async def _erase_now(self, scope: str, key_hash: str, **which) -> int:
        async with self._one:
            # First hold every event committed so far (other replicas' too), so none is missed.
            end = await self._store.last_position()
            await self._writer.follower.committed([Accepted(0, 0, end, [])])
            positions = await positions_of(self._facts, **which)
            erased = 0
            for chunk in chunks(positions):
                erasure = await self._writer.erase(
                    lambda chunk=chunk: self._store.erase(chunk, scope, key_hash))
                erased += erasure.count
            return erased

    async def start(self) -> None:
        """With a retention: sweep now, then every `sweep_s` seconds in the background."""
        if not self.retention_s:
            return
        await self._sweep_logged()
        self._task = asyncio.create_task(self._sweep_forever(), name="retention-sweep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            await self._sweep_logged()

    async def _sweep_logged(self) -> None:
        try:
            erased = await self.sweep()
        except Exception:  # the next sweep retries; the service keeps serving
            log.exception("the retention sweep failed")
            return
        if erased:
            log.info("retention: erased %d events older than %g s", erased, self.retention_s)
