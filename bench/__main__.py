"""`make bench`: every figure, each next to its ceiling measured in the same run.

    python -m bench [--smoke] [--big] [--only NAME ...] [--profile DIR]

Writes `bench/results.json` and `bench/results.md` (the markdown table, also printed).
`--smoke` runs tiny sizes (the test suite does this) and writes nothing unless `--out` is given.
`--big` first builds the 10M-event log and its facts when they are not cached (tens of minutes
once); without it the 10M-event figures run only when that cache exists.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import msgspec

from bench import (common, disk, health_under_load, ingest_batch, ingest_single, memory,
                   pg_designs, pg_ingest_batch, pg_ingest_single, pg_lag, pg_replay, queries,
                   reads, replay, startup)
from bench.common import FULL, SMOKE, Figure, machine

HERE = Path(__file__).resolve().parent
# In the order they run; the cheap, cache-building ones first.
SCRIPTS = {
    "replay": replay,
    "memory": memory,
    "disk": disk,
    "startup": startup,
    "queries": queries,
    "reads": reads,
    "health_under_load": health_under_load,
    "ingest_batch": ingest_batch,
    "ingest_single": ingest_single,
    # PostgreSQL (LLM_METRICS_BENCH_PG_DSN): a log shared by replicas.
    "pg_ingest_batch": pg_ingest_batch,
    "pg_ingest_single": pg_ingest_single,
    "pg_replay": pg_replay,
    "pg_lag": pg_lag,
    "pg_designs": pg_designs,
}


class Results(msgspec.Struct):
    machine: dict[str, str | int]
    sizes: str
    seconds: float
    figures: list[Figure]
    failures: dict[str, str]


def _value(figure: Figure) -> str:
    return f"{figure.value:,.3f}".rstrip("0").rstrip(".") + f" {figure.unit}"


def markdown(results: Results) -> str:
    """The results as the README's table."""
    m = results.machine
    lines = [
        f"Measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"SQLite {m['sqlite']}; `make bench` took {results.seconds:.0f} s.",
        "",
        "| figure | workload | measured | ceiling (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results.figures:
        extra = "".join(f"; {k.replace('_', ' ')} {v}" for k, v in f.extra.items()
                        if k.endswith(("_ms", "_per_s")))
        lines.append(
            f"| {f.name} | {f.workload} | {_value(f)}{extra} | {f.ceiling:,g} {f.unit} "
            f"({f.ceiling_what}) | {f.ratio:.2f} | {f.target} | {'yes' if f.met else '**no**'} |"
        )
    for name, error in results.failures.items():
        lines.append(f"| {name} | failed: {error.splitlines()[-1]} | | | | | **no** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds in all")
    parser.add_argument("--big", action="store_true",
                        help="build the 10M-event log and its facts if not cached (slow, once)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), help="run only these")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json and results.md (default: bench/, "
                             "or nowhere with --smoke)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record a py-spy flame graph of each measured process into DIR")
    args = parser.parse_args(argv)
    common.PROFILE_DIR = args.profile
    common.BUILD_BIG = args.big
    sizes = SMOKE if args.smoke else FULL
    out = args.out or (None if args.smoke else HERE)
    started = time.perf_counter()
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    for name in args.only or SCRIPTS:
        print(f"{name} ...", flush=True)
        t = time.perf_counter()
        try:
            got = SCRIPTS[name].run(sizes)
        except Exception:
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr)
            continue
        figures.extend(got)
        for f in got:
            print(f"  {f.name}: {_value(f)} vs {f.ceiling:,g} -> ratio {f.ratio:.2f} "
                  f"({'met' if f.met else 'NOT met'}: {f.target}) [{time.perf_counter() - t:.0f} s]",
                  flush=True)
    results = Results(machine(), "smoke" if args.smoke else "full",
                      round(time.perf_counter() - started, 1), figures, failures)
    table = markdown(results)
    print()
    print(table)
    if not args.smoke and common.big_log(sizes) is None:
        print(f"The {sizes.big_events:,}-event figures were left out: no cached log. "
              "`python -m bench --big` builds it once (tens of minutes), then `make bench` "
              "reports them.")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(results)))
        (out / "results.md").write_text(table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
