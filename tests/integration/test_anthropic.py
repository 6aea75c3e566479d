"""The Anthropic wrapper: the real `anthropic` package, a local Messages API stub, a real
service; what was stored is read back through `GET /events`."""

from __future__ import annotations

import uuid

import anthropic
import pytest

from llm_metrics_client import AsyncMetricsClient, MetricsClient
from llm_metrics_client.anthropic import instrument
from tests.http_stubs import (ANTHROPIC_PROMPT_TOKENS, ANTHROPIC_USAGE, FIRST_TOKEN_DELAY_S,
                              ThreadedApp, anthropic_stub, read_log)
from tests.server import SECRET, ServerProcess

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]
CACHE = dict(prompt_tokens=ANTHROPIC_PROMPT_TOKENS,
             cached_prompt_tokens=ANTHROPIC_USAGE["cache_read_input_tokens"],
             cache_write_prompt_tokens=ANTHROPIC_USAGE["cache_creation_input_tokens"],
             completion_tokens=ANTHROPIC_USAGE["output_tokens"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("anthropic") / "events.db") as server:
        yield server


@pytest.fixture(scope="module")
def stub():
    with ThreadedApp(anthropic_stub()) as stub:
        yield stub


def completed(server, session_id: str) -> list[dict]:
    return [e for e in read_log(server.url)
            if e["session_id"] == session_id and e["type"] != "LLM_REQUEST_STARTED"]


def test_calls_streams_tools_and_errors_count_the_prompt_cache(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = instrument(anthropic.Anthropic(api_key="k", base_url=stub.url, max_retries=0),
                         metrics, session_id=sid, user_id="u1")
        reply = llm.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
        assert reply.content[0].text == "Hello from the stub."
        llm.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES,
                            tools=TOOLS)
        texts = [e.delta.text for e in llm.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, stream=True)
            if e.type == "content_block_delta"]
        assert "".join(texts) == "Hello from the stub."
        with pytest.raises(anthropic.RateLimitError):
            llm.messages.create(model="rate-limited", max_tokens=64, messages=MESSAGES)
        assert metrics.flush(10)
    plain, tool, stream, failed = completed(server, sid)
    for event in (plain, tool, stream):
        assert {k: event.get(k) for k in CACHE} == CACHE
        assert event["provider"] == "anthropic" and event["user_id"] == "u1"
    assert (plain["finish_reason"], plain["has_tool_calls"]) == ("end_turn", False)
    assert (tool["finish_reason"], tool["tool_calls"], tool["has_tool_calls"]) == \
        ("tool_use", 1, True)
    assert stream["time_to_first_token_ms"] >= FIRST_TOKEN_DELAY_S * 1000
    assert failed["type"] == "LLM_REQUEST_FAILED" and failed["error_type"] == "RateLimitError"


async def test_async_anthropic_stream(server, stub):
    sid = uuid.uuid4().hex
    async with AsyncMetricsClient(server.url, SECRET) as metrics:
        llm = instrument(anthropic.AsyncAnthropic(api_key="k", base_url=stub.url,
                                                  max_retries=0), metrics, session_id=sid)
        stream = await llm.messages.create(model="claude-haiku", max_tokens=64,
                                           messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
        assert await metrics.flush(10)
    [event] = completed(server, sid)
    assert {k: event.get(k) for k in CACHE} == CACHE and event["model"] == "claude-haiku"


def test_a_stream_closed_early_is_failed_and_a_closed_client_never_breaks_the_call(server,
                                                                                   stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = instrument(anthropic.Anthropic(api_key="k", base_url=stub.url, max_retries=0),
                         metrics, session_id=sid)
        with llm.messages.create(model="claude-haiku", max_tokens=64, messages=MESSAGES,
                                 stream=True) as stream:
            next(iter(stream))
        assert metrics.flush(10)
    [event] = completed(server, sid)
    assert (event["type"], event["error_type"]) == ("LLM_REQUEST_FAILED", "StreamClosed")
    # metrics is closed now: the call still answers.
    reply = llm.messages.create(model="claude-haiku", max_tokens=64, messages=MESSAGES)
    assert reply.stop_reason == "end_turn"
