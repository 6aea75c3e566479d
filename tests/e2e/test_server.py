"""The real server process, started as `make run` starts it: ingest, read, restart, replay."""

from __future__ import annotations

import os
import subprocess
import urllib.parse

from tests import factories as f
from tests.server import ROOT, ServerProcess


def metrics(server: ServerProcess) -> dict:
    status, total = server.request("GET", "/events/metrics")
    assert status == 200
    status, sessions = server.request("GET", "/events/metrics/sessions?limit=1000")
    assert status == 200
    return {"total": total, "sessions": sessions}


def test_ingest_restart_and_make_replay_agree(tmp_path):
    db = tmp_path / "data" / "events.db"
    events = f.seed_session("abc-123") + f.seed_session("team/a b") + [
        f.started(session_id="open", request_id="x")]
    with ServerProcess(db) as server:
        status, body = server.request("POST", "/events", events)
        assert status == 201 and body["appended"] == len(events)
        status, session = server.request(
            "GET", "/events/metrics/session/" + urllib.parse.quote("team/a b", safe=""))
        assert status == 200 and session["average_duration_ms"] == 3214.29
        before = metrics(server)
        assert server.stop() == 0  # SIGTERM: clean shutdown writes a snapshot
    assert db.with_name("events.db.snapshot").exists()

    with ServerProcess(db) as server:
        assert metrics(server) == before
        assert "loaded snapshot at position" in server.log()

    run = subprocess.run(["make", "replay"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "LLM_METRICS_DB": str(db)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"replayed {len(events)} events" in run.stdout

    with ServerProcess(db) as server:
        assert metrics(server) == before
        # New events after the replay's snapshot are replayed on top of it.
        status, _ = server.request("POST", "/events", [f.completed(session_id="open",
                                                                   request_id="x")])
        assert status == 201
        after = metrics(server)
        assert after["total"]["in_flight_requests"] == 0
        server.kill()  # no clean shutdown: the snapshot is now behind the log

    with ServerProcess(db) as server:
        assert metrics(server) == after


def test_default_secret_is_refused_off_loopback(tmp_path):
    server = ServerProcess(tmp_path / "x.db", LLM_METRICS_HOST="0.0.0.0")
    try:
        server.start(timeout=10)
        raise AssertionError("the server started on 0.0.0.0 with the default secret")
    except RuntimeError as exc:
        assert "refusing to listen" in str(exc) and "LLM_METRICS_SECRET" in str(exc)
