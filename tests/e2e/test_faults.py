"""Faults around the real server process: damaged facts files, undecodable log rows, a full disk,
read-only log files, a full write queue, and SIGTERM in the middle of an append."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import factories as f
from tests.e2e.exchange import exchange
from tests.server import ServerProcess, run_cli

pytestmark = pytest.mark.slow


def batch(name: str, size: int, session: str = "s") -> list[dict]:
    """`size` completed requests with explicit event ids (so a retry is recognised)."""
    return [f.completed(session, f"{name}-{i}", event_id=f"{name}-{i}", prompt_tokens=i,
                        completion_tokens=1) for i in range(size)]


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT position, event_id, type, payload, recorded_at FROM events "
                            "ORDER BY position").fetchall()


def stored_ids(db: Path) -> set[str]:
    return {r[1] for r in rows(db)}


def global_metrics(server: ServerProcess) -> dict:
    status, body = server.request("GET", "/events/metrics")
    assert status == 200, body
    return body


# ---- damaged facts ---------------------------------------------------------------------------

def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for at in range(len(data) // 4, len(data), 4096):  # every block after the header
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def damage_garbage(path: Path) -> None:
    path.write_bytes(b"not a database at all" * 100)


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_garbage],
                         ids=["bit flips", "truncated", "garbage"])
def test_damaged_facts_are_rebuilt_from_the_log(tmp_path, damage):
    """Wherever the damage is, the answers come back whole: at open, or at the first read that
    meets it (a 503 that says so, then the next start rebuilds)."""
    db = tmp_path / "events.db"
    with ServerProcess(db) as server:
        assert server.request("POST", "/events", batch("a", 3000))[0] == 201
        before = global_metrics(server)
    facts = Path(f"{db}.facts.duckdb")
    assert facts.exists()
    damage(facts)
    with ServerProcess(db) as server:
        status, body = server.request("GET", "/events/metrics")
        if status == 503:
            assert "damaged" in body["error"], body
        logs = server.log()
    with ServerProcess(db) as server:
        assert global_metrics(server) == before
        logs += server.log()
    assert "rebuilt from the whole log" in logs


# ---- undecodable rows ------------------------------------------------------------------------

def test_undecodable_row_stops_startup_naming_it_and_replay_can_skip_it(tmp_path):
    db = tmp_path / "events.db"
    with ServerProcess(db) as server:
        assert server.request("POST", "/events", batch("a", 5))[0] == 201
    Path(f"{db}.facts.duckdb").unlink()  # facts past the row would (rightly) skip reading it
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET payload = x'c1c1c1' WHERE position = 3")
    before = rows(db)

    server = ServerProcess(db)
    with pytest.raises(RuntimeError, match="server exited"):
        server.start()
    assert server.proc.returncode not in (0, None)
    log = server.log()
    assert "cannot start" in log and "position 3" in log and "--skip-undecodable" in log, log
    assert "Traceback" not in log, "a clean error, not a crash"
    assert rows(db) == before, "nothing deleted or rewritten"

    env = {"LLM_METRICS_DB": str(db)}
    strict = run_cli("replay", env=env)
    assert strict.returncode == 1 and "position 3" in strict.stderr, strict
    skipping = run_cli("replay", "--skip-undecodable", env=env)
    assert skipping.returncode == 0, skipping.stderr
    assert "skipped 1 undecodable events at positions 3" in skipping.stdout
    assert rows(db) == before

    # The facts replay wrote cover the bad row, so the server starts again, with 4 events.
    with ServerProcess(db) as server:
        assert global_metrics(server)["successful_requests"] == 4


# ---- full disk, size cap, read-only files ----------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB ext4 filesystem mounted from an image file (root only; skipped elsewhere)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("mounting a filesystem image needs root and mkfs.ext4")
    image, mount = tmp_path / "fs.img", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(8 * 1024**2)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem with one file; returns it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            pass
    return filler


def ingest_until_refused(server: ServerProcess, acked: set[str], prefix: str, size: int = 300):
    """Post batches until one is refused; returns that answer."""
    for n in range(200):
        events = batch(f"{prefix}{n}", size)
        answer = exchange(server.url, "POST", "/events", events)
        if answer.status != 201:
            return answer
        acked.update(e["event_id"] for e in events)
    pytest.fail("ingest was never refused")


def assert_refused_cleanly(answer, *words: str) -> None:
    assert answer.status == 503, answer
    assert answer.headers.get("Retry-After", "").isdigit(), answer.headers
    assert "cannot take events" in answer.body["error"], answer.body
    assert any(w in answer.body["error"] for w in words), answer.body


def test_full_disk_answers_503_reads_keep_working_nothing_acknowledged_is_lost(small_fs, tmp_path):
    db = small_fs / "events.db"
    server = ServerProcess(db, LLM_METRICS_FACTS=str(tmp_path / "facts.duckdb")).start()
    acked: set[str] = set()
    try:
        assert server.request("POST", "/events", batch("first", 50))[0] == 201
        acked |= {f"first-{i}" for i in range(50)}
        filler = fill(small_fs)
        answer = ingest_until_refused(server, acked, "full")
        assert_refused_cleanly(answer, "full")
        assert exchange(server.url, "GET", "/health").status == 200
        assert global_metrics(server)["successful_requests"] == len(acked)
        assert exchange(server.url, "POST", "/events", batch("more", 300)).status == 503

        filler.unlink()
        assert server.request("POST", "/events", batch("after", 300))[0] == 201
        acked |= {f"after-{i}" for i in range(300)}
        assert server.stop() == 0
    finally:
        server.kill()
    assert acked <= stored_ids(db)
    with ServerProcess(db, LLM_METRICS_FACTS=str(tmp_path / "facts.duckdb")) as server:
        assert global_metrics(server)["successful_requests"] == len(acked)


def test_no_restart_on_a_full_disk_a_clear_error_instead_of_a_crash(small_fs, tmp_path):
    """Stopped cleanly on a full disk, then started again: SQLite would die of SIGBUS mapping
    its shared-memory file; the service checks the free space first and says what to do."""
    db, facts = small_fs / "events.db", str(tmp_path / "facts.duckdb")
    with ServerProcess(db, LLM_METRICS_FACTS=facts) as server:
        assert server.request("POST", "/events", batch("kept", 100))[0] == 201
        filler = fill(small_fs)
    server = ServerProcess(db, LLM_METRICS_FACTS=facts)
    with pytest.raises(RuntimeError, match="server exited with 1"):
        server.start()
    assert "cannot start: only" in server.log() and "free at least 1 MiB" in server.log()
    filler.unlink()
    with ServerProcess(db, LLM_METRICS_FACTS=facts) as server:
        assert global_metrics(server)["successful_requests"] == 100


def test_size_cap_answers_503_like_a_full_disk(tmp_path):
    """The same promise without root: LLM_METRICS_DB_MAX_SIZE (SQLite's max_page_count)."""
    db = tmp_path / "events.db"
    acked: set[str] = set()
    with ServerProcess(db, LLM_METRICS_DB_MAX_SIZE="300KiB") as server:
        answer = ingest_until_refused(server, acked, "cap")
        assert_refused_cleanly(answer, "full")
        assert acked, "some batches fit under the cap"
        assert global_metrics(server)["successful_requests"] == len(acked)
        assert exchange(server.url, "GET", "/events/metrics/sessions").status == 200
    assert acked == stored_ids(db)
    with ServerProcess(db, LLM_METRICS_DB_MAX_SIZE="10MiB") as server:
        assert server.request("POST", "/events", batch("bigger", 300))[0] == 201
        assert global_metrics(server)["successful_requests"] == len(acked) + 300


def test_read_only_log_answers_503_and_recovers(small_fs, tmp_path):
    """The log's write-ahead file turns immutable (`chattr +i`: even root cannot write it)."""
    if not shutil.which("chattr"):
        pytest.skip("needs chattr")
    db = small_fs / "events.db"
    wal = Path(f"{db}-wal")
    with ServerProcess(db, LLM_METRICS_FACTS=str(tmp_path / "facts.duckdb")) as server:
        assert server.request("POST", "/events", batch("before", 20))[0] == 201
        subprocess.run(["chattr", "+i", str(wal)], check=True)
        try:
            answer = exchange(server.url, "POST", "/events", batch("ro", 20))
            assert_refused_cleanly(answer, "disk I/O", "readonly", "read-only")
            assert global_metrics(server)["successful_requests"] == 20
        finally:
            subprocess.run(["chattr", "-i", str(wal)], check=True)
        assert server.request("POST", "/events", batch("after", 20))[0] == 201
    assert stored_ids(db) == {f"{p}-{i}" for p in ("before", "after") for i in range(20)}


# ---- backpressure ----------------------------------------------------------------------------

def test_full_write_queue_answers_503_with_retry_after(tmp_path):
    db = tmp_path / "events.db"
    acked, refused = set(), set()
    lock = threading.Lock()
    with ServerProcess(db, LLM_METRICS_MAX_PENDING="100") as server:
        def client(n: int) -> None:
            for k in range(6):
                events = batch(f"c{n}-{k}", 60, session=f"s{n}")
                answer = exchange(server.url, "POST", "/events", events)
                ids = {e["event_id"] for e in events}
                with lock:
                    if answer.status == 201:
                        acked.update(ids)
                    else:
                        assert answer.status == 503, answer
                        assert answer.headers["Retry-After"].isdigit()
                        assert "waiting to be written" in answer.body["error"]
                        refused.update(ids)

        with ThreadPoolExecutor(24) as pool:
            list(pool.map(client, range(24)))
        assert refused, "a queue bounded at 100 events must refuse some of 24 concurrent posters"
        assert acked
        assert server.request("POST", "/events", batch("later", 60))[0] == 201
    stored = stored_ids(db)
    assert acked <= stored and not (refused & stored)


# ---- SIGTERM ---------------------------------------------------------------------------------

def refused_within(port: int, seconds: float) -> float | None:
    """Seconds until connecting to `port` is refused (the listener is closed), or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    return None


def test_sigterm_finishes_the_append_in_flight_and_exits_0(tmp_path):
    db = tmp_path / "events.db"
    server = ServerProcess(db).start()
    assert server.request("POST", "/events", batch("warm", 10))[0] == 201
    big = batch("big", 40_000)
    result = {}

    def post_big():
        result["answer"] = exchange(server.url, "POST", "/events", big)

    poster = threading.Thread(target=post_big)
    poster.start()
    time.sleep(0.3)  # the request is being read, parsed or committed
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    refused_after = refused_within(server.port, 5)
    assert refused_after is not None, "still accepting connections 5 s after SIGTERM"
    try:
        code = server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail("still running 10 s after SIGTERM")
    elapsed = time.monotonic() - started
    poster.join(10)
    assert code == 0, server.log()
    assert result["answer"].status == 201, result["answer"]
    assert len(stored_ids(db)) == 40_010
    print(f"SIGTERM to refusing connections: {refused_after:.2f} s, to exit: {elapsed:.2f} s")

    with ServerProcess(db) as again:
        assert "applied 0 events" in again.log() and "at position 40010" in again.log()
        assert global_metrics(again)["successful_requests"] == 40_010
