"""Tailing a shared log: a replica applies what the other replicas append.

Only for stores shared by several processes (PostgreSQL); the single-process SQLite service has
no tailer and its writer applies its own rows directly.

The invariant: `ReadModels.apply` sees every position once, in increasing order, with no gaps.
Two tasks apply rows here, the tailer (rows read from the log) and the writer (its own rows,
from memory), so both go through one lock and skip what is already applied:

- `catch_up` reads the log after `models.position` and applies it;
- `apply_own`, called by the writer right after its commit, first catches up (the rows other
  replicas committed just before ours, e.g. 8-9 when we committed 10-12 and had applied 7),
  then applies its own rows that the tailer has not applied yet.

Appends are serialised in the database, so rows commit in position order and reading
`position > n` never skips a late commit. A gap would mean a writer broke that rule: the tailer
then stops before it and waits rather than apply out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Protocol, Sequence, runtime_checkable

from events import codec
from events.store import Accepted, EventStore, Rejected, StoreError
from projections.replay import PAGE, ReadModels, UndecodableLog

log = logging.getLogger(__name__)

# How often a failure to tail (database down, undecodable row) is logged while it lasts.
_LOG_EVERY_S = 30.0


@runtime_checkable
class SharedStore(EventStore, Protocol):
    """A store other processes append to too, which can wake us when they do."""

    @property
    def listening(self) -> bool: ...

    async def listen(self, on_append: Callable[[], None]) -> None: ...


class Tailer:
    """Keeps `models` up to date with a shared log: woken by the store, polling as a fallback."""

    def __init__(self, store: SharedStore, models: ReadModels, poll_s: float,
                 on_apply: Callable[[int], None] | None = None):
        self._store = store
        self._models = models
        self._poll_s = poll_s
        self._on_apply = on_apply
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_complaint = 0.0

    async def start(self) -> None:
        """Subscribe, catch up with what was appended since replay, then follow the log."""
        await self._listen()
        await self.catch_up()
        self._task = asyncio.create_task(self._run(), name="log-tailer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def catch_up(self) -> int:
        """Apply every committed row after `models.position`; returns how many."""
        async with self._lock:
            applied = await self._catch_up()
        if applied and self._on_apply is not None:
            self._on_apply(self._models.position)
        return applied

    async def apply_own(self, results: Sequence[Accepted | Rejected]) -> None:
        """Apply the rows this replica just committed, after any foreign rows before them."""
        own = [row for result in results if isinstance(result, Accepted) for row in result.rows]
        if not own:
            return
        async with self._lock:
            models = self._models
            if models.position < own[0][0] - 1:
                await self._catch_up()
            if models.position < own[0][0] - 1:
                # Cannot happen while appends are serialised; the tailer applies them later.
                raise StoreError(f"rows before position {own[0][0]} are not readable yet")
            await models.apply_rows([(position, event.record) for position, event in own
                                     if position > models.position])

    async def _catch_up(self) -> int:
        models = self._models
        applied = 0
        while True:
            rows = await self._store.read(models.position, PAGE)
            decoded = []
            for position, _event_id, payload, _recorded_at in rows:
                expected = (decoded[-1][0] if decoded else models.position) + 1
                if position != expected:
                    self._complain("gap in the log: position %d follows %d; waiting for it",
                                   position, expected - 1)
                    await models.apply_rows(decoded)
                    return applied + len(decoded)
                try:
                    decoded.append((position, codec.decode(payload)))
                except codec.UndecodableEvent as exc:
                    await models.apply_rows(decoded)
                    raise UndecodableLog(position, str(exc)) from exc
            await models.apply_rows(decoded)
            applied += len(decoded)
            if len(rows) < PAGE:
                return applied

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_s)
            self._wakeup.clear()
            try:
                if not self._store.listening:
                    await self._listen()
                await self.catch_up()
            except (StoreError, UndecodableLog) as exc:
                self._complain("cannot tail the log (retrying every %.1f s): %s", self._poll_s, exc)

    async def _listen(self) -> None:
        try:
            await self._store.listen(self._wakeup.set)
        except StoreError as exc:
            self._complain("no LISTEN connection, polling every %.1f s: %s", self._poll_s, exc)

    def _complain(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_complaint >= _LOG_EVERY_S:
            self._last_complaint = now
            log.warning(message, *args)
