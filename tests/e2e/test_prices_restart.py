"""A price table set by `PUT /prices` outlives a restart of the real server process (graceful
or killed right after the answer) whatever `LLM_METRICS_PRICES` says; `DELETE /prices` goes back
to that file, for good."""

from __future__ import annotations

import json

import pytest

from tests import factories as f
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

CONFIGURED = {"models": {"gpt-4": {"input": 30, "output": 60}}}
CHEAPER = {"models": {"gpt-4": {"prices": [
    {"from": "2025-01-01", "input": 3.0, "output": 6.0},
    {"from": "2026-01-01T00:00:00.5Z", "input": 1.0, "output": 2.0}]}}}


def total_cost(server: ServerProcess) -> float:
    status, body = server.request("GET", "/events/metrics")
    assert status == 200, body
    return body["total_cost_usd"]


def digest(server: ServerProcess) -> str:
    status, body = server.request("GET", "/prices")
    assert status == 200, body
    return body["digest"]


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_put_prices_survives_a_restart_and_delete_goes_back_to_the_file(tmp_path, stop):
    configured = tmp_path / "prices.json"
    configured.write_text(json.dumps(CONFIGURED))
    env = {"LLM_METRICS_PRICES": str(configured)}
    db = tmp_path / "events.db"
    # Two requests of 1000 + 1000 tokens, either side of the second period's `from`.
    events = [f.started(), f.completed(t=0.25, prompt_tokens=1000, completion_tokens=1000),
              f.started(request_id="r2", t=1), f.completed(request_id="r2", t=2,
                                                           prompt_tokens=1000,
                                                           completion_tokens=1000)]
    with ServerProcess(db, **env) as server:
        assert server.request("POST", "/events", events)[0] == 201
        assert total_cost(server) == pytest.approx(2 * 0.09)
        status, body = server.request("PUT", "/prices", CHEAPER)
        assert status == 200 and body["models"] == 1
        saved = body["digest"]
        assert total_cost(server) == pytest.approx(0.009 + 0.003)
        if stop == "sigkill":
            server.kill()  # the answer came after the table was on disk

    with ServerProcess(db, port=server.port, **env) as server:
        assert digest(server) == saved
        assert f"the table saved by PUT /prices in {db}.prices.json (digest {saved}) wins over " \
               f"LLM_METRICS_PRICES={configured}" in server.log()
        assert total_cost(server) == pytest.approx(0.009 + 0.003)
        status, body = server.request("DELETE", "/prices")
        assert status == 200 and body["models"] == 1
        assert total_cost(server) == pytest.approx(2 * 0.09)

    with ServerProcess(db, **env) as server:
        assert digest(server) != saved
        assert total_cost(server) == pytest.approx(2 * 0.09)


def test_a_saved_table_that_became_unusable_stops_startup_naming_the_file(tmp_path):
    db = tmp_path / "events.db"
    saved = tmp_path / "events.db.prices.json"
    saved.write_text('{"models": {"gpt-4": {"input": 1}}}')
    server = ServerProcess(db)
    with pytest.raises(RuntimeError) as err:
        server.start(timeout=20)
    log = str(err.value)
    assert str(saved) in log and '$.models["gpt-4"].output' in log and "DELETE /prices" in log
