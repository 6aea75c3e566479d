"""What ingest accepts, every later step can hold: the largest token counts on a priced model
survive a restart and `replay` (one `prompt_tokens: 2**63 - 1` used to break every later
snapshot and make `make replay` exit 1), and times before 2000 are refused."""

from __future__ import annotations

import pytest

from events.schema import MAX_TOKENS
from tests import factories as f
from tests.server import ServerProcess, run_cli

pytestmark = pytest.mark.slow

REQUESTS = 200


def largest(i: int) -> list[dict]:
    return [f.started(f"s{i % 10}", f"r{i}", model="gpt-4", t=i),
            f.completed(f"s{i % 10}", f"r{i}", model="gpt-4", t=i + 1,
                        prompt_tokens=MAX_TOKENS, completion_tokens=0,
                        cached_prompt_tokens=MAX_TOKENS, tool_calls=MAX_TOKENS),
            f.completed(f"s{i % 10}", f"q{i}", model="gpt-4", t=i + 1,
                        prompt_tokens=0, completion_tokens=MAX_TOKENS,
                        reasoning_tokens=MAX_TOKENS, duration_ms=1e12)]


def totals(server: ServerProcess) -> tuple:
    status, body = server.request("GET", "/events/metrics")
    assert status == 200, body
    return (body["total_prompt_tokens"], body["total_completion_tokens"], body["total_tokens"],
            body["total_cost_usd"], body["successful_requests"])


def test_the_largest_counts_survive_restart_and_replay_and_the_oversized_are_refused(tmp_path):
    db = tmp_path / "events.db"
    with ServerProcess(db) as server:
        for name, event in [("prompt_tokens", f.completed(prompt_tokens=2**63 - 1)),
                            ("completion_tokens", f.completed(completion_tokens=MAX_TOKENS + 1)),
                            ("timestamp", f.started(t=-(26 * 365 + 7) * 86400.0 - 1))]:  # 1999
            status, body = server.request("POST", "/events", event)
            assert status == 400 and f"$.{name}" in [d["path"] for d in body["details"]], body
        events = [e for i in range(REQUESTS) for e in largest(i)]
        assert server.request("POST", "/events", events)[0] == 201
        live = totals(server)
        assert live[:3] == (REQUESTS * MAX_TOKENS, REQUESTS * MAX_TOKENS,
                            2 * REQUESTS * MAX_TOKENS)
        assert live[3] > 0 and live[4] == 2 * REQUESTS
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()

    with ServerProcess(db) as again:
        assert totals(again) == live
    done = run_cli("replay", env={"LLM_METRICS_DB": str(db)})
    assert done.returncode == 0, done.stderr
    with ServerProcess(db) as rebuilt:
        assert totals(rebuilt) == live
