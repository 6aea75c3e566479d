"""The single writer: group commit, then live projection updates.

Requests hand their prepared batches to `Writer.submit` and wait. One task drains everything
queued, commits it in one transaction, hands the results to its `Follower`, which brings the
read models up to the new events, and only then answers each request: an acknowledged event is
durable and visible. The next group commits while the follower works; the groups committed
meanwhile go to the follower together, in commit order, so the read models pay their
per-apply cost (a DuckDB transaction of several statements, whatever its size) once for all of
them instead of once each (docs/ingest-performance.md). One path for every backend; the
follower is what differs:

- a log only this process appends to (SQLite): `ApplyOwnRows` applies the committed rows
  from memory, in position order;
- a log other processes append to too (`store.shared`, PostgreSQL): `service.tailer.Tailer`,
  which applies the log in position order, whoever appended, and returns once it has applied
  this commit's rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable, Protocol, Sequence

from events.records import Record
from events.store import (Accepted, Erasure, EventStore, NewEvent, Rejected, StoreError,
                          StoreUnavailable)

log = logging.getLogger(__name__)

# Upper bound of events in one transaction: keeps one commit's latency bounded.
MAX_GROUP_EVENTS = 50_000
# Groups committed but not answered yet: the next group commits while the follower brings the
# read models up to the previous ones (on a shared log that waits for older transactions of
# other replicas to end), in order.
MAX_UNANSWERED_GROUPS = 4


class Overloaded(Exception):
    """The queue of pending events is full; the client should retry later."""


class ReadModels(Protocol):
    """What the write path needs of the read models: where they are, and how to extend them."""

    position: int  # the last log position applied

    async def apply_rows(self, rows: Sequence[tuple[int, Record]]) -> None:
        """Apply `(position, record)` rows, in increasing position order, after `position`."""
        ...


class Follower(Protocol):
    """What brings the read models up to a commit: the writer's only way to them."""

    async def committed(self, results: Sequence[Accepted | Rejected]) -> None:
        """Return once the read models hold every event of the accepted `results`."""
        ...

    def behind(self) -> tuple[float | None, str | None]:
        """(seconds since the read models last held all of the log, or None when this process
        is the log's only writer; why this replica is not following, or None)."""
        ...


class ApplyOwnRows:
    """The follower of a log nobody else appends to: the commit's rows are the next ones."""

    def __init__(self, models: ReadModels):
        self._models = models

    async def committed(self, results: Sequence[Accepted | Rejected]) -> None:
        await self._models.apply_rows([(position, event.record) for result in results
                                       if isinstance(result, Accepted)
                                       for position, event in result.rows])

    def behind(self) -> tuple[float | None, str | None]:
        return None, None


class Writer:
    def __init__(
        self,
        store: EventStore,
        models: ReadModels,
        max_pending: int,
        on_commit: Callable[[int], None] | None = None,
        follower: Follower | None = None,
    ):
        self._store = store
        self._models = models
        self._max_pending = max_pending
        self._on_commit = on_commit
        self.follower = follower if follower is not None else ApplyOwnRows(models)
        self._queue: deque[tuple[Sequence[NewEvent], asyncio.Future]] = deque()
        self._pending_events = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.appended = 0
        # Committed groups the follower has not taken yet, in commit order; and how many
        # committed groups are not answered yet (those plus the ones being applied).
        self._committed: deque[tuple[list[tuple[Sequence[NewEvent], asyncio.Future]],
                                     list[Accepted | Rejected]]] = deque()
        self._unanswered = 0
        self._progress = asyncio.Condition()
        self._follow_wakeup = asyncio.Event()
        self._follow_task: asyncio.Task | None = None
        # Done when the append under way (if any) has returned.
        self._appending: asyncio.Future | None = None
        # Held by each group's append: `erase` runs between two of them.
        self._turn = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-writer")
        self._follow_task = asyncio.create_task(self._follow(), name="event-follower")

    async def submit(self, batch: Sequence[NewEvent]) -> Accepted | Rejected:
        """Queue one request's events and wait for their commit."""
        if self._closing:
            raise StoreUnavailable("the service is shutting down")
        if self._pending_events and self._pending_events + len(batch) > self._max_pending:
            raise Overloaded(f"{self._pending_events} events are waiting to be written")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._pending_events += len(batch)
        self._wakeup.set()
        return await future

    async def erase(self, erase: Callable[[], Awaitable[Erasure]]) -> Erasure:
        """Run `erase()` (a store erasure) between two group commits, then bring the read
        models past its tombstone, as after a commit: once this returns, no answer of this
        replica shows the erased events."""
        async with self._turn:
            await self._answered(0)  # its tombstone comes after every committed group
            erasure = await erase()
            if erasure.rows:
                await self.follower.committed([Accepted(1, 0, erasure.position, erasure.rows)])
        if erasure.rows and self._on_commit is not None:
            self._on_commit(self._models.position)
        return erasure

    async def close(self) -> None:
        """Stop taking new batches, finish the queued ones, stop the task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self._answered(0)
        self._follow_wakeup.set()
        if self._follow_task is not None:
            await self._follow_task

    async def _answered(self, at_most: int) -> None:
        """Wait until at most `at_most` committed groups are still to be answered."""
        if self._unanswered > at_most:
            async with self._progress:
                await self._progress.wait_for(lambda: self._unanswered <= at_most)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = self._take_group()
            try:
                async with self._turn:
                    await self._commit(group)
            except Exception:  # never let the writer die: every request gets an answer
                log.exception("writer failed on a group of %d batches", len(group))
                for _, future in group:
                    if not future.done():
                        future.set_exception(StoreError("internal error while writing"))

    def _take_group(self) -> list[tuple[Sequence[NewEvent], asyncio.Future]]:
        group, size = [], 0
        while self._queue and (not group or size + len(self._queue[0][0]) <= MAX_GROUP_EVENTS):
            batch, future = self._queue.popleft()
            self._pending_events -= len(batch)
            if future.cancelled():
                continue  # the client went away before we started; nothing was written
            group.append((batch, future))
            size += len(batch)
        return group

    async def _commit(self, group: list[tuple[Sequence[NewEvent], asyncio.Future]]) -> None:
        if not group:
            return
        self._appending = appending = asyncio.get_running_loop().create_future()
        try:
            results = await self._store.append([batch for batch, _ in group])
        except StoreUnavailable as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        except StoreError:
            if len(group) == 1:
                raise
            # Something in the group broke the transaction: isolate it, one batch at a time.
            for item in group:
                await self._commit([item])
            return
        finally:
            appending.set_result(None)
        self._committed.append((group, results))
        self._unanswered += 1
        self._follow_wakeup.set()
        await self._answered(MAX_UNANSWERED_GROUPS - 1)

    async def _follow(self) -> None:
        """Bring the read models up to the committed groups, then answer their requests: all
        the groups committed since the last round in one call of the follower, in commit
        order, so the read models see positions in order and every answer follows its apply."""
        while True:
            if not self._committed:
                if self._closing and self._task is not None and self._task.done():
                    return
                self._follow_wakeup.clear()
                await self._follow_wakeup.wait()
                continue
            if self._appending is not None and not self._appending.done():
                # A group is being committed: it joins this round. Taking only what is there
                # would apply a group of one event alone, and the ones after it a round later.
                await self._appending
            groups = list(self._committed)
            self._committed.clear()
            try:
                await self.follower.committed([r for _, results in groups for r in results])
            except Exception:
                log.exception("committed events could not be applied to the read models")
            for group, results in groups:
                self.appended += sum(r.appended for r in results if isinstance(r, Accepted))
                for (_, future), result in zip(group, results):
                    if not future.done():
                        future.set_result(result)
            self._unanswered -= len(groups)
            async with self._progress:
                self._progress.notify_all()
            if self._on_commit is not None:
                try:
                    self._on_commit(self._models.position)
                except Exception:
                    log.exception("an after-commit hook failed")
