"""Wire events as JSON-ready dicts, for tests and benchmarks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def stamp(seconds: float = 0.0) -> str:
    return (BASE_TIME + timedelta(seconds=seconds)).isoformat()


def started(session_id="s1", request_id="r1", model="gpt-4", t=0.0, **extra) -> dict:
    return dict(type="LLM_REQUEST_STARTED", session_id=session_id, request_id=request_id,
                model=model, timestamp=stamp(t), **extra)


def completed(session_id="s1", request_id="r1", model="gpt-4", t=1.0, duration_ms=1000,
              prompt_tokens=10, completion_tokens=5, **extra) -> dict:
    return dict(type="LLM_REQUEST_COMPLETED", session_id=session_id, request_id=request_id,
                model=model, timestamp=stamp(t), duration_ms=duration_ms,
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, **extra)


def failed(session_id="s1", request_id="r1", model="gpt-4", t=1.0, error_type="Timeout",
           **extra) -> dict:
    return dict(type="LLM_REQUEST_FAILED", session_id=session_id, request_id=request_id,
                model=model, timestamp=stamp(t), error_type=error_type, **extra)


def seed_session(session_id="abc-123") -> list[dict]:
    """The quickstart's example: 14 completed (45000 ms, 12500 + 8300 tokens, 8 with tools)
    and 1 failed request."""
    durations = [3000] * 13 + [6000]
    prompts = [900] * 13 + [800]
    completions = [600] * 13 + [500]
    events = []
    for i in range(14):
        events.append(started(session_id, f"r{i}", t=i))
        events.append(completed(session_id, f"r{i}", t=i + 0.5, duration_ms=durations[i],
                                prompt_tokens=prompts[i], completion_tokens=completions[i],
                                has_tool_calls=i < 8, event_id=f"{session_id}-c{i}"))
    events.append(started(session_id, "r14", t=20))
    events.append(failed(session_id, "r14", t=21, error_type="RateLimitError"))
    return events
