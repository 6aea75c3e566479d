"""`GET /events` (the log read back as wire events) and `GET /events/metrics/stream` (SSE)."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import AUTH
from tests.factories import completed, failed, seed_session, started


async def post(client, events):
    resp = await client.post("/events", json=events, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


async def test_log_reads_back_wire_events_that_reimport_as_duplicates(client):
    events = seed_session("abc")
    await post(client, events)
    resp = await client.get("/events?after=0&limit=10000", headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    assert resp.headers["x-last-position"] == "30"
    assert resp.headers["x-log-position"] == "30"
    body = await resp.text()
    got = lines(body)
    assert len(got) == 30
    assert [e["type"] for e in got] == [e["type"] for e in events]
    assert all(e["event_id"] for e in got)
    assert got[1]["prompt_tokens"] == 900 and got[1]["has_tool_calls"] is True
    # Posting the export again changes nothing.
    again = await client.post("/events", data=body.encode(), headers={
        **AUTH, "content-type": "application/x-ndjson"})
    assert (await again.json())["duplicates"] == 30
    totals = await (await client.get("/events/metrics", headers=AUTH)).json()
    assert totals["total_requests"] == 15


async def test_log_pages_and_time_window(client):
    await post(client, [started("s", f"r{i}", t=i * 60) for i in range(10)])
    resp = await client.get("/events?after=3&limit=4", headers=AUTH)
    assert [e["request_id"] for e in lines(await resp.text())] == ["r3", "r4", "r5", "r6"]
    assert resp.headers["x-last-position"] == "7"
    # [from, to) on event time; the cursor still moves past filtered rows.
    resp = await client.get("/events?limit=5&from=2026-01-01T00:02:00Z&to=2026-01-01T00:04:00Z",
                            headers=AUTH)
    assert [e["request_id"] for e in lines(await resp.text())] == ["r2", "r3"]
    assert resp.headers["x-last-position"] == "5"
    resp = await client.get("/events?after=10", headers=AUTH)
    assert await resp.text() == "" and resp.headers["x-last-position"] == "10"


async def test_log_rejects_bad_parameters_naming_them(client):
    for query, name in [("after=-1", "after"), ("limit=0", "limit"), ("limit=x", "limit"),
                        ("wait=61", "wait"), ("from=yesterday", "from"),
                        ("to=2026-01-01T00:00:00", "to")]:
        resp = await client.get(f"/events?{query}", headers=AUTH)
        assert resp.status == 400, query
        assert f"'{name}'" in (await resp.json())["error"]
    assert (await client.get("/events")).status == 401


async def test_log_wait_returns_as_soon_as_events_arrive(client):
    await post(client, [started("s", "r0")])
    waiting = asyncio.ensure_future(client.get("/events?after=1&wait=10", headers=AUTH))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await post(client, [completed("s", "r0")])
    resp = await waiting
    assert loop.time() - began < 2
    assert [e["type"] for e in lines(await resp.text())] == ["LLM_REQUEST_COMPLETED"]


async def read_frames(resp, count: int, timeout: float = 10) -> list[dict]:
    frames, data = [], []
    async def run():
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                frames.append(json.loads("".join(data)))
                data.clear()
                if len(frames) == count:
                    return
    await asyncio.wait_for(run(), timeout)
    return frames


async def test_stream_pushes_global_and_touched_sessions_after_appends(client):
    await post(client, [started("old", "r0"), completed("old", "r0")])
    resp = await client.get("/events/metrics/stream", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    [first] = await read_frames(resp, 1)
    assert first["from_position"] is None and first["position"] == 2
    assert first["global"]["total_requests"] == 1

    await post(client, [started("a", "r1"), completed("a", "r1", prompt_tokens=7),
                        started("b", "r2"), failed("b", "r2")])
    frames = [first]
    while frames[-1]["position"] < 6:
        frames += await read_frames(resp, 1)
    last = frames[-1]
    assert frames[1]["from_position"] == 2
    assert last["global"]["total_requests"] == 3
    assert last["global"]["failed_requests"] == 1
    touched = {s["session_id"] for f in frames[1:] for s in f["sessions"]}
    assert touched == {"a", "b"}
    assert all(f["sessions_complete"] for f in frames[1:])
    resp.close()


async def test_stream_needs_the_secret_header(client):
    resp = await client.get("/events/metrics/stream")
    assert resp.status == 401
    assert "x-internal-auth" in (await resp.json())["error"]


async def test_stream_after_a_burst_too_large_to_list_asks_for_a_reload(client, monkeypatch):
    from service import stream as stream_module

    monkeypatch.setattr(stream_module, "MAX_ROWS_PER_UPDATE", 3)
    resp = await client.get("/events/metrics/stream", headers=AUTH)
    await read_frames(resp, 1)
    await post(client, [started("burst", f"r{i}") for i in range(5)])
    [update] = await read_frames(resp, 1)
    assert update["position"] == 5
    assert update["sessions_complete"] is False and update["sessions"] == []
    assert update["global"]["total_sessions"] == 1
    resp.close()


async def test_stream_after_an_erasure_asks_for_a_reload(client):
    """An erasure's tombstone is not a request: subscribers get a resync with the totals that
    remain (and the publisher keeps going)."""
    await post(client, [started("keep", "r1"), completed("keep", "r1"),
                        started("gone", "r2"), completed("gone", "r2")])
    resp = await client.get("/events/metrics/stream", headers=AUTH)
    [first] = await read_frames(resp, 1)
    assert first["global"]["total_sessions"] == 2
    erased = await client.delete("/events/sessions/gone", headers=AUTH)
    assert erased.status == 200, await erased.text()
    [update] = await read_frames(resp, 1)
    assert update["from_position"] is None  # reload what you show
    assert update["global"]["total_sessions"] == 1
    await post(client, [started("later", "r3")])
    [after] = await read_frames(resp, 1)
    assert after["from_position"] is not None and after["global"]["total_sessions"] == 2
    resp.close()


def test_open_streams_do_not_hold_up_shutdown(tmp_path):
    import threading
    import time
    import urllib.request

    from tests.server import ServerProcess

    with ServerProcess(tmp_path / "s.db") as server:
        request = urllib.request.Request(server.url + "/events/metrics/stream", headers=AUTH)
        reply = urllib.request.urlopen(request, timeout=30)
        assert reply.readline().startswith(b"event: metrics")
        ended = threading.Event()
        threading.Thread(target=lambda: (reply.read(), ended.set()), daemon=True).start()
        began = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - began < 4  # not the 5 s shutdown timeout
        assert ended.wait(5)
