"""Full replay: the whole log through the real projections, the way the server starts without
a snapshot (`service.app.load_read_models`: `ReadModels` + `replay` from the real store), in a
fresh process. The ceiling reads the same file with plain `sqlite3` (SELECT, one msgspec
tagged-union decoder, a fold into a dict per session).

The child process also reports its resident memory (the memory figure) and writes the
snapshot the startup and reads figures start from, so that one `make bench` replays the big
log once.

    python -m bench.replay [--smoke]
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import msgspec

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, python, ratio, rss_mb, scratch
from events.records import Completed, Record
from projections.replay import PAGE

TARGET_RATE = 500_000
TARGET_RATIO = 0.5


class ServiceReplay(msgspec.Struct):
    """What the child process measured."""

    events: int
    rate: float
    rss_before_mb: float
    rss_after_mb: float


async def _child(log: str, snapshot: str) -> ServiceReplay:
    from projections.replay import write_snapshot
    from service.app import load_read_models, open_store
    from service.config import Config

    before = rss_mb()
    config = Config(db=log, snapshot=snapshot)
    store = await open_store(config)
    try:
        models, report = await load_read_models(store, config, use_snapshot=False)
        after = rss_mb()
        await write_snapshot(snapshot, models, store)
    finally:
        await store.close()
    return ServiceReplay(report.events, report.rate, round(before, 1), round(after, 1))


_runs: dict[Path, tuple[ServiceReplay, bytes]] = {}


def service_replay(log: Path) -> tuple[ServiceReplay, bytes]:
    """Replay `log` in a fresh process: its measurements and the snapshot it wrote at the end.
    Once per process and log (the memory, startup and reads figures reuse it)."""
    if log not in _runs:
        snapshot = scratch() / f"{log.stem}.snapshot"
        out = python("-m", "bench.replay", "--child", str(log), str(snapshot),
                     profile_as="replay")
        _runs[log] = (msgspec.json.decode(out, type=ServiceReplay), snapshot.read_bytes())
        snapshot.unlink()
    return _runs[log]


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
    measured, _ = service_replay(log)
    ceiling = (before + ceiling_rate(log)) / 2
    if measured.events != sizes.events:
        raise RuntimeError(f"replayed {measured.events} events of {sizes.events}")
    r = ratio(measured.rate, ceiling)
    return [Figure(
        name="full replay",
        workload=f"{sizes.events:,} events, {sizes.sessions:,} sessions, real projections",
        value=round(measured.rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what="sqlite3 SELECT + msgspec decode + dict fold",
        ratio=round(r, 3), target=f">= {TARGET_RATE:,} events/s and >= {TARGET_RATIO} x ceiling",
        met=measured.rate >= TARGET_RATE and r >= TARGET_RATIO,
    )]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        result = asyncio.run(_child(sys.argv[2], sys.argv[3]))
        sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    else:
        main_for(run)
