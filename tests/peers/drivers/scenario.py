"""What every driver does, run inside a peer's virtualenv (the standard library and the peer's
packages only: this project is not installed there).

Settings come from the environment the test sets: `OPENAI_URL`, `ANTHROPIC_URL` (the stub
providers),
`SERVICE_URL` and `SERVICE_KEY` (the service under test), `OTLP_ENCODING` (`protobuf` or
`json`), `SESSION_ID` and `USER_ID` (for the libraries that can attach them).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

OPENAI_URL = os.environ.get("OPENAI_URL", "")
ANTHROPIC_URL = os.environ.get("ANTHROPIC_URL", "")
SERVICE = os.environ.get("SERVICE_URL", "")
KEY = os.environ.get("SERVICE_KEY", "")
ENCODING = os.environ.get("OTLP_ENCODING", "protobuf")
SESSION = os.environ.get("SESSION_ID", "")
USER = os.environ.get("USER_ID", "")
MESSAGES = [{"role": "user", "content": "Say hello"}]
OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
ANTHROPIC_TOOLS = [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]


def exporter(path: str = "/v1/traces", headers: dict | None = None):
    """The OTLP/HTTP span exporter of `ENCODING`, pointed at the service."""
    headers = {"x-internal-auth": KEY} if headers is None else headers
    if ENCODING == "json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    # A generous timeout: on a loaded machine a slow answer must not drop the batch.
    return OTLPSpanExporter(endpoint=SERVICE + path, headers=headers, timeout=60)


def tracer_provider():
    """A batching SDK tracer provider exporting to the service, set as the global one."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    return provider


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def openai_calls(client, around=contextlib.nullcontext) -> None:
    """A plain call, a tool call, a stream (usage asked for) and a rate-limited call."""
    import openai

    with around():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       tools=OPENAI_TOOLS)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                stream=True,
                                                stream_options={"include_usage": True})
        for _ in stream:
            pass
        try:
            client.chat.completions.create(model="rate-limited", messages=MESSAGES)
        except openai.RateLimitError:
            pass
        else:
            sys.exit("the rate-limited call did not fail")


def anthropic_calls(client, around=contextlib.nullcontext) -> None:
    """The same four calls through the Messages API."""
    import anthropic

    with around():
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES,
                               tools=ANTHROPIC_TOOLS)
        # Closed by `with`, as an application should: the SDK ends its span when the body
        # is read or closed, not when the object is garbage-collected.
        with client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                    messages=MESSAGES, stream=True) as stream:
            for _ in stream:
                pass
        try:
            client.messages.create(model="rate-limited", max_tokens=64, messages=MESSAGES)
        except anthropic.RateLimitError:
            pass
        else:
            sys.exit("the rate-limited call did not fail")


def openai_client():
    import openai

    return openai.OpenAI(api_key="sk-test", base_url=OPENAI_URL + "/v1", max_retries=0)


def anthropic_client(**options):
    import anthropic

    return anthropic.Anthropic(api_key="sk-ant-test", base_url=ANTHROPIC_URL, max_retries=0, **options)
