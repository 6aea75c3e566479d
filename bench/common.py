"""What every benchmark script shares: sizes, the figure record, processes, the load generator."""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import msgspec

from bench.dataset import WORK
from tests.server import ROOT, ServerProcess, free_port

__all__ = ["ROOT", "ServerProcess", "free_port"]


class Sizes(msgspec.Struct, frozen=True):
    """How big each workload is: `FULL` for `make bench`, `SMOKE` for the test suite.
    `big_events` / `big_sessions` are the second log of the read-side figures (10M events):
    measured when its cache exists, or built first with `python -m bench --big`."""

    events: int
    sessions: int
    big_events: int
    big_sessions: int
    startup_tail: int
    startup_runs: int
    batch_events: int
    batch_size: int
    batch_clients: int
    connections: int
    seconds: float
    warmup: float
    # Replica counts `pg_designs` compares the append designs at.
    design_replicas: tuple[int, ...] = (1, 2, 3)


FULL = Sizes(events=1_000_000, sessions=100_000, big_events=10_000_000, big_sessions=1_000_000,
             startup_tail=10_000, startup_runs=5,
             batch_events=200_000, batch_size=1_000, batch_clients=4, connections=64,
             seconds=5.0, warmup=1.0)
SMOKE = Sizes(events=4_000, sessions=400, big_events=8_000, big_sessions=800, startup_tail=200, startup_runs=1, batch_events=2_000,
              batch_size=100, batch_clients=4, connections=8, seconds=0.3, warmup=0.1,
              design_replicas=(2,))


class Figure(msgspec.Struct, kw_only=True):
    """One measured figure next to its ceiling from the same run.

    `ratio` is always "how close to the ceiling": value / ceiling when more is better,
    ceiling / value when less is better; 1.0 means as good as the bare tool.
    """

    name: str
    workload: str
    value: float
    unit: str
    ceiling: float
    ceiling_what: str
    ratio: float
    target: str
    met: bool
    extra: dict[str, float | int | str] = {}


def ratio(value: float, ceiling: float, higher_is_better: bool = True) -> float:
    if higher_is_better:
        return value / ceiling if ceiling else 0.0
    return ceiling / value if value else 0.0


def machine() -> dict[str, str | int]:
    """Where the figures were measured (for the README's table)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
    }


def rss_mb() -> float:
    """Resident memory of this process now, in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def python(*args: str, timeout: float = 600, profile_as: str | None = None) -> bytes:
    """Run `python ARGS` from the repository root in a child process; the last line of its
    stdout (py-spy's own lines left out). With `profile_as` and `--profile`, under py-spy."""
    command = [sys.executable, *args]
    if profile_as is not None and PROFILE_DIR is not None:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        command = [_py_spy(), "record", "--rate", "200", "--output",
                   str(PROFILE_DIR / f"{profile_as}.svg"), "--", *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr.decode(errors='replace')}")
    lines = [line for line in done.stdout.splitlines()
             if line.strip() and not line.startswith(b"py-spy>")]
    return lines[-1] if lines else b""


def _py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0,
                 poll: float = 0.005) -> float:
    """Poll `url/health` until 200; the `perf_counter()` at which it answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter()
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(poll)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


@contextmanager
def bare_server():
    """`python -m bench.bare_server` on a free port; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_server", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# Set by `python -m bench --profile DIR`: flame graphs of the measured processes go there.
PROFILE_DIR: Path | None = None
# Set by `python -m bench --big`: build the 10M-event log and its facts when not cached.
BUILD_BIG = False


@contextmanager
def profiled(pid: int, name: str):
    """Record a py-spy flame graph of process `pid` to PROFILE_DIR/name.svg, when profiling."""
    if PROFILE_DIR is None:
        yield
        return
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--rate",
         "200", "--output", str(PROFILE_DIR / f"{name}.svg")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes the graph when interrupted
        spy.wait(60)


@contextmanager
def service(db: str | Path, profile_as: str = "service", **env: str):
    """The real service (`python -m service serve`) on `db`; yields the ServerProcess."""
    server = ServerProcess(db, **env)
    with server, profiled(server.proc.pid, profile_as):
        yield server


def process_rss_mb(pid: int) -> float:
    """Resident memory of process `pid` now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def timed_get(url: str, headers: dict | None = None) -> tuple[float, bytes]:
    """One GET over a fresh connection: (milliseconds until the whole body was read, body).
    Anything but 200 raises, with the answer."""
    request = urllib.request.Request(url, headers=headers or {})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"GET {url}: {exc.code} {exc.read()[:500]!r}") from None
    return (time.perf_counter() - started) * 1000, body


def median_ms(url: str, headers: dict | None, runs: int, warmup: int = 2) -> float:
    """The median time of `runs` GETs of `url`, after `warmup` unmeasured ones."""
    times = [timed_get(url, headers)[0] for _ in range(runs + warmup)]
    return statistics.median(times[warmup:])


def big_log(sizes: Sizes) -> Path | None:
    """The 10M-event log when it and its facts are cached (or `--big` asked to build them),
    else None: without `--big`, `make bench` never spends the tens of minutes they take."""
    from bench import dataset

    path = dataset.log_path(sizes.big_events, sizes.big_sessions)
    cached = path.exists() and dataset.facts_path(path).exists()
    if cached or BUILD_BIG or sizes.big_events < 100_000:
        return dataset.cached_log(sizes.big_events, sizes.big_sessions)
    return None


@contextmanager
def facts_service(log: Path, db: Path, name: str, **env: str):
    """The real service on the log `db` (a copy of the cached `log`), starting from a private
    copy of the facts cached for `log`: what a restart finds. Yields the ServerProcess."""
    from bench import dataset
    from bench.replay import cached_facts

    cached_facts(log)
    facts = dataset.copy_facts(log, scratch() / f"{name}.facts.duckdb")
    answers = Path(f"{facts}.answers.db")
    cached_answers = dataset.answers_path(log)
    try:
        if cached_answers.exists():
            shutil.copyfile(cached_answers, answers)
        with service(db, name, LLM_METRICS_FACTS=str(facts), **env) as server:
            # Also when a copy was there: one computed on another basis (the query code
            # changed) is started over by the service, and the figures must not run beside that.
            started = time.perf_counter()
            basis = _wait_for_answers(answers)
            build_s = time.perf_counter() - started
            yield server
        if not cached_answers.exists() or _wait_for_answers(cached_answers) != basis:
            # Stopped first: copied with its WAL checkpointed.
            shutil.copyfile(answers, cached_answers)
            print(f"  built {cached_answers.name} in {build_s:.1f} s", flush=True)
    finally:
        for path in (facts, Path(f"{facts}.wal"), answers, Path(f"{answers}-wal"),
                     Path(f"{answers}-shm")):
            path.unlink(missing_ok=True)


def _wait_for_answers(path: Path, timeout_s: float = 3600) -> str:
    """Until the service has written every session's answer (`projections.answer_store`):
    a restart finds them on disk, as the benchmarks should. Their basis."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                row = conn.execute("SELECT complete, basis FROM meta").fetchone()
                if row is not None and row[0] == 1:
                    return row[1]
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the session answers in {path} were not built in {timeout_s} s")


def load(port: int, requests, connections: int, seconds: float = 0.0, warmup: float = 0.0,
         cycle: bool = False):
    """Run the load generator (`bench.loadgen`) in its own process against `port`; its report."""
    from bench.loadgen import Report, save

    with tempfile.NamedTemporaryFile(dir=scratch(), suffix=".requests") as f:
        save(f.name, requests)
        out = python("-m", "bench.loadgen", "--port", str(port), "--requests", f.name,
                     "--connections", str(connections), "--seconds", str(seconds),
                     "--warmup", str(warmup), *(["--cycle"] if cycle else []))
    return msgspec.json.decode(out, type=Report)


_scratch: Path | None = None


def scratch() -> Path:
    """This process's folder for throw-away files (under bench/.work, git-ignored), removed
    at exit. One per process: several people may run the benchmarks at once."""
    global _scratch
    if _scratch is None:
        WORK.mkdir(parents=True, exist_ok=True)
        _scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=WORK))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def main_for(run) -> None:
    """`python -m bench.SCRIPT [--smoke]`: run one figure script and print its figures."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds, not minutes)")
    args = parser.parse_args()
    for figure in run(SMOKE if args.smoke else FULL):
        print(msgspec.json.format(msgspec.json.encode(figure)).decode())
