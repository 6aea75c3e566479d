"""The client library against a real service process (and a proxy that misbehaves on purpose)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from llm_metrics_client import AsyncMetricsClient, Backoff, MetricsClient
from llm_metrics_client._core import now
from tests.http_stubs import SEEN, ThreadedApp, flaky_proxy, read_log
from tests.server import SECRET, ServerProcess, free_port

pytestmark = pytest.mark.slow

FAST = Backoff(base=0.02, cap=0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("client") / "events.db") as server:
        yield server


def sid() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


def session(server, session_id):
    status, body = server.request("GET", f"/events/metrics/session/{session_id}")
    assert status == 200, body
    return body


def of_session(server, session_id):
    return [e for e in read_log(server.url) if e["session_id"] == session_id]


def test_track_sends_started_then_completed_with_what_the_caller_recorded(server):
    s = sid()
    with MetricsClient(server.url, SECRET) as metrics:
        with metrics.track(s, "gpt-4o", user_id="u1", tags=["beta"]) as req:
            time.sleep(0.05)
            req.prompt_tokens, req.completion_tokens, req.tool_calls = 120, 30, 2
        assert metrics.flush(10)
    [started, completed] = of_session(server, s)
    assert started["type"] == "LLM_REQUEST_STARTED"
    assert completed["type"] == "LLM_REQUEST_COMPLETED"
    assert started["request_id"] == completed["request_id"]
    assert started["event_id"] != completed["event_id"]
    assert completed["duration_ms"] >= 50
    assert (completed["prompt_tokens"], completed["completion_tokens"]) == (120, 30)
    assert completed["tool_calls"] == 2 and completed["has_tool_calls"] is True
    assert completed["user_id"] == "u1" and completed["tags"] == ["beta"]
    m = session(server, s)
    assert (m["successful_requests"], m["total_tokens"], m["requests_with_tools"]) == (1, 150, 1)


def test_an_exception_in_the_block_sends_failed_with_its_type_and_propagates(server):
    s = sid()
    metrics = MetricsClient(server.url, SECRET)
    with pytest.raises(TimeoutError):
        with metrics.track(s, "gpt-4o"):
            raise TimeoutError("upstream took too long")
    assert metrics.close()
    [_, failed] = of_session(server, s)
    assert failed["type"] == "LLM_REQUEST_FAILED"
    assert failed["error_type"] == "TimeoutError"
    assert failed["error_message"] == "upstream took too long"
    assert session(server, s)["failed_requests"] == 1


def test_batches_by_size_and_by_time(server):
    s = sid()
    with ThreadedApp(flaky_proxy(server.url, [])) as proxy:
        metrics = MetricsClient(proxy.url, SECRET, batch_size=50, flush_interval=0.3)
        for i in range(120):
            metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "request_id": f"r{i}",
                          "model": "m", "timestamp": now(), "event_id": f"{s}-{i}"})
        # Two full batches leave at once; the last 20 wait for the time bound, not for flush().
        deadline = time.monotonic() + 5
        while metrics.stats.sent < 120 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [len(b) for b in proxy.app[SEEN]] == [50, 50, 20]
        assert metrics.stats.batches == 3
        metrics.close()
    assert session(server, s)["in_flight_requests"] == 120


def test_a_lone_event_leaves_after_the_interval_without_flush(server):
    s = sid()
    metrics = MetricsClient(server.url, SECRET, flush_interval=0.2)
    time.sleep(0.3)  # the flusher is idle, waiting for work
    metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "request_id": "r",
                  "model": "m", "timestamp": now()})
    deadline = time.monotonic() + 5
    while metrics.stats.sent < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.stats.sent == 1
    metrics.close()


def test_retries_5xx_429_and_lost_replies_without_double_counting(server):
    s = sid()
    # 503, 429, then the service commits but the reply is lost (502), then all is well.
    with ThreadedApp(flaky_proxy(server.url, [503, 429, 1502])) as proxy:
        metrics = MetricsClient(proxy.url, SECRET, backoff=FAST)
        with metrics.track(s, "gpt-4o") as req:
            req.prompt_tokens, req.completion_tokens = 10, 5
        assert metrics.flush(10)
        assert metrics.stats.retries == 3
        assert metrics.stats.sent == 2
        # The same two events, with the same ids, every time.
        ids = [tuple(e["event_id"] for e in batch) for batch in proxy.app[SEEN]]
        assert len(ids) == 4 and len(set(ids)) == 1
        metrics.close()
    m = session(server, s)
    assert (m["total_requests"], m["total_tokens"]) == (1, 15)
    assert len(of_session(server, s)) == 2


def test_service_down_then_up_bounded_memory_drops_the_oldest(tmp_path, caplog):
    port = free_port()
    metrics = MetricsClient(f"http://127.0.0.1:{port}", SECRET, batch_size=10, max_queue=50,
                            flush_interval=0.05, backoff=FAST)
    s = sid()
    def emit(i):
        metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "request_id": f"r{i}",
                      "model": "m", "timestamp": "2026-01-01T00:00:00Z", "event_id": f"{s}-{i}"})

    with caplog.at_level(logging.WARNING, logger="llm_metrics.client"):
        for i in range(10):
            emit(i)
        deadline = time.monotonic() + 5
        while not metrics.stats.retries and time.monotonic() < deadline:
            time.sleep(0.01)
        # The flusher now holds r0..r9 and retries them; the buffer keeps the newest 50 of 110.
        for i in range(10, 120):
            emit(i)
        assert not metrics.flush(0.3)  # nobody listens yet
    assert metrics.stats.dropped == 60
    assert metrics.stats.retries > 0
    assert any("dropped" in r.message for r in caplog.records)
    with ServerProcess(tmp_path / "late.db", port=port) as server:
        assert metrics.flush(15)
        metrics.close()
        stored = sorted(int(e["request_id"][1:]) for e in of_session(server, s))
    assert stored == list(range(10)) + list(range(70, 120))


def test_events_the_service_refuses_are_dropped_and_the_rest_delivered(server, caplog):
    s = sid()
    metrics = MetricsClient(server.url, SECRET)
    good = {"type": "LLM_REQUEST_STARTED", "session_id": s, "model": "m",
            "timestamp": "2026-01-01T00:00:00Z"}
    metrics.emit({**good, "request_id": "ok1"})
    metrics.emit({**good, "request_id": "bad", "prompt_tokens": 3})  # not a STARTED field
    metrics.emit({**good, "request_id": "ok2"})
    with caplog.at_level(logging.ERROR, logger="llm_metrics.client"):
        assert metrics.flush(10)
    assert (metrics.stats.rejected, metrics.stats.sent) == (1, 2)
    assert "prompt_tokens" in caplog.text
    metrics.close()
    assert sorted(e["request_id"] for e in of_session(server, s)) == ["ok1", "ok2"]


def test_closed_client_refuses_new_events(server):
    metrics = MetricsClient(server.url, SECRET)
    assert metrics.close()
    with pytest.raises(RuntimeError, match="closed"):
        metrics.emit({})


async def test_async_client_tracks_batches_and_retries(server):
    s = sid()
    with ThreadedApp(flaky_proxy(server.url, [500, 1503])) as proxy:
        async with AsyncMetricsClient(proxy.url, SECRET, backoff=FAST) as metrics:
            async with metrics.track(s, "claude-3") as req:
                await asyncio.sleep(0.02)
                req.prompt_tokens, req.completion_tokens, req.has_tool_calls = 7, 3, True
            with pytest.raises(KeyError):
                async with metrics.track(s, "claude-3"):
                    raise KeyError("x")
            assert await metrics.flush(10)
            assert metrics.stats.retries == 2
            assert metrics.stats.sent == 4
    m = session(server, s)
    assert (m["successful_requests"], m["failed_requests"], m["total_tokens"]) == (1, 1, 10)
    assert m["requests_with_tools"] == 1
    failed = [e for e in of_session(server, s) if e["type"] == "LLM_REQUEST_FAILED"]
    assert failed[0]["error_type"] == "KeyError"


async def test_async_client_bounded_memory_and_close_reports_loss():
    port = free_port()
    metrics = AsyncMetricsClient(f"http://127.0.0.1:{port}", SECRET, batch_size=5, max_queue=20,
                                 flush_interval=0.01, backoff=FAST)
    for i in range(100):
        metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": "x", "request_id": f"r{i}",
                      "model": "m", "timestamp": "2026-01-01T00:00:00Z"})
    assert not await metrics.flush(0.2)
    assert metrics.stats.dropped >= 75
    assert not await metrics.close(timeout=0.1)
    assert metrics.stats.sent == 0


def test_a_batch_too_large_for_the_service_is_split(server):
    s = sid()
    with ThreadedApp(flaky_proxy(server.url, [413])) as proxy:
        metrics = MetricsClient(proxy.url, SECRET, batch_size=4, flush_interval=0.05)
        for i in range(4):
            metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "request_id": f"r{i}",
                          "model": "m", "timestamp": now()})
        assert metrics.flush(10)
        assert [len(b) for b in proxy.app[SEEN]] == [4, 2, 2]
        assert (metrics.stats.sent, metrics.stats.rejected) == (4, 0)
        metrics.close()
    assert len(of_session(server, s)) == 4


async def test_unserialisable_events_are_dropped_not_fatal(server, caplog):
    import datetime

    s = sid()
    for flavour in (MetricsClient, AsyncMetricsClient):
        metrics = flavour(server.url, SECRET)
        metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "model": "m",
                      "request_id": f"{flavour.__name__}-bad",
                      "timestamp": datetime.datetime.now()})  # not JSON
        metrics.emit({"type": "LLM_REQUEST_STARTED", "session_id": s, "model": "m",
                      "request_id": f"{flavour.__name__}-ok", "timestamp": now()})
        if flavour is MetricsClient:
            assert metrics.flush(10)
            metrics.close()
        else:
            assert await metrics.flush(10)
            await metrics.close()
        assert (metrics.stats.rejected, metrics.stats.sent) == (1, 1)
    assert "not JSON-serialisable" in caplog.text
    assert sorted(e["request_id"] for e in of_session(server, s)) == [
        "AsyncMetricsClient-ok", "MetricsClient-ok"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_refused_key_is_one_warning_with_the_reason_and_is_in_stats(server, caplog,
                                                                           flavour):
    s = sid()
    event = {"type": "LLM_REQUEST_STARTED", "session_id": s, "request_id": "r1", "model": "m",
             "timestamp": "2026-01-01T00:00:00Z", "event_id": f"{s}-1"}
    with caplog.at_level(logging.INFO, logger="llm_metrics.client"):
        if flavour == "sync":
            metrics = MetricsClient(server.url, "not-a-key", flush_interval=0.01, backoff=FAST)
            metrics.emit(event)
            assert not metrics.flush(1.0)
            metrics.close(0.1)
        else:
            metrics = AsyncMetricsClient(server.url, "not-a-key", flush_interval=0.01,
                                         backoff=FAST)
            metrics.emit(event)
            assert not await metrics.flush(1.0)
            await metrics.close(0.1)
    assert metrics.stats.auth_failures >= 2  # retried, as the README says
    assert "401" in metrics.stats.last_auth_error and "not a configured key" in \
        metrics.stats.last_auth_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "refused the client's key" in r.getMessage()]
    assert len(warnings) == 1 and "not a configured key" in warnings[0].getMessage()
    assert "not-a-key" not in caplog.text


def test_the_sync_client_and_the_wrappers_import_without_aiohttp():
    import subprocess
    import sys
    code = ("import sys; sys.modules['aiohttp'] = None\n"
            "import llm_metrics_client, llm_metrics_client.openai, llm_metrics_client.anthropic\n"
            "from llm_metrics_client import MetricsClient\n"
            "try:\n    llm_metrics_client.AsyncMetricsClient\nexcept ImportError as e:\n"
            "    print('async needs aiohttp', 'llm-metrics-client[async]' in str(e))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "async needs aiohttp True"
