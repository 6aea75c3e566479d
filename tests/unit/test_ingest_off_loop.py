"""A big body is decoded and validated without holding the event loop (`ingest.parse_off_loop`).

A ticker coroutine sleeps 5 ms at a time while a 100k-event batch is parsed; the longest gap
between its ticks is how long the loop was held. Parsed on the loop that gap is the whole parse;
off the loop it must be a small part of it. Relative, so it holds on a fast or a loaded machine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time

import pytest

from service import ingest
from service.problems import ApiError
from tests import factories as f


def big_body(requests: int) -> bytes:
    events = []
    for i in range(requests):
        events.append(f.started(f"s{i // 20}", f"r{i}", t=i, user_id="u", tags=["a", "b"]))
        events.append(f.completed(f"s{i // 20}", f"r{i}", t=i + 0.5, user_id="u", tags=["a"]))
    return json.dumps(events).encode()


async def longest_gap_while(work) -> tuple[float, float, object]:
    """(longest gap between 5 ms ticks, seconds the work took, its result)."""
    gaps, done = [0.0], asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    try:
        result = await work()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        await task
    return max(gaps), seconds, result


async def test_a_100k_event_batch_is_parsed_without_holding_the_loop():
    body = big_body(50_000)

    async def on_loop():
        return ingest.parse_body(body, "application/json", max_events=100_000)

    async def off_loop():
        return await ingest.parse_off_loop(body, "application/json", max_events=100_000)

    held, seconds, inline = await longest_gap_while(on_loop)
    assert held >= 0.9 * seconds  # the baseline: on the loop, the loop waits for all of it
    # As the server does once it is up (`freeze_heap`): otherwise a full collection over what
    # the earlier tests of this process left alive is a pause of seconds, whatever the thread.
    gc.collect()
    gc.freeze()
    try:
        gap, seconds, events = await longest_gap_while(off_loop)
    finally:
        gc.unfreeze()
    assert [e.record for e in events] == [e.record for e in inline]
    assert gap < seconds / 4, f"loop held {gap * 1000:.0f} ms of a {seconds * 1000:.0f} ms parse"


async def test_off_the_loop_every_invalid_event_is_still_named():
    events = json.loads(big_body(3_000))
    events[5]["prompt_tokens"] = -1
    events[2_500]["type"] = "LLM_REQUEST_CANCELLED"
    body = json.dumps(events).encode()
    assert len(body) >= ingest.OFF_LOOP_BYTES
    with pytest.raises(ApiError) as refused:
        await ingest.parse_off_loop(body, "application/json", max_events=10_000)
    assert [(d.index, d.path) for d in refused.value.details] == [
        (5, "$.prompt_tokens"), (2_500, "$.type")]
    with pytest.raises(ApiError) as too_many:
        await ingest.parse_off_loop(body, "application/json", max_events=5_000)
    assert too_many.value.status == 413
