"""The metrics query API and the listings built on it, on the real app: grouping, filters,
windows, as-of, sorting, paging, CSV, and a 400 naming the parameter for every bad value."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import urllib.parse

import pytest

from projections.engine import Engine, QueryTimeout
from tests import factories as f
from tests.conftest import AUTH


async def post(client, events):
    r = await client.post("/events", json=events, headers=AUTH)
    assert r.status == 201, await r.text()
    return await r.json()


async def get(client, path, status=200):
    r = await client.get(path, headers=AUTH)
    assert r.status == status, await r.text()
    return await r.json() if r.content_type == "application/json" else await r.text()


def usage() -> list[dict]:
    """Three users, two models, tags, a failure and a pending request over two days."""
    day = 86_400
    return [
        f.started("s1", "a", model="gpt-4o", user_id="alice", t=0),
        f.completed("s1", "a", model="gpt-4o", user_id="alice", tags=["prod", "chat"], t=1,
                    prompt_tokens=1000, completion_tokens=100, duration_ms=400),
        f.completed("s1", "b", model="gpt-4", user_id="alice", tags=["prod"], t=10,
                    prompt_tokens=10, completion_tokens=10, duration_ms=800),
        f.failed("s2", "c", model="gpt-4", user_id="bob", tags=["chat"], t=day + 5,
                 error_type="RateLimitError"),
        f.completed("s2", "d", model="gpt-4o", user_id="bob", t=day + 6, prompt_tokens=5,
                    completion_tokens=5, duration_ms=100, finish_reason="stop"),
        f.started("s3", "e", model="gpt-4o", user_id="carol", t=day + 7),
    ]


async def test_group_by_user_and_model_with_measures(client):
    await post(client, usage())
    got = await get(client, "/events/metrics/query?group_by=user_id,model&measures="
                            "total_requests,total_tokens,failed_requests,duration_ms_p95")
    rows = {(r["user_id"], r["model"]): r for r in got["rows"]}
    assert set(rows) == {("alice", "gpt-4o"), ("alice", "gpt-4"), ("bob", "gpt-4"),
                         ("bob", "gpt-4o")}
    assert rows[("alice", "gpt-4o")] == {"user_id": "alice", "model": "gpt-4o",
                                         "total_requests": 1, "total_tokens": 1100,
                                         "failed_requests": 0, "duration_ms_p95": 400.0}
    assert rows[("bob", "gpt-4")]["failed_requests"] == 1
    assert rows[("bob", "gpt-4")]["duration_ms_p95"] is None  # no completed request
    assert got["next"] is None


async def test_no_group_gives_one_row_and_tags_count_in_each_group(client):
    await post(client, usage())
    one = await get(client, "/events/metrics/query?measures=total_requests,error_rate")
    assert one["rows"] == [{"total_requests": 4, "error_rate": 0.25}]
    tags = await get(client, "/events/metrics/query?group_by=tag&measures=total_requests")
    assert {r["tag"]: r["total_requests"] for r in tags["rows"]} == {
        "prod": 2, "chat": 2, None: 1}


async def test_filters_repeat_as_any_of_and_windows_use_the_terminal_event_time(client):
    await post(client, usage())
    both = await get(client, "/events/metrics/query?user_id=alice&user_id=bob"
                             "&measures=total_requests")
    assert both["rows"][0]["total_requests"] == 4
    day2 = await get(client, "/events/metrics/query?measures=total_requests&from="
                             + urllib.parse.quote(f.stamp(86_400)) + "&to="
                             + urllib.parse.quote(f.stamp(2 * 86_400)))
    assert day2["rows"][0]["total_requests"] == 2
    day1 = await get(client, "/events/metrics/query?measures=total_requests&from="
                             + f.stamp(0)[:10] + "&to=" + f.stamp(86_400)[:10])
    assert day1["rows"][0]["total_requests"] == 2  # bare dates: UTC midnight
    tagged = await get(client, "/events/metrics/query?tag=chat&measures=total_requests"
                               "&group_by=error_type")
    assert {r["error_type"]: r["total_requests"] for r in tagged["rows"]} == {
        None: 1, "RateLimitError": 1}


async def test_as_of_a_position_answers_as_the_log_was_then(client):
    events = usage()
    await post(client, events[:3])
    then = await get(client, "/events/metrics/query?group_by=user_id&measures=total_requests")
    await post(client, events[3:])
    again = await get(client, "/events/metrics/query?group_by=user_id&measures=total_requests"
                              "&as_of_position=3")
    assert again["rows"] == then["rows"] == [{"user_id": "alice", "total_requests": 2}]
    overall = await get(client, "/events/metrics?as_of_position=3")
    assert overall["total_requests"] == 2 and overall["total_sessions"] == 1


async def test_time_buckets_sort_and_pages(client):
    await post(client, usage())
    got = await get(client, "/events/metrics/query?group_by=time&bucket=1d"
                            "&measures=total_requests")
    assert [r["total_requests"] for r in got["rows"]] == [2, 2]
    assert got["rows"][0]["time"].endswith("T00:00:00Z")
    first = await get(client, "/events/metrics/query?group_by=user_id&measures=total_tokens"
                              "&sort=total_tokens&order=desc&limit=1")
    assert first["rows"] == [{"user_id": "alice", "total_tokens": 1120}] and first["next"] == "1"
    second = await get(client, "/events/metrics/query?group_by=user_id&measures=total_tokens"
                               "&sort=total_tokens&order=desc&limit=1&cursor=1")
    assert second["rows"] == [{"user_id": "bob", "total_tokens": 10}] and second["next"] is None


async def test_csv_by_format_or_accept(client):
    await post(client, usage())
    text = await get(client, "/events/metrics/query?group_by=model&measures=total_requests"
                             "&format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["model"]: r["total_requests"] for r in rows} == {"gpt-4o": "2", "gpt-4": "2"}
    r = await client.get("/events/metrics/users", headers={**AUTH, "accept": "text/csv"})
    assert r.status == 200 and r.content_type == "text/csv"
    assert (await r.text()).splitlines()[0].startswith("user_id,total_requests")


@pytest.mark.parametrize("query, param", [
    ("group_by=colour", "group_by"),
    ("measures=happiness", "measures"),
    ("group_by=time", "group_by"),
    ("group_by=time&bucket=2h", "bucket"),
    ("measures=total_requests&sort=total_tokens", "sort"),
    ("order=sideways", "order"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("cursor=abc", "cursor"),
    ("from=yesterday", "from"),
    ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ("as_of_position=-1", "as_of_position"),
    ("as_of_position=99999999999999999999", "as_of_position"),
])
async def test_bad_questions_are_400_naming_the_parameter(client, query, param):
    r = await client.get("/events/metrics/query?" + query, headers=AUTH)
    assert r.status == 400, await r.text()
    assert param in (await r.json())["error"]


async def test_users_and_tags_listings_and_session_requests(client):
    await post(client, usage())
    users = await get(client, "/events/metrics/users")
    assert [r["user_id"] for r in users["rows"]] == ["alice", "bob"]  # most requests first
    assert users["rows"][0]["total_requests"] == 2
    tags = await get(client, "/events/metrics/tags?sort=tag&order=asc")
    assert [r["tag"] for r in tags["rows"]] == ["chat", "prod", None]  # no tag: last
    page = await get(client, "/events/metrics/session/s1/requests")
    assert [r["request_id"] for r in page["requests"]] == ["b", "a"]  # newest first
    a = page["requests"][1]
    assert a["status"] == "completed" and a["tags"] == ["chat", "prod"]
    assert a["started_at"] is not None and a["duration_ms"] == 400
    assert a["cost_usd"] == pytest.approx((1000 * 2.5 + 100 * 10) / 1e6)
    pending = await get(client, "/events/metrics/session/s3/requests")
    assert pending["requests"][0]["status"] == "pending"
    assert pending["requests"][0]["cost_usd"] is None
    await get(client, "/events/metrics/session/nobody/requests", status=404)


async def test_one_session_with_thousands_of_distinct_tags_stays_fast_to_take(client):
    """Issue 12 (3): 2,500 started events in one session with 20 distinct tags each (0.9 MB)
    froze the old server for 21 s (membership tests on lists). Now the batch is taken and the
    session read back while /health keeps answering."""
    events = [f.started("big", f"r{i}", tags=[f"t{i}-{k}" for k in range(20)],
                        user_id=f"u{i}", model=f"m{i % 50}") for i in range(2500)]
    poster = asyncio.ensure_future(post(client, events))
    worst = 0.0
    while not poster.done():
        started = time.perf_counter()
        assert (await client.get("/health")).status == 200
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.05)
    await poster
    got = await get(client, "/events/metrics/session/big")
    assert got["in_flight_requests"] + got["stale_requests"] == 2500
    assert len(got["users"]) == 2500 and len(got["models"]) == 50
    # Generous: the old server held the loop for 21 s; a loaded 2-core CI box is slow.
    assert worst < 5.0, worst


async def test_an_abandoned_question_stops_in_the_engine(tmp_path):
    """Issue 12 (8): a question whose caller went away (the handler is cancelled) or that runs
    past its time limit is interrupted inside DuckDB, so it stops using the cores."""
    engine = Engine.open(tmp_path / "f.duckdb", readers=1)
    try:
        slow = "SELECT count(*) FROM range(10000000000) a WHERE a % 7 = 3"
        task = asyncio.ensure_future(engine.read(slow))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # With one reader thread, this answers only once the slow query really stopped.
        started = time.perf_counter()
        assert await asyncio.wait_for(engine.read("SELECT 42"), 30) == [(42,)]
        assert time.perf_counter() - started < 20
        with pytest.raises(QueryTimeout):
            await engine.read(slow, timeout=0.3)
        assert await asyncio.wait_for(engine.read("SELECT 1"), 30) == [(1,)]
    finally:
        engine.close()
