"""Following a shared log: a replica applies, in position order, what every replica appends.

Only for stores other processes append to (`store.shared`, PostgreSQL). The store's `read`
returns only final rows (below its commit horizon, see events/postgres_store.py): nothing can
ever be committed below a position already read, so reading `position > models.position`
page after page applies every event exactly once, in the same order on every replica, even
though positions have holes and transactions commit out of order.

The tailer is the only code that applies rows to the read models of a replica, its own
writer's included: `committed` (the writer's follower hook) wakes it and returns once the
commit's rows are applied. Own rows cannot be applied from memory at commit time: a transaction
with a smaller position may still be open on another replica, and it goes first.

The tailer never dies: any failure (database gone, connections terminated, an undecodable row)
is logged at most every 30 s, reported by `behind()` (so `/health` says 503 with the reason) and
retried every poll interval until it clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Protocol, Sequence

import msgspec

from events import codec
from events.store import Accepted, EventStore, Rejected
from projections.replay import PAGE, UndecodableLog
from service.writer import Follower, ReadModels

log = logging.getLogger(__name__)

# How often a failure to tail (database down, undecodable row) is logged while it lasts.
_LOG_EVERY_S = 30.0
# While a commit waits to become visible, read this often even without a NOTIFY (the
# transaction below it may roll back, which sends none). Every commit's NOTIFY wakes the tailer
# at once anyway; polling faster only adds reads that compete with the appends.
_WAITING_POLL_S = 0.05
# A commit not visible after this long, while the tailer applied nothing, is answered anyway:
# it is durable, and the tailer applies it when it can (the replica reports itself behind).
# While the tailer makes progress the answer waits: that is what slows a client down.
_VISIBLE_WAIT_S = 10.0


class SharedStore(EventStore, Protocol):
    """A store other processes append to too, which can wake us when they do."""

    @property
    def listening(self) -> bool: ...

    async def listen(self, on_append: Callable[[], None]) -> None: ...

    async def horizon(self) -> tuple[int, int]:
        """(the first position that is not final yet, how many committed rows wait above it)."""
        ...


class Health(msgspec.Struct, omit_defaults=True):
    """`GET /health`: `lag_s` only on a replica of a shared log, `reason` only when it is 503."""

    status: str
    position: int
    lag_s: float | None = None
    reason: str | None = None


def replica_health(position: int, follower: Follower) -> tuple[int, Health]:
    """The status code and body of `/health` for read models at `position`."""
    lag, reason = follower.behind()
    lag = None if lag is None else round(lag, 3)
    if reason is not None:
        return 503, Health("unavailable", position, lag, reason)
    return 200, Health("ok", position, lag)


class Tailer:
    """Keeps `models` up to date with a shared log: woken by the store, polling as a fallback.

    `max_lag_s` is how long the replica may go without having applied all of the final log
    before `behind()` reports it (default: four poll intervals, at least 2 s).
    """

    def __init__(self, store: SharedStore, models: ReadModels, poll_s: float,
                 on_apply: Callable[[int], None] | None = None, max_lag_s: float | None = None):
        self._store = store
        self._models = models
        self._poll_s = poll_s
        self._on_apply = on_apply
        self._max_lag_s = max_lag_s if max_lag_s is not None else max(2.0, 4 * poll_s)
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._last_complaint = 0.0
        # Health: why the last attempt failed; when the models last held the whole final log;
        # since when committed rows wait above a horizon that does not move.
        self._failure: str | None = None
        self._at_end = time.monotonic()
        self._horizon = (0, 0)
        self._stuck_since: float | None = None
        self._horizon_checked = 0.0

    async def start(self) -> None:
        """Subscribe, catch up with what was appended since replay, then follow the log."""
        await self._listen()
        await self._attempt()
        self._task = asyncio.create_task(self._run(), name="log-tailer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._waiters:
            if not future.done():
                future.set_result(None)

    async def catch_up(self) -> int:
        """Apply every final row after `models.position`; returns how many."""
        async with self._lock:
            applied = await self._catch_up()
        if applied and self._on_apply is not None:
            self._on_apply(self._models.position)
        self._release_waiters()
        return applied

    async def committed(self, results: Sequence[Accepted | Rejected]) -> None:
        """Return once the events of `results` (appended or found as duplicates) are applied."""
        targets = [r.last_position for r in results if isinstance(r, Accepted)]
        if not targets or max(targets) <= self._models.position:
            return
        # Usually enough: nothing older than this commit is still open. A failure is the
        # tailer's to report and retry.
        with contextlib.suppress(Exception):
            await self.catch_up()
        if max(targets) <= self._models.position:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((max(targets), future))
        self._wakeup.set()
        while True:
            before = self._models.position
            try:
                await asyncio.wait_for(asyncio.shield(future), _VISIBLE_WAIT_S)
                return
            except asyncio.TimeoutError:
                if self._models.position > before:
                    continue  # still applying a backlog: waiting is the backpressure
            log.warning("committed events up to position %d are not readable after %.0f s "
                        "without progress; answering anyway (they are durable): %s",
                        max(targets), _VISIBLE_WAIT_S,
                        self.behind()[1] or "the commit horizon did not pass")
            return

    def behind(self) -> tuple[float | None, str | None]:
        now = time.monotonic()
        lag = now - self._at_end
        if self._failure is not None:
            return lag, f"not following the log: {self._failure}"
        if self._stuck_since is not None and now - self._stuck_since > self._max_lag_s:
            position, waiting = self._horizon
            return lag, (f"behind the log: {waiting} committed events have waited "
                         f"{now - self._stuck_since:.1f} s above the commit horizon (position "
                         f"{position}); a transaction open on the database server holds it")
        if lag > self._max_lag_s:
            return lag, f"behind the log: it last held all of it {lag:.1f} s ago"
        return lag, None

    async def _catch_up(self) -> int:
        models = self._models
        applied = 0
        while True:
            rows = await self._store.read(models.position, PAGE)
            decoded = []
            for position, _event_id, payload, _recorded_at in rows:
                try:
                    decoded.append((position, codec.decode(payload)))
                except codec.UndecodableEvent as exc:
                    await models.apply_rows(decoded)
                    raise UndecodableLog(position, str(exc)) from exc
            await models.apply_rows(decoded)
            applied += len(decoded)
            if len(rows) < PAGE:
                self._at_end = time.monotonic()
                return applied

    async def _attempt(self) -> None:
        """One round: reconnect what is lost, catch up, look at the horizon. Never raises."""
        try:
            if not self._store.listening:
                await self._listen()
            await self.catch_up()
            if time.monotonic() - self._horizon_checked >= self._poll_s:
                await self._check_horizon()
            if self._failure is not None:
                log.warning("following the log again at position %d", self._models.position)
                self._failure = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the tailer must outlive any failure (UndecodableLog too)
            self._failure = f"{type(exc).__name__}: {exc}"
            self._complain("cannot follow the log (retrying every %.1f s): %s", self._poll_s,
                           self._failure)

    async def _check_horizon(self) -> None:
        """Notice a horizon held back: committed rows waiting above it, and it does not move."""
        now = time.monotonic()
        horizon = await self._store.horizon()
        position, waiting = horizon
        if not waiting or position != self._horizon[0]:
            self._stuck_since = None
        elif self._stuck_since is None:
            self._stuck_since = self._horizon_checked or now
        self._horizon, self._horizon_checked = horizon, now

    async def _run(self) -> None:
        while True:
            timeout = _WAITING_POLL_S if self._waiters else self._poll_s
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            await self._attempt()

    def _release_waiters(self) -> None:
        position = self._models.position
        waiting = []
        for target, future in self._waiters:
            if target <= position or future.done():
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._waiters = waiting

    async def _listen(self) -> None:
        try:
            await self._store.listen(self._wakeup.set)
        except Exception as exc:  # polling still works; the next round tries again
            self._complain("no LISTEN connection, polling every %.1f s: %s", self._poll_s, exc)

    def _complain(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_complaint >= _LOG_EVERY_S:
            self._last_complaint = now
            log.warning(message, *args)
