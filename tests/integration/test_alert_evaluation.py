"""The evaluator over the real query layer, in process: limits that a server test cannot reach
cheaply."""

from __future__ import annotations

import logging

from service import keys
from service.alerts import questions
from service.app import create_app
from service.config import Config

ADMIN = {"x-internal-auth": "secret"}


def completed(user: str) -> dict:
    return {"type": "LLM_REQUEST_COMPLETED", "session_id": f"s-{user}", "request_id": "r1",
            "model": "gpt-4o", "user_id": user, "timestamp": "2026-03-01T12:00:00Z",
            "duration_ms": 100, "prompt_tokens": 10, "completion_tokens": 5}


async def test_a_rule_past_the_group_limit_is_not_evaluated_and_resolves_nothing(
        aiohttp_client, tmp_path, monkeypatch, caplog):
    client = await aiohttp_client(create_app(Config(db=str(tmp_path / "events.db"))))
    posted = await client.post("/events", json=[completed(f"u{i:04}") for i in range(1001)],
                               headers=ADMIN)
    assert posted.status == 201
    created = await client.post("/alerts/rules", headers=ADMIN, json={
        "name": "any-user", "measure": "total_requests", "op": ">=", "threshold": 1,
        "window": "1d", "group_by": "user_id", "webhook_url": "http://127.0.0.1:9/hook"})
    assert created.status == 201
    evaluator = client.app[keys.ALERTS].evaluator
    await evaluator.evaluate()
    assert len(await firing(client)) == 1001, "two pages of groups, all firing"

    monkeypatch.setattr(questions, "MAX_GROUPS", 1000)
    with caplog.at_level(logging.ERROR):
        assert await evaluator.evaluate() == 0
    assert "more than 1000 groups: not evaluated" in caplog.text
    assert len(await firing(client)) == 1001, "groups it did not read are not resolved"


async def firing(client) -> list[dict]:
    return (await (await client.get("/alerts", headers=ADMIN)).json())["alerts"]
