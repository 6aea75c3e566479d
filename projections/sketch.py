"""A mergeable quantile sketch with a relative-error guarantee (the DDSketch idea).

Values are counted in logarithmic buckets: bucket `i` holds values in `(g**(i-1), g**i]` with
`g = (1 + a) / (1 - a)`. Answering a quantile with the bucket's midpoint `2 g**i / (g + 1)` is
within a relative error `a` of the true order statistic. Sketches merge by adding counts, which
makes them serialisable (a dict) and cheap to combine across sessions, models and time buckets.

The quantile `q` of `n` values is the nearest-rank one: the value at 1-based rank `ceil(q * n)` in
sorted order (so the p95 of two values is the larger one).
"""

from __future__ import annotations

import math

import msgspec

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
# Values at or below this (in the unit of the data: milliseconds here) count as zero.
MIN_VALUE = 1e-6
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))


def bucket_of(value: float) -> int:
    """The bucket index of a value; every sketch the value goes into shares it."""
    if value <= MIN_VALUE:
        return ZERO
    return math.ceil(math.log(value) / _LOG_GAMMA)


# A bucket index no positive value can have (log(MIN_VALUE) / log(GAMMA) is about -690).
ZERO = -(2**31)


class Sketch(msgspec.Struct, gc=False):
    """Counts per bucket index. Add with `add(bucket_of(v))`, read with `quantile(q)`.

    Build it as `Sketch({}, 0)` on hot paths: a mutable default is copied slowly."""

    counts: dict[int, int] = {}
    n: int = 0

    def add(self, bucket: int) -> None:
        counts = self.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        self.n += 1

    def merge(self, other: "Sketch") -> None:
        counts = self.counts
        for bucket, count in other.counts.items():
            counts[bucket] = counts.get(bucket, 0) + count
        self.n += other.n

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = _rank(q, self.n)
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen > rank:
                return value_of(bucket)
        return value_of(max(self.counts))  # unreachable: counts add up to n

    def percentiles(self) -> dict[str, float] | None:
        """`{"p50", "p90", "p95", "p99"}` in one pass, or None when empty."""
        if self.n == 0:
            return None
        ranks = [(name, _rank(q, self.n)) for name, q in PERCENTILES]
        out: dict[str, float] = {}
        seen = 0
        i = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            while i < len(ranks) and seen > ranks[i][1]:
                out[ranks[i][0]] = value_of(bucket)
                i += 1
            if i == len(ranks):
                break
        return out


def counted(sketch: Sketch | None, bucket: int) -> Sketch:
    """`sketch` with one more value in `bucket`; a new sketch when there was none."""
    if sketch is None:
        return Sketch({bucket: 1}, 1)
    counts = sketch.counts
    counts[bucket] = counts.get(bucket, 0) + 1
    sketch.n += 1
    return sketch


def nearest_rank(ordered, q: float):
    """The exact quantile `q` of already sorted values (the sketch's definition), or None."""
    return ordered[_rank(q, len(ordered))] if ordered else None


def _rank(q: float, n: int) -> int:
    """The 0-based nearest rank of quantile q among n values."""
    return max(math.ceil(q * n) - 1, 0)


def value_of(bucket: int) -> float:
    value = _values.get(bucket)
    if value is None:
        # Six significant digits: readable, and far inside the 1% guarantee.
        value = 0.0 if bucket == ZERO else float(f"{2 * GAMMA**bucket / (GAMMA + 1):.6g}")
        _values[bucket] = value
    return value


# bucket -> its value: a few hundred buckets cover every realistic latency.
_values: dict[int, float] = {}


def merged(sketches) -> Sketch:
    out = Sketch({})
    for sketch in sketches:
        if sketch is not None:
            out.merge(sketch)
    return out
