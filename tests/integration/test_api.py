"""The HTTP API on the real app (aiohttp test server, real SQLite file)."""

from __future__ import annotations

import urllib.parse

import pytest

from tests import factories as f
from tests.conftest import AUTH


async def post(client, events, **headers):
    return await client.post("/events", json=events, headers={**AUTH, **headers})


async def get(client, path, status=200):
    r = await client.get(path, headers=AUTH)
    assert r.status == status, await r.text()
    return await r.json()


async def test_ingest_then_read_the_seed_example(client):
    r = await post(client, f.seed_session("abc-123"))
    assert r.status == 201
    assert await r.json() == {"appended": 30, "duplicates": 0, "last_position": 30}
    got = await get(client, "/events/metrics/session/abc-123")
    assert got["average_duration_ms"] == 3214.29 and got["average_tokens_per_request"] == 1485.71
    total = await get(client, "/events/metrics")
    assert total["total_sessions"] == 1 and total["total_requests"] == 15


async def test_reposting_is_idempotent_and_conflicts_are_409(client):
    events = [f.started(event_id="e1"), f.completed(event_id="e2")]
    assert (await post(client, events)).status == 201
    r = await post(client, events)
    assert r.status == 201 and (await r.json())["duplicates"] == 2
    r = await post(client, [f.completed(event_id="e2", prompt_tokens=999)])
    assert r.status == 409
    body = await r.json()
    assert body["details"][0]["path"] == "$.event_id"
    r = await post(client, [f.failed(event_id="e3")])
    assert r.status == 409 and (await r.json())["details"][0]["path"] == "$.request_id"
    assert (await get(client, "/events/metrics"))["total_requests"] == 1


async def test_a_bad_event_rejects_the_whole_request(client):
    r = await post(client, [f.started(request_id="ok"), f.completed(prompt_tokens=-1)])
    assert r.status == 400
    body = await r.json()
    assert body["details"] == [{"index": 1, "path": "$.prompt_tokens",
                                "message": "Expected `int` >= 0"}]
    assert (await get(client, "/events/metrics"))["total_sessions"] == 0


async def test_ndjson(client):
    body = "\n".join(map(str, [])) + "\n".join(
        __import__("json").dumps(e) for e in [f.started(), f.completed()]) + "\n"
    r = await client.post("/events", data=body.encode(),
                          headers={**AUTH, "content-type": "application/x-ndjson"})
    assert r.status == 201 and (await r.json())["appended"] == 2


@pytest.mark.parametrize("headers,status", [({}, 401), ({"x-internal-auth": "nope"}, 401)])
async def test_auth(client, headers, status):
    r = await client.get("/events/metrics", headers=headers)
    assert r.status == status
    assert "error" in await r.json()
    assert (await client.get("/health")).status == 200


async def test_unknown_session_and_route_are_json_404(client):
    assert "no events" in (await get(client, "/events/metrics/session/nope", 404))["error"]
    assert "no such route" in (await get(client, "/nope", 404))["error"]


@pytest.mark.parametrize("sid", ["team/a b", "100%", 'q"uote', "emoji 🚀", "'; DROP TABLE x;--"])
async def test_any_session_id_works_when_url_encoded(client, sid):
    assert (await post(client, [f.completed(session_id=sid)])).status == 201
    got = await get(client, "/events/metrics/session/" + urllib.parse.quote(sid, safe=""))
    assert got["session_id"] == sid and got["total_requests"] == 1


async def test_sessions_listing_pages_sorts_and_filters(client):
    events = []
    for i in range(7):
        events.append(f.completed(session_id=f"s{i}", request_id="r", prompt_tokens=i,
                                  completion_tokens=0, t=i, model="a" if i % 2 else "b",
                                  user_id=f"u{i % 3}"))
    events.append(f.failed(session_id="s3", request_id="x"))
    assert (await post(client, events)).status == 201
    page = await get(client, "/events/metrics/sessions?limit=3")
    assert [s["session_id"] for s in page["sessions"]] == ["s0", "s1", "s2"]
    assert page["next"] == "3" and page["total_sessions"] == 7
    page = await get(client, "/events/metrics/sessions?limit=3&cursor=6")
    assert [s["session_id"] for s in page["sessions"]] == ["s6"] and page["next"] is None
    top = await get(client, "/events/metrics/sessions?sort=total_tokens&limit=2")
    assert [s["session_id"] for s in top["sessions"]] == ["s6", "s5"]
    asc = await get(client, "/events/metrics/sessions?sort=total_tokens&order=asc&limit=1")
    assert asc["sessions"][0]["session_id"] == "s0"
    only_a = await get(client, "/events/metrics/sessions?model=a")
    assert {s["session_id"] for s in only_a["sessions"]} == {"s1", "s3", "s5"}
    failing = await get(client, "/events/metrics/sessions?has_failures=true")
    assert [s["session_id"] for s in failing["sessions"]] == ["s3"]
    user = await get(client, "/events/metrics/sessions?user_id=u0")
    assert {s["session_id"] for s in user["sessions"]} == {"s0", "s3", "s6"}
    since = await get(client, "/events/metrics/sessions?since=" + urllib.parse.quote(f.stamp(6)))
    assert [s["session_id"] for s in since["sessions"]] == ["s6"]


@pytest.mark.parametrize("query,name", [("limit=0", "limit"), ("limit=x", "limit"),
                                        ("cursor=-1", "cursor"), ("sort=color", "sort"),
                                        ("has_failures=maybe", "has_failures"),
                                        ("since=yesterday", "since")])
async def test_bad_listing_parameters_name_the_parameter(client, query, name):
    assert f"'{name}'" in (await get(client, f"/events/metrics/sessions?{query}", 400))["error"]


async def test_models_users_and_filters(client):
    await post(client, [
        f.completed(model="gpt-4", prompt_tokens=1000, completion_tokens=1000, user_id="ann",
                    tags=["prod"]),
        f.completed(request_id="2", model="local-llm", user_id="bob"),
        f.failed(session_id="s2", request_id="3", model="gpt-4", error_type="Timeout",
                 user_id="ann"),
    ])
    listed = await get(client, "/events/metrics/models")
    assert [m["model"] for m in listed["models"]] == ["gpt-4", "local-llm"]
    gpt4 = await get(client, "/events/metrics/models/gpt-4")
    assert gpt4["priced"] is True and gpt4["total_cost_usd"] == pytest.approx(0.09)
    assert gpt4["error_rate"] == 0.5 and gpt4["errors_by_type"] == {"Timeout": 1}
    assert (await get(client, "/events/metrics/models/local-llm"))["priced"] is False
    await get(client, "/events/metrics/models/none", 404)
    ann = await get(client, "/events/metrics/users/ann")
    assert ann["total_requests"] == 2 and list(ann["by_model"]) == ["gpt-4"]
    await get(client, "/events/metrics/users/carol", 404)
    total = await get(client, "/events/metrics")
    assert total["unpriced_models"] == ["local-llm"]
    assert (await get(client, "/events/metrics?model=gpt-4"))["total_requests"] == 2
    assert (await get(client, "/events/metrics?tag=prod"))["total_requests"] == 1
    both = await get(client, "/events/metrics?tag=prod&user_id=ann")  # answered by a replay
    assert both["total_requests"] == 1 and both["total_sessions"] == 1


async def test_time_windows_and_as_of(client):
    await post(client, [f.completed(request_id="1", t=10), f.completed(request_id="2", t=100)])
    await post(client, [f.failed(request_id="3", t=200)])
    window = await get(client, "/events/metrics?from=" + urllib.parse.quote(f.stamp(50))
                       + "&to=" + urllib.parse.quote(f.stamp(150)))
    assert window["total_requests"] == 1
    assert (await get(client, "/events/metrics?as_of_position=2"))["failed_requests"] == 0
    assert (await get(client, "/events/metrics?as_of_position=3"))["failed_requests"] == 1
    session = await get(client, "/events/metrics/session/s1?as_of_position=1")
    assert session["total_requests"] == 1
    await get(client, "/events/metrics/session/s1?to=" + urllib.parse.quote(f.stamp(0)), 404)
    assert "'from'" in (await get(client, "/events/metrics?from=bad", 400))["error"]
    await get(client, "/events/metrics?as_of_position=1&as_of=2026-01-01T00:00:00Z", 400)


async def test_as_of_a_recording_time(client):
    await post(client, [f.completed(request_id="1")])
    health = await get(client, "/health")
    assert health["position"] == 1
    far_past = await get(client, "/events/metrics?as_of=2000-01-01T00:00:00Z")
    assert far_past["total_requests"] == 0
    now = await get(client, "/events/metrics?as_of=2100-01-01T00:00:00Z")
    assert now["total_requests"] == 1


async def test_timeseries(client):
    await post(client, [
        f.completed(request_id="1", t=30, duration_ms=100, model="a"),
        f.completed(request_id="2", t=90, duration_ms=300, model="b"),
        f.failed(request_id="3", t=3700, model="a"),
    ])
    frm, to = urllib.parse.quote(f.stamp(0)), urllib.parse.quote(f.stamp(7200))
    hours = await get(client, f"/events/metrics/timeseries?bucket=1h&from={frm}&to={to}")
    assert hours["bucket"] == "1h"
    assert [(p["requests"], p["failed_requests"]) for p in hours["points"]] == [(2, 0), (1, 1)]
    assert hours["points"][0]["duration_ms_p95"] == pytest.approx(300, rel=0.01)
    minutes = await get(client, f"/events/metrics/timeseries?bucket=1m&from={frm}&to="
                                + urllib.parse.quote(f.stamp(180)))
    assert [p["requests"] for p in minutes["points"]] == [1, 1, 0]
    only_a = await get(client, f"/events/metrics/timeseries?bucket=1d&from={frm}&to={to}&model=a")
    assert [p["requests"] for p in only_a["points"]] == [2]
    session = await get(client, f"/events/metrics/timeseries?bucket=1h&from={frm}&to={to}"
                                "&session_id=nobody")
    assert sum(p["requests"] for p in session["points"]) == 0
    too_many = await get(client, f"/events/metrics/timeseries?bucket=1m&from={frm}&to="
                                 + urllib.parse.quote(f.stamp(86400 * 30)), 400)
    assert "bucket" in too_many["error"]
    assert "'bucket'" in (await get(client, "/events/metrics/timeseries?bucket=2m", 400))["error"]


async def test_sessions_sorted_by_cost(client):
    await post(client, [
        f.completed(session_id="cheap", model="gpt-4o-mini", prompt_tokens=1000),
        f.completed(session_id="dear", model="gpt-4", prompt_tokens=1000),
        f.completed(session_id="given", model="unknown", cost_usd=5.0),
        f.completed(session_id="free", model="unknown"),
    ])
    page = await get(client, "/events/metrics/sessions?sort=total_cost_usd")
    assert [s["session_id"] for s in page["sessions"]] == ["given", "dear", "cheap", "free"]
    assert [s["total_cost_usd"] > 0 for s in page["sessions"]] == [True, True, True, False]


async def test_many_models_keep_every_answer_bounded(aiohttp_client, config):
    """Issue 12 (4): with more models than LLM_METRICS_TOP_MODELS, `by_model` and
    `unpriced_models` hold the ones with most requests and `other_models` counts the rest;
    the models listing is a page with a cursor. Nothing is lost: the pages add up."""
    from dataclasses import replace

    from service.app import create_app

    client = await aiohttp_client(create_app(replace(config, top_models=5)))
    events = [f.completed(f"s{i % 3}", f"r{i}-{j}", model=f"m{i:02d}")
              for i in range(30) for j in range(1 + (i == 7) * 5 + (i == 11) * 3)]
    assert (await client.post("/events", json=events, headers=AUTH)).status == 201
    overall = await (await client.get("/events/metrics", headers=AUTH)).json()
    assert len(overall["by_model"]) == 5 and overall["other_models"] == 25
    assert {"m07", "m11"} <= set(overall["by_model"])  # most requests first
    assert len(overall["unpriced_models"]) == 5
    assert overall["total_requests"] == len(events)  # totals count every model
    session = await (await client.get("/events/metrics/session/s1", headers=AUTH)).json()
    assert len(session["by_model"]) == 5 and session["other_models"] == 5
    seen, cursor = [], None
    while True:
        page = await (await client.get("/events/metrics/models?limit=7"
                                       + (f"&cursor={cursor}" if cursor else ""),
                                       headers=AUTH)).json()
        seen += [m["model"] for m in page["models"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"m{i:02d}" for i in range(30)]
    bad = await client.get("/events/metrics/models?limit=0", headers=AUTH)
    assert bad.status == 400 and "limit" in (await bad.text())
