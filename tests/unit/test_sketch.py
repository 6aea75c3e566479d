"""The percentile sketch against exact order statistics."""

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.sketch import RELATIVE_ACCURACY, Sketch, bucket_of, merged


def exact(values: list[float], q: float) -> float:
    return sorted(values)[max(math.ceil(q * len(values)) - 1, 0)]


def sketch_of(values) -> Sketch:
    s = Sketch()
    for v in values:
        s.add(bucket_of(v))
    return s


def close(approx: float, true: float) -> bool:
    if true <= 1e-6:
        return approx == 0.0
    return abs(approx - true) <= RELATIVE_ACCURACY * true * 1.0001


values = st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=1,
                  max_size=300)


@given(values, st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]))
def test_quantiles_are_within_one_percent(vals, q):
    assert close(sketch_of(vals).quantile(q), exact(vals, q))


@given(values, values)
def test_merging_equals_sketching_everything(a, b):
    both = merged([sketch_of(a), sketch_of(b)])
    assert both.counts == sketch_of(a + b).counts and both.n == len(a) + len(b)


@settings(max_examples=20)
@given(values)
def test_percentiles_match_quantile(vals):
    s = sketch_of(vals)
    p = s.percentiles()
    assert p == {"p50": s.quantile(0.5), "p90": s.quantile(0.9), "p95": s.quantile(0.95),
                 "p99": s.quantile(0.99)}


def test_a_realistic_latency_distribution():
    rng = random.Random(7)
    vals = [rng.lognormvariate(7, 1.2) for _ in range(50_000)]
    s = sketch_of(vals)
    for q in (0.5, 0.9, 0.95, 0.99):
        assert close(s.quantile(q), exact(vals, q))
    assert len(s.counts) < 600  # bounded by the value range, not the count


def test_empty_sketch():
    assert Sketch().quantile(0.5) is None and Sketch().percentiles() is None
