"""Requests over time: per-minute and per-hour cells per model, folded from terminal events.

A request falls in the bucket of its terminal event's time. Minute cells serve the `1m` and
`5m` buckets, hour cells the `1h` and `1d` ones (UTC days), so a 30-day range at `1h` reads 720
hours and never a minute cell. Minute cells keep their durations exactly (8 bytes a request:
a sketch would cost far more for the two or three requests a typical minute and model has),
hour cells keep a sketch.
"""

from __future__ import annotations

from array import array
from datetime import datetime

import msgspec

from events.codec import us_to_timestamp
from events.records import Completed, Record, Started
from projections.prices import PICO, Price, PriceTable
from projections.sketch import Sketch, bucket_of, counted, nearest_rank

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
    # Tokens priced by the table when read (those of requests without a `cost_usd`)...
    uncached_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # ...and the costs callers gave.
    caller_cost_p: int = 0
    # Hour cells: a sketch of durations. Minute cells: the durations themselves, microseconds.
    durations: Sketch | None = None
    values: array | None = None


class TimeseriesState(msgspec.Struct, gc=False):
    # cell index (minutes or hours since the epoch) -> model -> cell
    minutes: dict[int, dict[str, Cell]] = {}
    hours: dict[int, dict[str, Cell]] = {}
    # hour index -> durations of every model: an unfiltered series reads one sketch an hour
    # instead of merging one per model.
    hour_durations: dict[int, Sketch] = {}


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
    version = 3
    state_type = TimeseriesState

    def __init__(self, state: TimeseriesState | None = None):
        self.state = state if state is not None else TimeseriesState()

    @property
    def state(self) -> TimeseriesState:
        return self._state

    @state.setter
    def state(self, state: TimeseriesState) -> None:
        self._state = state
        # model -> (minute index, minute cell, hour cell) of its latest event: events mostly
        # come in time order, so this saves two lookups per event.
        self._latest: dict[str, tuple[int, Cell, Cell]] = {}

    @property
    def fingerprint(self) -> str:
        return str(self.version)

    def apply(self, record: Record) -> None:
        if type(record) is Started:
            return
        model = record.model
        index = record.timestamp_us // MINUTE_US
        latest = self._latest.get(model)
        if latest is not None and latest[0] == index:
            minute, hour = latest[1], latest[2]
        else:
            minute = _cell(self._state.minutes, index, model)
            hour = _cell(self._state.hours, index // 60, model)
            self._latest[model] = (index, minute, hour)
        if type(record) is Completed:
            duration_us = int(record.duration_ms * 1000 + 0.5)
            bucket = bucket_of(duration_us / 1000)
            caller_p = None if record.cost_usd is None else round(record.cost_usd * PICO)
            if minute.values is None:
                minute.values = array("q", (duration_us,))
            else:
                minute.values.append(duration_us)
            for cell in (minute, hour):
                cell.requests += 1
                cell.total_tokens += record.total_tokens
                if caller_p is None:
                    cell.uncached_tokens += record.prompt_tokens - record.cached_prompt_tokens
                    cell.cached_tokens += record.cached_prompt_tokens
                    cell.completion_tokens += record.completion_tokens
                else:
                    cell.caller_cost_p += caller_p
            hour.durations = counted(hour.durations, bucket)
            everyone = self._state.hour_durations
            hour_index = index // 60
            everyone[hour_index] = counted(everyone.get(hour_index), bucket)
        else:
            for cell in (minute, hour):
                cell.requests += 1
                cell.failed += 1


def _cost_p(cell: Cell, price: Price | None) -> int:
    cost = cell.caller_cost_p
    if price is not None:
        cost += (cell.uncached_tokens * price.input + cell.cached_tokens * price.cached_input
                 + cell.completion_tokens * price.output)
    return cost


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


def series(state: TimeseriesState, prices: PriceTable, bucket: str, from_us: int, to_us: int,
           model: str | None = None) -> Series:
    """Every bucket starting in `[from_us, to_us)` (from aligned down), empty ones included."""
    width, which, per = BUCKETS[bucket]
    cells = state.minutes if which == "minutes" else state.hours
    cell_width = width // per
    start = from_us - from_us % width
    points = []
    while start < to_us:
        total = Cell()
        cost_p = 0
        sketch = Sketch({})
        values: list[int] = []
        first = start // cell_width
        for index in range(first, first + per):
            by_model = cells.get(index)
            if not by_model:
                continue
            chosen = by_model.items() if model is None else [(model, by_model.get(model))]
            if model is None and which == "hours" and index in state.hour_durations:
                if per == 1:
                    sketch = state.hour_durations[index]  # read only: no copy needed
                else:
                    sketch.merge(state.hour_durations[index])
            for name, cell in chosen:
                if cell is None:
                    continue
                total.requests += cell.requests
                total.failed += cell.failed
                total.total_tokens += cell.total_tokens
                cost_p += _cost_p(cell, prices.lookup(name))
                if cell.durations is not None and model is not None:
                    sketch.merge(cell.durations)
                if cell.values is not None:
                    values.extend(cell.values)
        if which == "minutes":
            values.sort()
            p50, p95 = (nearest_rank(values, 0.5), nearest_rank(values, 0.95))
            p50, p95 = (None if p50 is None else p50 / 1000, None if p95 is None else p95 / 1000)
        else:
            percentiles = sketch.percentiles() or {}
            p50, p95 = percentiles.get("p50"), percentiles.get("p95")
        points.append(Point(
            start=us_to_timestamp(start),
            requests=total.requests,
            failed_requests=total.failed,
            total_tokens=total.total_tokens,
            total_cost_usd=cost_p / PICO,
            duration_ms_p50=p50,
            duration_ms_p95=p95,
        ))
        start += width
    return Series(bucket, points)


def data_range(state: TimeseriesState) -> tuple[int, int] | None:
    """(first, last + 1 minute) in microseconds of the minutes that have data, or None."""
    if not state.minutes:
        return None
    return min(state.minutes) * MINUTE_US, (max(state.minutes) + 1) * MINUTE_US
