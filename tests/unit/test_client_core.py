"""The client's decisions without I/O: what a reply means, the backoff, the bounded buffer."""

from __future__ import annotations

import json
import logging

from llm_metrics_client._core import Backoff, Buffer, Drop, Retry, Sent, Stats, outcome

BATCH = [{"n": i} for i in range(4)]


def reply(status, body, headers=None):
    return outcome(BATCH, status, json.dumps(body).encode(), headers or {})


def test_success_counts_appended_and_duplicates():
    assert reply(201, {"appended": 3, "duplicates": 1, "last_position": 9}) == Sent(3, 1)


def test_transient_failures_are_retried_honouring_retry_after():
    assert reply(503, {"error": "disk full"}, {"Retry-After": "2"}) == Retry(
        "HTTP 503: disk full", 2.0)
    assert isinstance(reply(429, {"error": "slow down"}), Retry)
    assert isinstance(reply(500, {"error": "boom"}), Retry)
    assert isinstance(reply(401, {"error": "wrong key"}), Retry)
    assert reply(502, {}, {"Retry-After": "soon"}).retry_after is None
    assert isinstance(outcome(BATCH, 502, b"<html>bad gateway</html>", {}), Retry)


def test_refused_events_are_dropped_and_the_rest_kept():
    result = reply(400, {"error": "invalid", "details": [
        {"index": 1, "path": "$.prompt_tokens", "message": "x"},
        {"index": 3, "path": "$", "message": "y"}, {"index": 99, "path": "$", "message": "z"}]})
    assert isinstance(result, Drop)
    assert result.dropped == [{"n": 1}, {"n": 3}] and result.keep == [{"n": 0}, {"n": 2}]
    # Without details nothing tells which event is at fault: the whole batch goes.
    whole = reply(409, {"error": "conflict"})
    assert whole.dropped == BATCH and whole.keep == []
    # Too large: keep everything (the sender halves the batch).
    assert reply(413, {"error": "too big"}) == Drop("HTTP 413: too big", [], BATCH)


def test_backoff_grows_is_capped_and_jittered():
    backoff = Backoff(base=0.1, cap=2.0)
    for attempt in range(40):
        delay = backoff.delay(attempt)
        expected = min(2.0, 0.1 * 2 ** attempt)
        assert expected * 0.5 <= delay <= expected
    assert backoff.delay(3, retry_after=30) == 2.0
    assert backoff.delay(3, retry_after=0.5) == 0.5


def test_buffer_drops_the_oldest_and_warns(caplog):
    stats = Stats()
    buffer = Buffer(3, stats)
    with caplog.at_level(logging.WARNING, logger="llm_metrics.client"):
        for i in range(5):
            buffer.add(i)
    assert list(buffer.events) == [2, 3, 4] and stats.dropped == 2 and stats.queued == 5
    assert "dropped" in caplog.text
    taken = buffer.take(2)
    buffer.add(5)
    buffer.put_back(taken)  # older than what came since: to the front, and the bound holds
    assert list(buffer.events) == [3, 4, 5] and stats.dropped == 3
