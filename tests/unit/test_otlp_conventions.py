"""The OTLP mapping on spans made with the real OpenTelemetry SDK: the spellings the libraries'
test runs do not produce (Anthropic-style input counts, Langfuse's own usage keys, ...) and edge
cases; tests/e2e/test_instrumentations.py drives the libraries themselves."""

from __future__ import annotations

import json

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from service.otlp_conventions import error_class, finish_reasons
from service.otlp_spans import map_request

T0 = 1_767_225_600_000_000_000
MS = 1_000_000


def export(*spans: tuple[str, dict, int, int, bool]):
    """Spans (name, attributes, start ms, end ms, failed) under one root -> the mapping."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    root = tracer.start_span("root", start_time=T0)
    for name, attributes, start, end, failed in spans:
        span = tracer.start_span(name, context=set_span_in_context(root),
                                 start_time=T0 + start * MS, attributes=attributes)
        if failed:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=T0 + end * MS)
    root.end(end_time=T0 + 10_000 * MS)
    provider.shutdown()
    return map_request(encode_spans(memory.get_finished_spans()))


def terminal(mapping) -> list[dict]:
    return [{k: getattr(span.events[1], k) for k in span.events[1].__struct_fields__}
            for span in mapping.mapped]


def test_openlit_time_to_first_token_in_seconds_and_anthropic_style_input():
    mapping = export(("chat claude", {
        "gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        # Anthropic's own input count, without the cache: the prompt is the sum.
        "gen_ai.usage.input_tokens": 30, "gen_ai.usage.output_tokens": 7,
        "gen_ai.usage.cache_read_input_tokens": 100,
        "gen_ai.usage.cache_creation_input_tokens": 50,
        "gen_ai.server.time_to_first_token": 0.25,
        "gen_ai.response.finish_reasons": ["tool_use"]}, 0, 1000, False))
    [event] = terminal(mapping)
    assert (event["prompt_tokens"], event["cached_prompt_tokens"],
            event["cache_write_prompt_tokens"]) == (180, 100, 50)
    assert event["time_to_first_token_ms"] == 250
    assert event["has_tool_calls"] and event["provider"] == "anthropic"


def test_traceloop_association_properties_and_reasoning():
    mapping = export(("openai.chat", {
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 20, "gen_ai.usage.reasoning_tokens": 15,
        "traceloop.association.properties.session_id": "tl-session",
        "traceloop.association.properties.user_id": "tl-user"}, 0, 500, False))
    [event] = terminal(mapping)
    assert (event["session_id"], event["user_id"], event["reasoning_tokens"]) == \
        ("tl-session", "tl-user", 15)


def test_the_first_present_session_wins_in_the_documented_order():
    attributes = {"gen_ai.request.model": "m", "session.id": "b",
                  "langfuse.session.id": "c", "traceloop.association.properties.session_id": "d"}
    assert terminal(export(("a", attributes, 0, 1, False)))[0]["session_id"] == "b"
    attributes["gen_ai.conversation.id"] = "a"
    assert terminal(export(("a", attributes, 0, 1, False)))[0]["session_id"] == "a"


def test_langfuse_usage_keys_of_its_own_and_json_encoded_times():
    mapping = export(("generation", {
        "langfuse.observation.type": "generation",
        "langfuse.observation.model.name": "claude-haiku",
        "langfuse.observation.usage_details": json.dumps(
            {"input": 40, "output": 9, "input_cached_tokens": 30}),
        "langfuse.observation.completion_start_time": json.dumps("2026-01-01T00:00:00.120Z"),
        "langfuse.session.id": "lf", "langfuse.user.id": "u"}, 0, 400, False))
    [event] = terminal(mapping)
    assert (event["model"], event["prompt_tokens"], event["completion_tokens"],
            event["cached_prompt_tokens"]) == ("claude-haiku", 40, 9, 30)
    assert abs(event["time_to_first_token_ms"] - 120) < 0.01
    assert (event["session_id"], event["user_id"]) == ("lf", "u")


def test_a_second_span_with_the_same_response_id_is_the_same_call():
    common = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
              "gen_ai.response.id": "resp-1"}
    mapping = export(("sdk", {**common, "gen_ai.usage.output_tokens": 3}, 0, 100, False),
                     ("instrumentation", {**common, "gen_ai.usage.input_tokens": 11}, 0, 120,
                      False))
    assert mapping.merged == 1
    [event] = terminal(mapping)
    assert (event["prompt_tokens"], event["completion_tokens"], event["request_id"]) == \
        (11, 3, "resp-1")


def test_logfire_stream_request_and_usage_log_are_one_call():
    request = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
               "logfire.span_type": "span"}
    log = {**request, "logfire.span_type": "log", "duration": 0.5,
           "gen_ai.response.id": "chatcmpl-9", "gen_ai.usage.input_tokens": 5,
           "gen_ai.usage.output_tokens": 6, "gen_ai.response.finish_reasons": '["stop"]'}
    mapping = export(("Chat Completion", request, 100, 120, False),
                     ("streaming response", log, 600, 600, False))
    [event] = terminal(mapping)
    assert event["duration_ms"] == 500 and event["prompt_tokens"] == 5
    assert event["finish_reason"] == "stop"


def test_a_failed_span_names_the_exception_class():
    mapping = export(("chat", {"gen_ai.request.model": "m",
                               "error.type": "<class 'openai.RateLimitError'>"}, 0, 5, True))
    [event] = terminal(mapping)
    assert event["error_type"] == "RateLimitError" and event["error_message"] == "boom"


def test_error_class_and_finish_reasons_normalisation():
    assert error_class("<class 'openai.RateLimitError'>") == "RateLimitError"
    assert error_class("anthropic.APIStatusError") == "APIStatusError"
    assert error_class("rate_limit_error") == "rate_limit_error"
    assert error_class("429") == "429" and error_class("") is None
    assert finish_reasons('["tool_calls"]') == ["tool_calls"]
    assert finish_reasons('"stop"') == ["stop"] and finish_reasons(["a", ""]) == ["a"]
    assert finish_reasons("stop") == ["stop"] and finish_reasons(None) == []


def test_a_bad_value_rejects_the_span_naming_the_attribute():
    mapping = export(("chat", {"gen_ai.request.model": "m",
                               "langfuse.observation.usage_details": "not json"}, 0, 5, False))
    assert not mapping.mapped
    assert "langfuse.observation.usage_details must be a JSON object" in \
        mapping.rejected[0].reason
