"""The alert routes over real HTTP against the real app: validation, roles, durability."""

from __future__ import annotations

import pytest

from service.app import create_app
from service.config import Config

ADMIN = {"x-internal-auth": "secret"}
READER = {"x-internal-auth": "reader"}
INGESTER = {"x-internal-auth": "ingester"}

RULE = {"name": "alice-daily", "measure": "total_cost_usd", "op": ">", "threshold": 5,
        "window": "1d", "group_by": "user_id", "where": {"model": ["gpt-4o"]},
        "webhook_url": "http://127.0.0.1:9/hook", "secret": "s3cret", "format": "json"}


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(db=str(tmp_path / "events.db"), read_keys=("reader",),
                  ingest_keys=("ingester",))


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))


async def rules(client) -> list[dict]:
    response = await client.get("/alerts/rules", headers=READER)
    assert response.status == 200
    return (await response.json())["rules"]


async def test_a_rule_is_created_shown_without_its_secret_and_deleted(client):
    response = await client.post("/alerts/rules", json=RULE, headers=ADMIN)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert "secret" not in created and created["has_secret"] is True
    assert {k: created[k] for k in RULE if k != "secret"} == {
        **{k: v for k, v in RULE.items() if k != "secret"}, "threshold": 5.0}
    assert created["groups"] == [] and created["created_at"].endswith("Z")

    assert [r["name"] for r in await rules(client)] == ["alice-daily"]
    one = await client.get("/alerts/rules/alice-daily", headers=READER)
    assert one.status == 200 and (await one.json())["name"] == "alice-daily"

    again = await client.post("/alerts/rules", json={**RULE, "threshold": 1}, headers=ADMIN)
    assert again.status == 409
    assert (await again.json())["details"][0]["path"] == "$.name"
    assert (await rules(client))[0]["threshold"] == 5.0, "a refused rule changes nothing"

    deleted = await client.delete("/alerts/rules/alice-daily", headers=ADMIN)
    assert deleted.status == 204
    assert await rules(client) == []
    for method in ("get", "delete"):
        gone = await getattr(client, method)("/alerts/rules/alice-daily", headers=ADMIN)
        assert gone.status == 404 and "alice-daily" in (await gone.json())["error"]


@pytest.mark.parametrize("change, field", [
    ({"threshold": "five"}, "$.threshold"),
    ({"measure": "dollars"}, "$.measure"),
    ({"op": "!="}, "$.op"),
    ({"window": "1w"}, "$.window"),
    ({"group_by": "team"}, "$.group_by"),
    ({"where": {"model": "gpt-4o"}}, "$.where.model"),
    ({"webhook_url": "file:///etc/passwd"}, "$.webhook_url"),
    ({"format": "teams"}, "$.format"),
    ({"name": "has space"}, "$.name"),
    ({"extra": 1}, "$.extra"),
])
async def test_an_invalid_rule_is_a_400_naming_the_field_and_stores_nothing(client, change,
                                                                            field):
    response = await client.post("/alerts/rules", json={**RULE, **change}, headers=ADMIN)
    assert response.status == 400
    body = await response.json()
    assert body["details"][0]["path"] == field
    assert field in body["error"]
    assert await rules(client) == []


async def test_a_body_that_is_not_json_is_a_400(client):
    response = await client.post("/alerts/rules", data=b"{nope", headers=ADMIN)
    assert response.status == 400
    assert (await response.json())["details"][0]["path"] == "$"


async def test_read_keys_look_and_only_the_admin_key_changes(client):
    assert (await client.post("/alerts/rules", json=RULE, headers=READER)).status == 403
    assert (await client.post("/alerts/rules", json=RULE, headers=INGESTER)).status == 403
    assert (await client.post("/alerts/rules", json=RULE)).status == 401
    assert (await client.post("/alerts/rules", json=RULE, headers=ADMIN)).status == 201
    assert (await client.delete("/alerts/rules/alice-daily", headers=READER)).status == 403
    for path in ("/alerts", "/alerts/rules", "/alerts/rules/alice-daily", "/alerts/deliveries"):
        assert (await client.get(path, headers=READER)).status == 200, path
        assert (await client.get(path, headers=INGESTER)).status == 403, path


async def test_the_delivery_log_limit_is_checked(client):
    for bad in ("0", "1001", "x"):
        response = await client.get(f"/alerts/deliveries?limit={bad}", headers=READER)
        assert response.status == 400 and "limit" in (await response.json())["error"]
    response = await client.get("/alerts/deliveries?limit=5", headers=READER)
    assert response.status == 200 and await response.json() == {"deliveries": []}


async def test_rules_survive_a_restart(aiohttp_client, config):
    first = await aiohttp_client(create_app(config))
    assert (await first.post("/alerts/rules", json=RULE, headers=ADMIN)).status == 201
    await first.close()
    second = await aiohttp_client(create_app(config))
    assert [r["name"] for r in await rules(second)] == ["alice-daily"]
