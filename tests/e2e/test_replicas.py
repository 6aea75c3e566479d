"""Several real server processes on one PostgreSQL log (`LLM_METRICS_DB=postgresql://...`)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from tests import factories
from tests.postgres import DSN, schema_for_processes
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def replica(tmp: Path, name: str, url: str, **env: str) -> ServerProcess:
    """A replica with its own facts and log file (named after `name`) on the shared log; its
    connections carry `application_name=llm-<name>`, so a test can find them."""
    # The first argument only names the log file; LLM_METRICS_DB (the env) wins over it.
    return ServerProcess(tmp / f"{name}.db", LLM_METRICS_DB=f"{url}&application_name=llm-{name}",
                         LLM_METRICS_FACTS=str(tmp / f"{name}.facts.duckdb"), **env)


def position(server: ServerProcess) -> int:
    status, body = server.request("GET", "/health")
    assert status == 200, body
    assert body["lag_s"] >= 0  # a replica of a shared log says how far behind it may be
    return body["position"]


def converge(servers: list[ServerProcess], expected: int, timeout: float = 10.0) -> None:
    """Wait until every replica is healthy and at `expected`."""
    deadline = time.monotonic() + timeout
    while (answers := [s.request("GET", "/health") for s in servers]) != [
            (200, body) for _, body in answers] or [b["position"] for _, b in answers] != [
            expected] * len(servers):
        assert time.monotonic() < deadline, answers
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three replicas on one fresh schema, shared by this module's tests (distinct sessions)."""
    tmp = tmp_path_factory.mktemp("replicas")
    with schema_for_processes() as url:
        servers = [replica(tmp, name, url) for name in "abc"]
        try:
            for server in servers:
                server.start()
            yield servers
        finally:
            for server in servers:
                server.__exit__(None, None, None)


def test_each_replica_sees_what_the_others_append(cluster):
    a, b, c = cluster
    status, body = a.request("POST", "/events", factories.seed_session("seed"))
    assert status == 201, body
    # Read-your-writes on the replica that acknowledged: no waiting.
    status, seen = a.request("GET", "/events/metrics/session/seed")
    assert status == 200, seen
    assert (seen["total_requests"], seen["average_duration_ms"]) == (15, 3214.29)
    for n, server in enumerate((b, c)):
        status, body = server.request("POST", "/events", [
            factories.started(f"from-{n}", "r1"), factories.completed(f"from-{n}", "r1")])
        assert status == 201, body
    converge(cluster, body["last_position"])
    views = [s.request("GET", "/events/metrics")[1] for s in cluster]
    assert views[0] == views[1] == views[2]
    for server in cluster:
        assert server.request("GET", "/events/metrics/session/seed")[1] == seen
        assert server.request("GET", "/events/metrics/session/from-1")[1]["total_requests"] == 1


def test_two_replicas_ingesting_the_same_batches_at_once(cluster):
    a, b, _ = cluster
    batches = [[factories.started(f"same-{n}", f"r{i}", event_id=f"same-{n}-{i}-s")
                for i in range(20)]
               + [factories.completed(f"same-{n}", f"r{i}", event_id=f"same-{n}-{i}-c")
                  for i in range(20)] for n in range(10)]
    answers: dict[str, list] = {"a": [], "b": []}

    def post_all(name, server):
        for events in batches:
            answers[name].append(server.request("POST", "/events", events))

    threads = [threading.Thread(target=post_all, args=item) for item in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [body for name in answers for status, body in answers[name] if status == 201]
    assert len(results) == 2 * len(batches)
    assert sum(r["appended"] for r in results) == 400
    assert sum(r["duplicates"] for r in results) == 400
    # The terminal event of same-0/r0 is stored (via a or b): a second one is a conflict
    # on any replica, whichever acknowledged the first.
    for server in cluster:
        status, body = server.request("POST", "/events", factories.failed("same-0", "r0"))
        assert status == 409, body
        assert body["details"][0]["path"] == "$.request_id"
    converge(cluster, max(r["last_position"] for r in results))
    for server in cluster:
        for n in range(10):
            status, body = server.request("GET", f"/events/metrics/session/same-{n}")
            assert (body["total_requests"], body["in_flight_requests"]) == (20, 0)


def test_visibility_on_the_other_replicas_is_fast(cluster):
    """Post on one replica, poll another: the lag stays far below a second (bench: p99)."""
    a, b, _ = cluster
    lags = []
    for n in range(30):
        status, body = a.request("POST", "/events", factories.started(f"lag-{n}", "r"))
        assert status == 201
        sent = time.perf_counter()
        while position(b) < body["last_position"]:
            assert time.perf_counter() - sent < 2.0, "replica b did not see the event in 2 s"
        lags.append(time.perf_counter() - sent)
    assert statistics.median(lags) < 0.5


def test_a_restarted_replica_continues_from_its_facts_and_catches_up(tmp_path):
    with schema_for_processes() as url:
        with replica(tmp_path, "a", url) as a, replica(tmp_path, "b", url) as b:
            status, body = a.request("POST", "/events", factories.seed_session("before"))
            assert status == 201
            assert a.stop() == 0
            status, body = b.request("POST", "/events", factories.seed_session("while-down"))
            assert status == 201
            a.start()
            # Only what was appended while it was down is applied at start.
            assert "applied 30 events" in a.log()
            assert position(a) == body["last_position"]  # caught up before listening
            assert (a.request("GET", "/events/metrics")[1]
                    == b.request("GET", "/events/metrics")[1])


def _terminate(application_name: str) -> int:
    async def run() -> int:
        admin = await asyncpg.connect(DSN)
        try:
            return await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1", application_name)
        finally:
            await admin.close()

    return asyncio.run(run())


def test_a_replica_whose_connections_are_terminated_recovers_by_itself(tmp_path):
    """Issue 12 item 5: `pg_terminate_backend` on every connection of replica b, three times,
    then for a while without pause: b says 503 with the reason while it cannot follow, keeps
    no stale 200, and follows the log again by itself (nothing restarted)."""
    with schema_for_processes() as url:
        with replica(tmp_path, "a", url) as a, \
                replica(tmp_path, "b", url, LLM_METRICS_TAIL_POLL="0.1") as b:
            for round_ in range(3):
                assert _terminate("llm-b") >= 1
                status, body = a.request("POST", "/events", [
                    factories.started(f"kill-{round_}", "r"),
                    factories.completed(f"kill-{round_}", "r")])
                assert status == 201, body
                converge([a, b], body["last_position"])
            # Keep killing: every read of b fails, and /health says so.
            reasons = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not reasons:
                _terminate("llm-b")
                status, health = b.request("GET", "/health")
                if status == 503:
                    reasons.append(health["reason"])
            assert reasons and "not following the log" in reasons[0], reasons
            status, body = a.request("POST", "/events", factories.seed_session("after-kills"))
            assert status == 201
            converge([a, b], body["last_position"])
            assert (b.request("GET", "/events/metrics/session/after-kills")[1]
                    == a.request("GET", "/events/metrics/session/after-kills")[1])
            status, body = b.request("POST", "/events", factories.started("own-after", "r"))
            assert status == 201, body
            assert "cannot follow the log" in b.log() and "following the log again" in b.log()
