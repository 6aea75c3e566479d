"""A smoke run of every benchmark script at tiny sizes: `make bench` must not rot.

The figures themselves are not asserted (they depend on the machine); what is asserted is that
every script runs against the real service, measures its ceiling and reports a sane ratio.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from bench.__main__ import SCRIPTS, Results, markdown
from bench.common import SMOKE, Figure
from tests.postgres import unreachable
from tests.server import ROOT

pytestmark = pytest.mark.slow

# The read-side figures run on both logs; the smoke run builds its small "big" one itself.
_LOGS = [f"{n:,} events" for n in (SMOKE.events, SMOKE.big_events)]
QUERIES = ["one-day window", "as-of mid-log", "top 20 users by cost, 30 days"]
FIGURES = {"full replay", "disk", "metrics reads, cold", "metrics reads, repeated", "batch ingest",
           "single-event ingest",
           "/health p99 under load",
           *(f"{kind}, {size}" for kind in ("memory", "startup") for size in _LOGS),
           *(f"query: {q}, {size}" for q in QUERIES for size in _LOGS)}
PG_FIGURES = {"batch ingest, PostgreSQL, 2 replicas", "single-event ingest, PostgreSQL, 1 replica",
              "single-event ingest, PostgreSQL, 2 replicas",
              "single-event ingest, PostgreSQL, 3 replicas",
              "full replay from PostgreSQL", "replication lag p99, PostgreSQL",
              "store appends, PostgreSQL, horizon, 2 replicas"}
# Without a PostgreSQL server the pg_* scripts are left out of the smoke run (not failed).
PG_MISSING = unreachable()
if PG_MISSING is None:
    FIGURES |= PG_FIGURES


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Results, str]:
    out = tmp_path_factory.mktemp("bench")
    only = ["--only", *(n for n in SCRIPTS if not n.startswith("pg_"))] if PG_MISSING else []
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out), *only],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = msgspec.json.decode((out / "results.json").read_bytes(), type=Results)
    assert (out / "results.md").read_text() in done.stdout
    return results, done.stdout


def test_every_script_reports_its_figure_with_a_ceiling(smoke):
    results, _ = smoke
    assert results.failures == {}
    # Every script ran (a failure is in `failures`); the figures are all there.
    assert FIGURES <= {f.name for f in results.figures}
    for figure in results.figures:
        assert figure.value > 0 and figure.ceiling > 0, figure
        assert 0 < figure.ratio < 50, figure


def test_the_table_names_the_machine_and_every_figure(smoke):
    results, stdout = smoke
    assert f"on {results.machine['nproc']} CPUs" in stdout
    for name in FIGURES:
        assert f"| {name} |" in stdout


def test_latency_figures_carry_their_p99(smoke):
    results, _ = smoke
    by_name = {f.name: f for f in results.figures}
    for name in ("single-event ingest", "metrics reads, cold", "metrics reads, repeated"):
        assert by_name[name].extra["p99_ms"] > 0
        assert by_name[name].extra["bare_p99_ms"] > 0


def test_a_failing_script_is_reported_not_hidden():
    figure = Figure(name="x", workload="w", value=2, unit="u", ceiling=4, ceiling_what="c",
                    ratio=0.5, target="t", met=False)
    table = markdown(Results({"date": "d", "nproc": 2, "cpu": "c", "python": "3", "sqlite": "3"},
                             "smoke", 1.0, [figure], {"disk": "Traceback...\nValueError: boom"}))
    assert "| x | w | 2 u | 4 u (c) | 0.50 | t | **no** |" in table
    assert "| disk | failed: ValueError: boom |" in table
    assert set(SCRIPTS) >= {"replay", "disk"}


def test_the_stage_probe_times_every_stage():
    """`python -m bench.stages` (docs/ingest-performance.md) on a few thousand events."""
    out = subprocess.run([sys.executable, "-m", "bench.stages", "--events", "2000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stages = {line.rsplit(None, 4)[0]: float(line.split()[-4]) for line in out.stdout.splitlines()}
    assert set(stages) == {"parse_body", "SQLiteStore.append", "Facts.apply_rows",
                           "executemany (ceiling)"}, out.stdout
    assert all(0 < us < 10_000 for us in stages.values()), out.stdout
