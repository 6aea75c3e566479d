"""Questions the live read models cannot answer: "as of position N" and time windows.

Both are answered the event-sourced way, by folding the log into fresh read models: up to the
position asked (starting from the snapshot when it is not past it), or through the filter.
Each answer costs about as much as replaying the events it reads, so the caller bounds it with
`max_events` and runs one at a time.
"""

from __future__ import annotations

from events.store import EventStore
from projections.filters import EventFilter
from projections.prices import PriceTable
from projections.replay import ReadModels, SnapshotRefused, load_snapshot, replay


class QueryTooLarge(ValueError):
    """The question would replay more events than allowed."""


async def position_at(store: EventStore, recorded_us: int) -> int:
    """The last position recorded at or before `recorded_us` (0 if none): a binary search,
    since positions are recorded in increasing time."""
    low, high = 0, await store.last_position()
    while low < high:
        mid = (low + high + 1) // 2
        rows = await store.read(mid - 1, 1)
        if rows and rows[0][3] <= recorded_us:
            low = mid
        else:
            high = mid - 1
    return low


async def fold(store: EventStore, prices: PriceTable, *, until: int | None = None,
               where: EventFilter | None = None, snapshot_path: str | None = None,
               max_events: int) -> ReadModels:
    """Fresh read models over the log up to `until` (default: its end), through `where`."""
    end = await store.last_position() if until is None else min(until, await store.last_position())
    models = ReadModels(prices)
    if snapshot_path and (where is None or where.empty):
        try:
            await load_snapshot(snapshot_path, models, store)
        except SnapshotRefused:
            pass
        if models.position > end:
            models = ReadModels(prices)
    if end - models.position > max_events:
        raise QueryTooLarge(
            f"answering this would replay {end - models.position:,} events, more than the "
            f"{max_events:,} allowed (LLM_METRICS_QUERY_MAX_EVENTS)")
    await replay(store, models, until=end,
                 where=None if where is None or where.empty else where, page=5_000)
    return models
