"""Memory: resident set size of a process that has replayed the whole log into the real read
models, against the same process folding it into the ceiling's dict per session.

Each side runs in a fresh child process (`python -m bench.memory --child service|ceiling LOG`)
so that neither sees the other's garbage.

    python -m bench.memory [--smoke]
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, python, ratio, rss_mb

TARGET_MB = 200


class Usage(msgspec.Struct):
    before_mb: float
    after_mb: float


def child(kind: str, log: str) -> Usage:
    from bench.replay import fold_ceiling, replay_service

    before = rss_mb()
    if kind == "service":
        kept = asyncio.run(replay_service(log))
    else:
        kept = fold_ceiling(log)
    usage = Usage(round(before, 1), round(rss_mb(), 1))
    del kept
    return usage


def measure(kind: str, log) -> Usage:
    out = python("-m", "bench.memory", "--child", kind, str(log))
    return msgspec.json.decode(out, type=Usage)


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    service, ceiling = measure("service", log), measure("ceiling", log)
    return [Figure(
        name="memory",
        workload=f"RSS after replaying {sizes.events:,} events ({sizes.sessions:,} sessions)",
        value=service.after_mb, unit="MB", ceiling=ceiling.after_mb,
        ceiling_what="same process holding the ceiling's dict per session",
        ratio=round(ratio(service.after_mb, ceiling.after_mb, higher_is_better=False), 3),
        target=f"<= {TARGET_MB} MB", met=service.after_mb <= TARGET_MB,
        extra={"interpreter_and_imports_mb": service.before_mb},
    )]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.stdout.buffer.write(msgspec.json.encode(child(sys.argv[2], sys.argv[3])))
    else:
        main_for(run)
