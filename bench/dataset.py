"""The benchmark event log: 1,000,000 events over 100,000 sessions, generated once and cached.

Each request is an `LLM_REQUEST_STARTED` plus an `LLM_REQUEST_COMPLETED` (95%) or
`LLM_REQUEST_FAILED` (5%); about 10% of completed requests made tool calls; 5 models; each
session belongs to one of `sessions // 20` users. Sessions start at random times over 30 days
and overlap the way real traffic does: the log interleaves a block of sessions at a time.

Rows are written through the project's own ingest (`service.ingest.prepare`: validated wire
events -> log records) and store (`SQLiteStore.append`), in large batches instead of over HTTP
(the generator's dicts are converted straight into wire events, without a JSON round trip).
The file is cached under `bench/.work/`, keyed by `GENERATOR_VERSION` and size: bump the
version whenever the generated traffic changes. `cached_facts` keeps the read side's facts
built from a cached log beside it, keyed by the log and `projections.facts.VERSION`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from pathlib import Path

import msgspec

from events.schema import WireEvent
from events.sqlite_store import SQLiteStore
from service.ingest import prepare

GENERATOR_VERSION = 2
WORK = Path(__file__).resolve().parent / ".work"
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large")
BASE_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
APPEND_BATCH = 50_000
DAYS = 30
SESSIONS_PER_USER = 20
# Sessions in flight at once: the log interleaves their requests.
BLOCK = 1_000

_json = msgspec.json.Encoder()


_days: dict[int, str] = {}


def _iso(us: int) -> str:
    # strftime per event was a third of the generator's time: format each day once.
    seconds, micros = divmod(us, 1_000_000)
    day, second = divmod(seconds, 86_400)
    prefix = _days.get(day)
    if prefix is None:
        prefix = _days[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    hours, second = divmod(second, 3_600)
    return f"{prefix}{hours:02d}:{second // 60:02d}:{second % 60:02d}.{micros:06d}Z"


def session_id(n: int) -> str:
    """The id of the n-th generated session (UUID-shaped, as real clients send)."""
    return f"{n:08x}-5e55-4000-8000-{n * 2654435761 % 2**48:012x}"


def user_id(n: int, sessions: int) -> str:
    """The user of the n-th session of a log of `sessions` sessions."""
    return f"user-{n % max(1, sessions // SESSIONS_PER_USER):05d}"


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
        starts = {n: BASE_US + rng.randrange(DAYS * 86_400) * 1_000_000 for n in block}
        models = {n: MODELS[rng.randrange(len(MODELS))] for n in block}
        for r in range(per_session):
            for n in block:
                if emitted >= events:
                    return
                sid = session_id(n)
                t = starts[n] + r * 20_000_000
                common = dict(session_id=sid, request_id=f"req-{r}", model=models[n],
                              user_id=user_id(n, sessions))
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


_to_wire = msgspec.convert


async def write_log(path: Path, events: int, sessions: int, first_session: int = 0) -> None:
    """Append generated events to the log at `path` (created if missing) through the real
    ingest rules and store. The next batch is prepared while the store appends this one."""
    store = await SQLiteStore.open(path)
    loop = asyncio.get_running_loop()

    def prepared(batch: list[dict]):
        return prepare(_to_wire(batch, list[WireEvent]))

    try:
        await store.migrate()
        batch: list[dict] = []
        appending = None
        for event in wire_events(events, sessions, first_session=first_session):
            batch.append(event)
            if len(batch) == APPEND_BATCH:
                rows = prepared(batch)
                if appending is not None:
                    await appending
                appending = loop.create_task(store.append([rows]))
                batch = []
        if batch:
            rows = prepared(batch)
            if appending is not None:
                await appending
            appending = loop.create_task(store.append([rows]))
        if appending is not None:
            await appending
    finally:
        await store.close()


def log_path(events: int, sessions: int) -> Path:
    """Where the generated log of that size is cached."""
    return WORK / f"log-v{GENERATOR_VERSION}-{events}-{sessions}.db"


def cached_log(events: int, sessions: int) -> Path:
    """The path of the generated log, generating it on first use."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = log_path(events, sessions)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        started = time.perf_counter()
        asyncio.run(write_log(tmp, events, sessions))
        tmp.rename(path)
        for suffix in ("-wal", "-shm", ".lock"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def copy_log(source: Path, target: Path) -> Path:
    """A private copy of a cached log, for benchmarks that write to it."""
    shutil.copyfile(source, target)
    return target


_copies: dict[Path, Path] = {}


def private_log(source: Path, folder: Path) -> Path:
    """One copy of a cached log per process, in `folder`, for the figures that only read it.
    A SQLite log may be opened by one process at a time: others running the benchmarks (or
    the smoke test) at the same moment must not find the cached file in use."""
    if source not in _copies:
        _copies[source] = copy_log(source, folder / f"read-{source.name}")
    return _copies[source]


def facts_path(log: Path) -> Path:
    """Where the facts built from the cached `log` are kept: keyed by the log's name and the
    facts' version, so a change to the facts schema builds them anew."""
    from projections.facts import VERSION

    # "g": facts with a generation token (projections.facts), which the copies share, so that
    # the session answers built once on a copy serve every copy (`answers_path`).
    return log.with_name(f"{log.stem}.facts-v{VERSION}g.duckdb")


def answers_path(log: Path) -> Path:
    """Where the session answers built on the cached facts of `log` are kept."""
    return Path(f"{facts_path(log)}.answers.db")


def copy_facts(log: Path, target: Path) -> Path:
    """A private copy of the facts cached for `log` (`bench.replay` builds them)."""
    shutil.copyfile(facts_path(log), target)
    return target
