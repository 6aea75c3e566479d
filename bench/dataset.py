"""The benchmark event log: 1,000,000 events over 100,000 sessions, generated once and cached.

Each request is an `LLM_REQUEST_STARTED` plus an `LLM_REQUEST_COMPLETED` (95%) or
`LLM_REQUEST_FAILED` (5%); about 10% of completed requests made tool calls; 5 models. Sessions
overlap in time the way real traffic does: the log interleaves a block of sessions at a time.

Rows are written through the project's own ingest (`service.ingest.parse_body`: wire JSON ->
validated events -> log records) and store (`SQLiteStore.append`), in large batches instead of
over HTTP. The file is cached under `bench/.work/`, keyed by `GENERATOR_VERSION` and size:
bump the version whenever the generated traffic changes.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from pathlib import Path

import msgspec

from events.sqlite_store import SQLiteStore
from service.ingest import parse_body

GENERATOR_VERSION = 1
WORK = Path(__file__).resolve().parent / ".work"
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large")
BASE_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
APPEND_BATCH = 20_000
# Sessions in flight at once: the log interleaves their requests.
BLOCK = 1_000

_json = msgspec.json.Encoder()


def _iso(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def session_id(n: int) -> str:
    """The id of the n-th generated session (UUID-shaped, as real clients send)."""
    return f"{n:08x}-5e55-4000-8000-{n * 2654435761 % 2**48:012x}"


def wire_events(events: int, sessions: int, seed: int = 7, first_session: int = 0):
    """Yield `events` wire events (dicts) over `sessions` sessions numbered from
    `first_session`, deterministic for a seed. Each session gets `events // (2 * sessions)`
    requests: ask for a multiple of `2 * sessions` to get exactly `events`."""
    rng = random.Random(seed)
    per_session = max(1, events // (2 * sessions))
    emitted = 0
    stop = first_session + sessions
    for first in range(first_session, stop, BLOCK):
        block = range(first, min(first + BLOCK, stop))
        starts = {n: BASE_US + rng.randrange(30 * 86_400) * 1_000_000 for n in block}
        models = {n: MODELS[rng.randrange(len(MODELS))] for n in block}
        for r in range(per_session):
            for n in block:
                if emitted >= events:
                    return
                sid = session_id(n)
                t = starts[n] + r * 20_000_000
                common = dict(session_id=sid, request_id=f"req-{r}", model=models[n])
                yield dict(type="LLM_REQUEST_STARTED", timestamp=_iso(t), **common)
                duration = rng.randrange(200, 8_000)
                finished = _iso(t + duration * 1000)
                if rng.random() < 0.05:
                    yield dict(type="LLM_REQUEST_FAILED", timestamp=finished,
                               error_type="RateLimitError", duration_ms=duration, **common)
                else:
                    prompt = rng.randrange(50, 4_000)
                    yield dict(type="LLM_REQUEST_COMPLETED", timestamp=finished,
                               duration_ms=duration,
                               prompt_tokens=prompt, completion_tokens=rng.randrange(10, 1_500),
                               has_tool_calls=rng.random() < 0.10, **common)
                emitted += 2


def batches(events: int, sessions: int, size: int, first_session: int = 0):
    """The generated events as JSON array bodies of `size` events (what a client would post)."""
    batch = []
    for event in wire_events(events, sessions, first_session=first_session):
        batch.append(event)
        if len(batch) == size:
            yield _json.encode(batch)
            batch = []
    if batch:
        yield _json.encode(batch)


async def write_log(path: Path, events: int, sessions: int, first_session: int = 0) -> None:
    """Append generated events to the log at `path` (created if missing) through the real
    ingest and store code."""
    store = await SQLiteStore.open(path)
    try:
        await store.migrate()
        for body in batches(events, sessions, APPEND_BATCH, first_session):
            await store.append([parse_body(body, "application/json")])
    finally:
        await store.close()


def cached_log(events: int, sessions: int) -> Path:
    """The path of the generated log, generating it on first use."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"log-v{GENERATOR_VERSION}-{events}-{sessions}.db"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        started = time.perf_counter()
        asyncio.run(write_log(tmp, events, sessions))
        tmp.rename(path)
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def copy_log(source: Path, target: Path) -> Path:
    """A private copy of a cached log, for benchmarks that write to it."""
    shutil.copyfile(source, target)
    return target
