"""`Stats`: the counters behind every metrics response, for any slice of requests.

One `Stats` exists per (session, model), per model, per user and per tag; responses for wider
slices add them up with `combine`. Sums are integers (microseconds, tokens, pico-dollars) so
that they do not depend on the order events arrive in.

Cost is not summed here: it is linear in the token sums of one model, so `cost` computes it
when read, from the price table of the moment. Only costs the caller gave (`cost_usd`) are
summed, with the tokens they cover, which the table then leaves out.
"""

from __future__ import annotations

from typing import Iterable

import msgspec

from projections.prices import Price
from projections.sketch import Sketch, counted


class Stats(msgspec.Struct, gc=False):
    # A Struct rather than a slots dataclass: attribute updates are slower, but creating one
    # (once per session and model) is three times faster, which wins on real logs.
    successful: int = 0
    failed: int = 0
    duration_us: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    with_tools: int = 0
    # For output tokens per second: completion tokens over generation time (duration minus time
    # to first token when known), of requests whose generation time is positive.
    gen_tokens: int = 0
    gen_us: int = 0
    # Requests that came with their own `cost_usd`: how many, their tokens, their cost.
    caller_priced: int = 0
    caller_prompt_tokens: int = 0
    caller_cached_tokens: int = 0
    caller_completion_tokens: int = 0
    caller_prompt_cost_p: int = 0
    caller_completion_cost_p: int = 0
    durations: Sketch | None = None
    ttfts: Sketch | None = None
    errors: dict[str, int] | None = None


def add_completed(s: Stats, duration_us: int, prompt: int, completion: int, total: int,
                  cached: int, reasoning: int, tools: int, gen_us: int, duration_bucket: int,
                  ttft_bucket: int | None) -> None:
    s.successful += 1
    s.duration_us += duration_us
    s.prompt_tokens += prompt
    s.completion_tokens += completion
    s.total_tokens += total
    s.cached_prompt_tokens += cached
    s.reasoning_tokens += reasoning
    s.with_tools += tools
    if gen_us > 0:
        s.gen_tokens += completion
        s.gen_us += gen_us
    s.durations = counted(s.durations, duration_bucket)
    if ttft_bucket is not None:
        s.ttfts = counted(s.ttfts, ttft_bucket)


def add_caller_cost(s: Stats, prompt: int, cached: int, completion: int, prompt_p: int,
                    completion_p: int) -> None:
    """Record the cost a completed request came with (split into its parts already), and the
    tokens it covers, which the price table then leaves out."""
    s.caller_priced += 1
    s.caller_prompt_tokens += prompt
    s.caller_cached_tokens += cached
    s.caller_completion_tokens += completion
    s.caller_prompt_cost_p += prompt_p
    s.caller_completion_cost_p += completion_p


def add_failed(s: Stats, error_type: str) -> None:
    s.failed += 1
    errors = s.errors
    if errors is None:
        s.errors = {error_type: 1}
    else:
        errors[error_type] = errors.get(error_type, 0) + 1


def cost(s: Stats, price: Price | None) -> tuple[int, int]:
    """(prompt, completion) cost in pico-dollars of one model's `Stats` at `price`."""
    prompt_p, completion_p = s.caller_prompt_cost_p, s.caller_completion_cost_p
    if price is not None:
        cached = s.cached_prompt_tokens - s.caller_cached_tokens
        uncached = s.prompt_tokens - s.caller_prompt_tokens - cached
        prompt_p += uncached * price.input + cached * price.cached_input
        completion_p += (s.completion_tokens - s.caller_completion_tokens) * price.output
    return prompt_p, completion_p


def unpriced(s: Stats, price: Price | None) -> bool:
    """Whether some successful requests of this model have no price at all."""
    return price is None and s.successful > s.caller_priced


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
                    setattr(out, name, Sketch({}))
                getattr(out, name).merge(sketch)
        if part.errors:
            if out.errors is None:
                out.errors = {}
            for error, count in part.errors.items():
                out.errors[error] = out.errors.get(error, 0) + count
    return out
