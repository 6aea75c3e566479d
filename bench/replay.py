"""Full replay: `make replay` (`service.app.load_read_models(..., rebuild=True)`: the whole log
into fresh request facts) in a fresh process. The ceiling reads the same file with plain
`sqlite3` (SELECT, one msgspec tagged-union decoder, a fold into a dict per session), measured
before and after the service's replay.

The facts the child builds are kept beside the cached log (`dataset.facts_path`) when none
are there yet: the startup, queries, memory and reads figures start from copies of them, so
one `make bench` replays the big log once, and the 10M-event log (`--big`) only when its
facts are missing.

    python -m bench.replay [--smoke]
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

import msgspec

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, python, ratio, rss_mb, scratch
from events.records import Completed, Record
from projections.replay import PAGE

TARGET_RATIO = 0.7


class ServiceReplay(msgspec.Struct):
    """What the child process measured."""

    events: int
    seconds: float
    rate: float
    rss_after_mb: float


async def _child(log: str, facts: str) -> ServiceReplay:
    from service.app import load_read_models, open_store
    from service.config import Config

    config = Config(db=log, facts=facts)
    store = await open_store(config)
    try:
        models, report = await load_read_models(store, config, rebuild=True)
        after = rss_mb()
        models.engine.close()
    finally:
        await store.close()
    return ServiceReplay(report.events, round(report.seconds, 3), report.rate, round(after, 1))


_runs: dict[Path, ServiceReplay] = {}


def service_replay(log: Path) -> ServiceReplay:
    """Rebuild the facts of `log` in a fresh process, as `make replay` does, into
    `dataset.facts_path(log)` when they are not cached yet. Once per process and log.

    Cached facts are kept: new ones would be another generation of them, and the session
    answers cached beside them (`dataset.answers_path`) would be rebuilt by the next server,
    inside the figures measured on it."""
    if log not in _runs:
        target = dataset.facts_path(log)
        keep = not target.exists()
        tmp = target.with_name(f"{target.name}.{os.getpid()}.partial") if keep else \
            scratch() / "replayed.facts.duckdb"
        copy = dataset.private_log(log, scratch())
        out = python("-m", "bench.replay", "--child", str(copy), str(tmp), profile_as="replay",
                     timeout=7200)
        _runs[log] = msgspec.json.decode(out, type=ServiceReplay)
        if keep:
            tmp.replace(target)
        else:
            tmp.unlink()
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    return _runs[log]


def cached_facts(log: Path) -> Path:
    """The facts of `log`, built by a replay only when they are not cached yet."""
    path = dataset.facts_path(log)
    if not path.exists():
        started = time.perf_counter()
        service_replay(log)
        print(f"  built {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return path


_decode = msgspec.msgpack.Decoder(Record).decode


def fold_page(sessions: dict[str, list[int]], payloads) -> None:
    """The ceiling's fold of one page: decode each payload, count it in a dict per session."""
    decode = _decode
    for payload in payloads:
        record = decode(payload)
        session = sessions.get(record.session_id)
        if session is None:
            session = sessions[record.session_id] = [0, 0]
        session[0] += 1
        if type(record) is Completed:
            session[1] += record.total_tokens


def fold_ceiling(path: Path) -> tuple[dict, int]:
    """The ceiling: read every payload, decode it, fold it into a dict per session."""
    sessions: dict[str, list[int]] = {}
    count = 0
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute("SELECT payload FROM events ORDER BY position")
        while rows := cur.fetchmany(PAGE):
            fold_page(sessions, [payload for (payload,) in rows])
            count += len(rows)
    finally:
        conn.close()
    return sessions, count


def ceiling_rate(path: Path) -> float:
    started = time.perf_counter()
    _, count = fold_ceiling(path)
    return count / (time.perf_counter() - started)


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    # The ceiling runs before and after the service, and counts as their mean: both then see
    # about the same noise from the machine's other users.
    before = ceiling_rate(log)
    measured = service_replay(log)
    ceiling = (before + ceiling_rate(log)) / 2
    if measured.events != sizes.events:
        raise RuntimeError(f"replayed {measured.events} events of {sizes.events}")
    r = ratio(measured.rate, ceiling)
    return [Figure(
        name="full replay",
        workload=f"`make replay` of {sizes.events:,} events ({sizes.sessions:,} sessions) "
                 "into fresh request facts, fresh process",
        value=round(measured.rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what="sqlite3 SELECT + msgspec decode + dict fold",
        ratio=round(r, 3), target=f">= {TARGET_RATIO} x ceiling", met=r >= TARGET_RATIO,
        extra={"seconds": measured.seconds, "rss_mb": measured.rss_after_mb},
    )]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        result = asyncio.run(_child(sys.argv[2], sys.argv[3]))
        sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    else:
        main_for(run)
