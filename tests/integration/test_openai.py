"""The OpenAI integration: the real `openai` package, a local OpenAI-compatible stub, a real
service."""

from __future__ import annotations

import uuid

import openai
import pytest

from llm_metrics_client import AsyncMetricsClient, MetricsClient
from llm_metrics_client.openai import instrument
from tests.http_stubs import (FIRST_TOKEN_DELAY_S, REQUESTS, USAGE, WORDS, ThreadedApp,
                              openai_stub, read_log)
from tests.server import SECRET, ServerProcess

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("openai") / "events.db") as server:
        yield server


@pytest.fixture(scope="module")
def stub():
    with ThreadedApp(openai_stub()) as stub:
        yield stub


def events_of(server, session_id: str) -> list[dict]:
    return [e for e in read_log(server.url) if e["session_id"] == session_id]


def sync_llm(stub, metrics, session_id):
    llm = openai.OpenAI(api_key="sk-test", base_url=stub.url + "/v1", max_retries=0)
    return instrument(llm, metrics, session_id=session_id)


def test_non_streaming_call_is_tracked_with_usage_and_tool_calls(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = sync_llm(stub, metrics, sid)
        reply = llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "".join(WORDS)  # the caller's view is intact
        tool = llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=[{
            "type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
        assert tool.choices[0].message.tool_calls[0].function.name == "lookup"
        assert metrics.flush(10)
    events = events_of(server, sid)
    assert [e["type"] for e in events] == ["LLM_REQUEST_STARTED", "LLM_REQUEST_COMPLETED"] * 2
    plain, with_tool = events[1], events[3]
    assert plain["model"] == "gpt-4o-mini" and plain["provider"] == "openai"
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (21, 5)
    assert plain["total_tokens"] == 26
    assert (plain["cached_prompt_tokens"], plain["reasoning_tokens"]) == (8, 2)
    assert plain["finish_reason"] == "stop" and plain["has_tool_calls"] is False
    assert with_tool["tool_calls"] == 1 and with_tool["has_tool_calls"] is True
    assert with_tool["finish_reason"] == "tool_calls"
    status, metrics_body = server.request("GET", f"/events/metrics/session/{sid}")
    assert status == 200 and metrics_body["total_tokens"] == 52


def test_streaming_records_time_to_first_token_and_usage_from_the_final_chunk(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = sync_llm(stub, metrics, sid)
        stream = llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        chunks = list(stream)
        assert metrics.flush(10)
    # The caller sees the chunks it asked for: no usage-only chunk it did not request.
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(WORDS)
    assert stub.app[REQUESTS][-1]["stream_options"] == {"include_usage": True}
    [started, done] = events_of(server, sid)
    assert started["type"] == "LLM_REQUEST_STARTED" and done["type"] == "LLM_REQUEST_COMPLETED"
    assert done["time_to_first_token_ms"] >= FIRST_TOKEN_DELAY_S * 1000
    assert done["duration_ms"] >= done["time_to_first_token_ms"]
    assert (done["prompt_tokens"], done["completion_tokens"]) == (USAGE["prompt_tokens"],
                                                                  USAGE["completion_tokens"])
    assert done["finish_reason"] == "stop"


def test_caller_who_asked_for_usage_still_gets_the_usage_chunk(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = sync_llm(stub, metrics, sid)
        with llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                         stream_options={"include_usage": True}) as stream:
            chunks = list(stream)
        assert metrics.flush(10)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 26
    assert events_of(server, sid)[-1]["type"] == "LLM_REQUEST_COMPLETED"


def test_api_errors_are_tracked_as_failed_with_the_exception_type(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = sync_llm(stub, metrics, sid)
        with pytest.raises(openai.RateLimitError):
            llm.chat.completions.create(model="rate-limited", messages=MESSAGES)
        assert metrics.flush(10)
    [_, failed] = events_of(server, sid)
    assert failed["type"] == "LLM_REQUEST_FAILED" and failed["error_type"] == "RateLimitError"


def test_a_stream_abandoned_early_is_reported_failed(server, stub):
    sid = uuid.uuid4().hex
    with MetricsClient(server.url, SECRET) as metrics:
        llm = sync_llm(stub, metrics, sid)
        with llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
            next(iter(stream))
        assert metrics.flush(10)
    assert events_of(server, sid)[-1]["error_type"] == "StreamClosed"


async def test_async_openai_streaming_and_plain_calls(server, stub):
    sid = uuid.uuid4().hex
    async with AsyncMetricsClient(server.url, SECRET) as metrics:
        llm = instrument(openai.AsyncOpenAI(api_key="sk-test", base_url=stub.url + "/v1",
                                            max_retries=0), metrics, session_id=lambda: sid)
        reply = await llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.usage.total_tokens == 26
        stream = await llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "".join(WORDS)
        with pytest.raises(openai.RateLimitError):
            await llm.chat.completions.create(model="rate-limited", messages=MESSAGES)
        assert await metrics.flush(10)
    events = events_of(server, sid)
    terminal = [e for e in events if e["type"] != "LLM_REQUEST_STARTED"]
    assert [e["type"] for e in terminal] == ["LLM_REQUEST_COMPLETED", "LLM_REQUEST_COMPLETED",
                                             "LLM_REQUEST_FAILED"]
    assert terminal[1]["time_to_first_token_ms"] >= FIRST_TOKEN_DELAY_S * 1000
    assert terminal[1]["completion_tokens"] == 5
    assert terminal[2]["error_type"] == "RateLimitError"
    # Instrumenting twice does not double the events.
    assert instrument(llm, metrics, session_id=sid) is llm


def test_a_closed_metrics_client_never_breaks_the_call(stub, caplog):
    metrics = MetricsClient("http://127.0.0.1:9", SECRET)
    metrics.close(timeout=0)
    llm = sync_llm(stub, metrics, "s")
    reply = llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "".join(WORDS)
    assert "not recorded" in caplog.text
