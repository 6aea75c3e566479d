"""Requests over time: per-minute and per-hour cells per model, folded from terminal events.

A request falls in the bucket of its terminal event's time. Minute cells serve the `1m` and
`5m` buckets, hour cells the `1h` and `1d` ones (UTC days), so a 30-day range at `1h` reads 720
hours and never a minute cell. Memory grows with the number of active (minute, model) pairs.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.codec import us_to_timestamp
from events.records import Completed, Record, Started
from projections.prices import PICO, PriceTable, request_cost
from projections.sketch import Sketch, bucket_of

MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
# bucket name -> (width in microseconds, which cells, cells per bucket)
BUCKETS = {
    "1m": (MINUTE_US, "minutes", 1),
    "5m": (5 * MINUTE_US, "minutes", 5),
    "1h": (HOUR_US, "hours", 1),
    "1d": (24 * HOUR_US, "hours", 24),
}


class Cell(msgspec.Struct, gc=False):
    requests: int = 0
    failed: int = 0
    total_tokens: int = 0
    cost_p: int = 0
    durations: Sketch | None = None


class TimeseriesState(msgspec.Struct, gc=False):
    # cell index (minutes or hours since the epoch) -> model -> cell
    minutes: dict[int, dict[str, Cell]] = {}
    hours: dict[int, dict[str, Cell]] = {}


def _cell(cells: dict[int, dict[str, Cell]], index: int, model: str) -> Cell:
    by_model = cells.get(index)
    if by_model is None:
        by_model = cells[index] = {}
    cell = by_model.get(model)
    if cell is None:
        cell = by_model[model] = Cell()
    return cell


class TimeseriesProjection:
    name = "timeseries"
    version = 1
    state_type = TimeseriesState

    def __init__(self, prices: PriceTable, state: TimeseriesState | None = None):
        self.prices = prices
        self.state = state if state is not None else TimeseriesState()

    @property
    def fingerprint(self) -> str:
        return f"{self.version}/{self.prices.digest}"

    def apply(self, record: Record) -> None:
        if type(record) is Started:
            return
        ts = record.timestamp_us
        model = record.model
        minute = _cell(self.state.minutes, ts // MINUTE_US, model)
        hour = _cell(self.state.hours, ts // HOUR_US, model)
        if type(record) is Completed:
            prompt_p, completion_p = request_cost(record, self.prices.lookup(model))
            cost = prompt_p + completion_p
            bucket = bucket_of(record.duration_ms)
            for cell in (minute, hour):
                cell.requests += 1
                cell.total_tokens += record.total_tokens
                cell.cost_p += cost
                if cell.durations is None:
                    cell.durations = Sketch()
                cell.durations.add(bucket)
        else:
            for cell in (minute, hour):
                cell.requests += 1
                cell.failed += 1


class Point(msgspec.Struct):
    start: datetime
    requests: int
    failed_requests: int
    total_tokens: int
    total_cost_usd: float
    duration_ms_p50: float | None
    duration_ms_p95: float | None


class Series(msgspec.Struct):
    bucket: str
    points: list[Point]


def series(state: TimeseriesState, bucket: str, from_us: int, to_us: int,
           model: str | None = None) -> Series:
    """Every bucket starting in `[from_us, to_us)` (from aligned down), empty ones included."""
    width, which, per = BUCKETS[bucket]
    cells = state.minutes if which == "minutes" else state.hours
    cell_width = width // per
    start = from_us - from_us % width
    points = []
    while start < to_us:
        total = Cell()
        sketch = Sketch()
        first = start // cell_width
        for index in range(first, first + per):
            by_model = cells.get(index)
            if not by_model:
                continue
            chosen = by_model.values() if model is None else [by_model.get(model)]
            for cell in chosen:
                if cell is None:
                    continue
                total.requests += cell.requests
                total.failed += cell.failed
                total.total_tokens += cell.total_tokens
                total.cost_p += cell.cost_p
                if cell.durations is not None:
                    sketch.merge(cell.durations)
        points.append(Point(
            start=us_to_timestamp(start),
            requests=total.requests,
            failed_requests=total.failed,
            total_tokens=total.total_tokens,
            total_cost_usd=total.cost_p / PICO,
            duration_ms_p50=sketch.quantile(0.5),
            duration_ms_p95=sketch.quantile(0.95),
        ))
        start += width
    return Series(bucket, points)


def data_range(state: TimeseriesState) -> tuple[int, int] | None:
    """(first, last + 1 minute) in microseconds of the minutes that have data, or None."""
    if not state.minutes:
        return None
    return min(state.minutes) * MINUTE_US, (max(state.minutes) + 1) * MINUTE_US
