"""Latency histograms per model, with fixed bucket boundaries: a pure fold for `GET /metrics`.

Prometheus histograms need counts per fixed boundary, which the quantile sketches of the metrics
projection cannot give exactly, so this projection keeps them. The boundaries are the
OpenTelemetry GenAI semantic conventions' advice for `gen_ai.client.operation.duration` and
`gen_ai.server.time_to_first_token`: 0.01 s doubling up to 81.92 s.

Like the JSON API's durations, the histograms cover completed requests; failed ones are counted
by `llm_requests_total{status="error"}`. Sums are integer microseconds so they do not depend on
the order events arrive in.
"""

from __future__ import annotations

from bisect import bisect_left

import msgspec

from events.records import Completed, Record

# Upper bounds in seconds (inclusive, as Prometheus' `le`): 0.01, 0.02, 0.04 ... 81.92.
BUCKETS_S: tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))
_BUCKETS_US: tuple[int, ...] = tuple(10_000 * 2**i for i in range(14))


class Histogram(msgspec.Struct, array_like=True, gc=False):
    """Counts per bucket (not cumulative; the last one is above every bound) and their sum."""

    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(_BUCKETS_US) + 1))
    sum_us: int = 0

    def observe(self, value_us: int) -> None:
        self.counts[bisect_left(_BUCKETS_US, value_us)] += 1
        self.sum_us += value_us

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts of values <= each bound, then the total (the `+Inf` bucket)."""
        out, running = [], 0
        for count in self.counts:
            running += count
            out.append(running)
        return out


class ModelLatency(msgspec.Struct, gc=False):
    duration: Histogram = msgspec.field(default_factory=Histogram)
    time_to_first_token: Histogram = msgspec.field(default_factory=Histogram)


class PrometheusState(msgspec.Struct, gc=False):
    models: dict[str, ModelLatency] = {}


class PrometheusProjection:
    """Folds completed requests into per-model duration and time-to-first-token histograms."""

    name = "prometheus"
    # Bump when the state's shape or the fold's rules change: old snapshots are then ignored.
    version = 1
    state_type = PrometheusState

    def __init__(self, state: PrometheusState | None = None):
        self.state = state if state is not None else PrometheusState()

    @property
    def fingerprint(self) -> str:
        return str(self.version)

    def apply(self, record: Record) -> None:
        if type(record) is not Completed:
            return
        latency = self.state.models.get(record.model)
        if latency is None:
            latency = self.state.models[record.model] = ModelLatency()
        latency.duration.observe(round(record.duration_ms * 1000))
        ttft = record.time_to_first_token_ms
        if ttft is not None:
            latency.time_to_first_token.observe(round(ttft * 1000))
