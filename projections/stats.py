"""`Stats`: the counters behind every metrics response, for any slice of requests.

One `Stats` exists per (session, model), per model, per user and per tag; responses for wider
slices add them up with `combine`. Sums are integers (microseconds, tokens, pico-dollars) so
that they do not depend on the order events arrive in.
"""

from __future__ import annotations

from typing import Iterable

import msgspec

from projections.sketch import Sketch


class Stats(msgspec.Struct, gc=False):
    successful: int = 0
    failed: int = 0
    duration_us: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    with_tools: int = 0
    prompt_cost_p: int = 0
    completion_cost_p: int = 0
    # Completed requests of a model the price table does not know (and with no cost_usd).
    unpriced: int = 0
    # For output tokens per second: completion tokens over generation time (duration minus time
    # to first token when known), of requests whose generation time is positive.
    gen_tokens: int = 0
    gen_us: int = 0
    durations: Sketch | None = None
    ttfts: Sketch | None = None
    errors: dict[str, int] | None = None


def add_completed(s: Stats, prompt: int, completion: int, total: int, cached: int,
                  reasoning: int, tools: int, duration_us: int, prompt_cost_p: int,
                  completion_cost_p: int, unpriced: int, gen_us: int, duration_bucket: int,
                  ttft_bucket: int | None) -> None:
    s.successful += 1
    s.duration_us += duration_us
    s.prompt_tokens += prompt
    s.completion_tokens += completion
    s.total_tokens += total
    s.cached_prompt_tokens += cached
    s.reasoning_tokens += reasoning
    s.with_tools += tools
    s.prompt_cost_p += prompt_cost_p
    s.completion_cost_p += completion_cost_p
    s.unpriced += unpriced
    if gen_us > 0:
        s.gen_tokens += completion
        s.gen_us += gen_us
    if s.durations is None:
        s.durations = Sketch()
    s.durations.add(duration_bucket)
    if ttft_bucket is not None:
        if s.ttfts is None:
            s.ttfts = Sketch()
        s.ttfts.add(ttft_bucket)


def add_failed(s: Stats, error_type: str) -> None:
    s.failed += 1
    errors = s.errors
    if errors is None:
        s.errors = {error_type: 1}
    else:
        errors[error_type] = errors.get(error_type, 0) + 1


_COUNTERS = tuple(f for f in Stats.__struct_fields__ if f not in ("durations", "ttfts", "errors"))


def combine(parts: Iterable[Stats]) -> Stats:
    """A new `Stats` equal to the sum of `parts` (sketches merged, error counts added)."""
    out = Stats()
    for part in parts:
        for name in _COUNTERS:
            setattr(out, name, getattr(out, name) + getattr(part, name))
        for name in ("durations", "ttfts"):
            sketch = getattr(part, name)
            if sketch is not None:
                if getattr(out, name) is None:
                    setattr(out, name, Sketch())
                getattr(out, name).merge(sketch)
        if part.errors:
            if out.errors is None:
                out.errors = {}
            for error, count in part.errors.items():
                out.errors[error] = out.errors.get(error, 0) + count
    return out
