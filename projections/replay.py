"""Replay: bring the request facts up to the end of the log.

`catch_up` is the one function that server startup and `python -m service replay` use: it
checks that the persisted facts belong to this log (else rebuilds them), then applies the log
after their position, a page per engine transaction. Only the tail is applied at startup, so
startup time does not grow with the history.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, NamedTuple

from events.codec import UndecodableEvent, decode
from events.store import EventStore
from projections.facts import Facts

PAGE = 50_000


class ReplayReport(NamedTuple):
    events: int
    seconds: float
    skipped: list[int]
    rebuilt: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class UndecodableLog(Exception):
    """A row of the log that cannot be decoded; names its position."""

    def __init__(self, position: int, reason: str):
        super().__init__(
            f"the event at position {position} cannot be decoded ({reason}); nothing was "
            "changed. Run `python -m service replay --skip-undecodable` to see what would be "
            "skipped, or fix the code that reads it."
        )
        self.position = position


class UnfoldableLog(UndecodableLog):
    """A page that decodes but the facts cannot take: a bug in the apply step."""

    def __init__(self, position: int, reason: str):
        Exception.__init__(
            self,
            f"the events after position {position} decode but cannot be applied to the "
            f"request facts ({reason}); nothing after that position was changed. This is a bug "
            "in the read side: report it with this message.",
        )
        self.position = position


async def why_rebuild(store: EventStore, facts: Facts) -> str | None:
    """Why the persisted facts cannot be continued with this log, or None when they can."""
    if facts.position == 0:
        return None
    last = await store.last_position()
    if facts.position > last:
        return f"they reflect position {facts.position}, past the end of the log ({last})"
    rows = await store.read(facts.position - 1, 1)
    record = None
    if rows and rows[0][0] == facts.position:
        try:
            record = decode(rows[0][2])
        except UndecodableEvent:
            record = None
    if not await facts.matches(record):
        return f"they are of another log (the event at position {facts.position} differs)"
    return None


async def catch_up(
    store: EventStore,
    facts: Facts,
    *,
    rebuild: bool = False,
    skip_undecodable: bool = False,
    on_progress: Callable[[int], None] | None = None,
    page: int = PAGE,
) -> ReplayReport:
    """Apply every event after `facts.position`, in position order; with `rebuild` (or when the
    facts belong to another log), forget them first and apply the whole log."""
    started = time.perf_counter()
    reason = "asked to" if rebuild else await why_rebuild(store, facts)
    if reason is not None:
        await facts.reset()
    skipped: list[int] = []
    count = 0

    def fetch(after: int):
        return asyncio.ensure_future(store.read(after, page))

    pending = fetch(facts.position)
    try:
        while True:
            rows = await pending
            if not rows:
                break
            # Read the next page in the store's thread while this one is applied.
            pending = fetch(rows[-1][0])
            decoded = []
            for position, _event_id, payload, _recorded_at in rows:
                try:
                    decoded.append((position, decode(payload)))
                except UndecodableEvent as exc:
                    if not skip_undecodable:
                        raise UndecodableLog(position, str(exc)) from exc
                    skipped.append(position)
            try:
                await facts.apply_rows(decoded)
            except Exception as exc:  # a read-side bug: say where, do not guess a fix
                raise UnfoldableLog(facts.position, repr(exc)) from exc
            count += len(decoded)
            if on_progress is not None:
                on_progress(rows[-1][0])
    finally:
        if not pending.done():
            pending.cancel()
    return ReplayReport(count, time.perf_counter() - started, skipped, reason)
