"""`GET/PUT/DELETE /prices` on the real app (real SQLite log, real HTTP client): validated,
saved durably next to the log, applied to every cost at once, only with the admin key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from projections.prices import PriceTable, default_prices
from service.app import create_app
from tests import factories as f
from tests.conftest import AUTH

READ, INGEST = {"x-internal-auth": "reader"}, {"x-internal-auth": "ingester"}
CHEAP = {"models": {"gpt-4": {"input": 3.0, "output": 6.0}}}
SONNET = {"models": {"claude-sonnet-4-5": {"patterns": ["claude-sonnet-4-5-*"], "prices": [
    {"from": "2025-09-29", "input": 3.0, "output": 15.0, "cached_input": 0.3,
     "cache_write": 3.75}]}}}


@pytest.fixture
def priced_config(config, tmp_path):
    configured = tmp_path / "configured.json"
    configured.write_text(json.dumps({"models": {"gpt-4": {"input": 30, "output": 60}}}))
    return dataclasses.replace(config, prices=str(configured), read_keys=("reader",),
                               ingest_keys=("ingester",))


@pytest.fixture
async def app_client(aiohttp_client, priced_config):
    return await aiohttp_client(create_app(priced_config))


async def cost(client) -> float:
    r = await client.get("/events/metrics", headers=AUTH)
    assert r.status == 200
    return (await r.json())["total_cost_usd"]


async def test_get_serves_the_shipped_table_to_any_read_key(client):
    r = await client.get("/prices", headers=AUTH)
    body = await r.json()
    assert r.status == 200 and body["digest"] == default_prices().digest
    assert body["models"]["gpt-4"]["prices"][0]["input"] == 30.0


async def test_read_keys_may_get_but_only_the_admin_key_may_change(app_client):
    assert (await app_client.get("/prices", headers=READ)).status == 200
    assert (await app_client.get("/prices", headers=INGEST)).status == 403
    assert (await app_client.get("/prices")).status == 401
    for headers in (READ, INGEST):
        assert (await app_client.put("/prices", json=CHEAP, headers=headers)).status == 403
        assert (await app_client.delete("/prices", headers=headers)).status == 403


async def test_put_saves_atomically_and_reprices_all_of_history(app_client, priced_config):
    events = [f.started(), f.completed(prompt_tokens=1000, completion_tokens=1000)]
    assert (await app_client.post("/events", json=events, headers=AUTH)).status == 201
    assert await cost(app_client) == pytest.approx(0.09)

    r = await app_client.put("/prices", json=CHEAP, headers=AUTH)
    assert r.status == 200
    expected = PriceTable.from_json(json.dumps(CHEAP).encode())
    assert await r.json() == {"digest": expected.digest, "models": 1}
    assert await cost(app_client) == pytest.approx(0.009)  # the request made before the PUT too
    served = await (await app_client.get("/prices", headers=READ)).json()
    assert served["digest"] == expected.digest and list(served["models"]) == ["gpt-4"]

    saved = Path(priced_config.saved_prices_path)
    assert saved == Path(priced_config.db + ".prices.json")
    assert PriceTable.from_json(saved.read_bytes()).digest == expected.digest
    assert not saved.with_name(saved.name + ".tmp").exists()

    # What GET serves can be PUT back as it is (its digest is ignored).
    again = await app_client.put("/prices", json=served, headers=AUTH)
    assert (await again.json())["digest"] == expected.digest


async def test_a_bad_table_is_a_400_naming_the_field_and_changes_nothing(app_client,
                                                                         priced_config):
    assert (await app_client.put("/prices", json=CHEAP, headers=AUTH)).status == 200
    saved = Path(priced_config.saved_prices_path).read_bytes()
    bad = {"models": {"x": {"prices": [{"input": 1, "output": 1,
                                        "above": {"prompt_tokens": 10, "input": -1,
                                                  "output": 2}}]}}}
    r = await app_client.put("/prices", json=bad, headers=AUTH)
    body = await r.json()
    assert r.status == 400
    assert body["details"] == [{"index": 0, "path": '$.models["x"].prices[0].above.input',
                                "message": body["details"][0]["message"]}]
    assert '$.models["x"].prices[0].above.input' in body["error"]
    for raw, content_type, status in [(b"{", "application/json", 400),
                                      (b"", "application/json", 400),
                                      (json.dumps(CHEAP).encode(), "text/plain", 415)]:
        r = await app_client.put("/prices", data=raw, headers={**AUTH,
                                                               "content-type": content_type})
        assert r.status == status and "error" in await r.json()
    assert Path(priced_config.saved_prices_path).read_bytes() == saved
    served = await (await app_client.get("/prices", headers=AUTH)).json()
    assert list(served["models"]) == ["gpt-4"] and \
        served["models"]["gpt-4"]["prices"][0]["input"] == 3.0


async def test_delete_goes_back_to_the_configured_table(app_client, priced_config):
    configured = PriceTable.from_json(Path(priced_config.prices).read_bytes())
    assert (await app_client.put("/prices", json=SONNET, headers=AUTH)).status == 200
    r = await app_client.delete("/prices", headers=AUTH)
    assert r.status == 200
    assert await r.json() == {"digest": configured.digest, "models": 1}
    assert not Path(priced_config.saved_prices_path).exists()
    served = await (await app_client.get("/prices", headers=AUTH)).json()
    assert served["digest"] == configured.digest
    assert (await app_client.delete("/prices", headers=AUTH)).status == 200  # idempotent


async def test_delete_keeps_the_saved_table_when_the_configured_file_is_broken(
        app_client, priced_config):
    assert (await app_client.put("/prices", json=CHEAP, headers=AUTH)).status == 200
    Path(priced_config.prices).write_text('{"models": {"gpt-4": {"input": "free"}}}')
    r = await app_client.delete("/prices", headers=AUTH)
    body = await r.json()
    assert r.status == 409
    assert body["details"][0]["path"] == '$.models["gpt-4"].input'
    assert Path(priced_config.saved_prices_path).exists()
    served = await (await app_client.get("/prices", headers=AUTH)).json()
    assert served["models"]["gpt-4"]["prices"][0]["input"] == 3.0
