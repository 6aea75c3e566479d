"""Memory: resident set size of a fresh process that has replayed the whole log into the real
read models (measured by `bench.replay`'s child process), against a fresh process holding the
ceiling's dict per session for the same log.

    python -m bench.memory [--smoke]
"""

from __future__ import annotations

import sys

import msgspec

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, python, ratio, rss_mb
from bench.replay import fold_ceiling, service_replay

TARGET_MB = 200


def ceiling_child(log: str) -> float:
    sessions, _ = fold_ceiling(log)
    usage = rss_mb()
    del sessions
    return round(usage, 1)


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    service, _ = service_replay(log)
    ceiling = msgspec.json.decode(python("-m", "bench.memory", "--child", str(log)))
    return [Figure(
        name="memory",
        workload=f"RSS after replaying {sizes.events:,} events ({sizes.sessions:,} sessions)",
        value=service.rss_after_mb, unit="MB", ceiling=ceiling,
        ceiling_what="a process holding the ceiling's dict per session",
        ratio=round(ratio(service.rss_after_mb, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_MB} MB", met=service.rss_after_mb <= TARGET_MB,
        extra={"interpreter_and_imports_mb": service.rss_before_mb},
    )]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.stdout.buffer.write(msgspec.json.encode(ceiling_child(sys.argv[2])))
    else:
        main_for(run)
