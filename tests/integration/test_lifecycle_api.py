"""The erasure routes' own rules, through the real app: admin key only, ids checked, unknown
ids answer 0, and a rule under HTTP (`Lifecycle`) that a client going away cannot interrupt."""

from __future__ import annotations

import asyncio

import pytest

from service import keys
from service.app import create_app
from service.config import Config
from tests import factories as f

ADMIN = {"x-internal-auth": "secret"}


@pytest.fixture
async def api(aiohttp_client, tmp_path):
    config = Config(db=str(tmp_path / "events.db"), ingest_keys=("ingest-key",),
                    read_keys=("read-key",))
    return await aiohttp_client(create_app(config))


async def post(api, events):
    r = await api.post("/events", json=events, headers=ADMIN)
    assert r.status == 201, await r.text()
    return await r.json()


@pytest.mark.parametrize("key", ["read-key", "ingest-key"])
async def test_only_the_admin_key_may_erase(api, key):
    await post(api, [f.started("s1", user_id="u1")])
    for path in ("/events/sessions/s1", "/events/users/u1"):
        r = await api.delete(path, headers={"x-internal-auth": key})
        assert r.status == 403, await r.text()
    assert (await api.delete("/events/sessions/s1")).status == 401
    assert (await (await api.get("/events/metrics/sessions", headers=ADMIN)).json())["sessions"]


async def test_an_id_too_long_to_be_stored_is_a_400_naming_it(api):
    r = await api.delete("/events/users/" + "u" * 257, headers=ADMIN)
    assert r.status == 400
    body = await r.json()
    assert body["details"][0]["path"] == "user_id" and "256" in body["error"]


async def test_odd_ids_are_erased_and_unknown_ones_answer_zero(api):
    odd = "team/a b%?#\n🚀"
    await post(api, [f.started(odd, "r1"), f.completed(odd, "r1"), f.started("other", "r1")])
    from urllib.parse import quote
    r = await api.delete(f"/events/sessions/{quote(odd, safe='')}", headers=ADMIN)
    assert (r.status, await r.json()) == (200, {"deleted_events": 2})
    r = await api.delete(f"/events/sessions/{quote(odd, safe='')}", headers=ADMIN)
    assert await r.json() == {"deleted_events": 0}
    body = await (await api.get("/events/metrics/sessions", headers=ADMIN)).json()
    assert [s["session_id"] for s in body["sessions"]] == ["other"]


async def test_a_client_that_goes_away_does_not_stop_an_erasure(api):
    await post(api, [f.started("s1", "r1", user_id="u1"), f.completed("s1", "r1")])
    lifecycle = api.app[keys.LIFECYCLE]
    task = asyncio.ensure_future(lifecycle.erase_user("u1"))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.5)
    for _ in range(50):
        body = await (await api.get("/events/metrics", headers=ADMIN)).json()
        if body["total_requests"] == 0:
            break
        await asyncio.sleep(0.1)
    assert body["total_requests"] == 0
    assert await lifecycle.erase_user("u1") == 0
