"""Real instrumentation libraries, each in its own virtualenv (tests/peers), drive the real
`openai` / `anthropic` SDKs against local stub providers and export OTLP to a real service
process; what the service stored is read back through `GET /events`.

Each library makes the same four calls (plain, tool call, stream, rate-limited); every figure
the library records must come out as the call did: one request per call, tokens, cache and
reasoning parts, tool use, model, failure type, duration, time to first token where the
library records it, session and user.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.http_stubs import (ANTHROPIC_PROMPT_TOKENS, ANTHROPIC_USAGE, FIRST_TOKEN_DELAY_S,
                              USAGE, ThreadedApp, anthropic_stub, openai_stub)
from tests.peers import run_driver
from tests.server import SECRET, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("peers") / "events.db") as server:
        yield server


@pytest.fixture(scope="module")
def stubs():
    with ThreadedApp(openai_stub()) as openai, ThreadedApp(anthropic_stub()) as anthropic:
        yield openai.url, anthropic.url


def log_position(server) -> int:
    req = urllib.request.Request(server.url + "/events?after=0&limit=1",
                                 headers={"x-internal-auth": SECRET})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.headers["x-log-position"])


def events_after(server, position: int) -> list[dict]:
    req = urllib.request.Request(f"{server.url}/events?after={position}&limit=10000",
                                 headers={"x-internal-auth": SECRET})
    with urllib.request.urlopen(req, timeout=10) as r:
        return [json.loads(line) for line in r.read().splitlines() if line]


def drive(server, stubs, peer: str, driver: str, session: str = "", **env) -> list[dict]:
    """Run a driver; the terminal events it caused, in log order (each with its started)."""
    before = log_position(server)
    done = run_driver(peer, driver, {
        "OPENAI_URL": stubs[0], "ANTHROPIC_URL": stubs[1], "SERVICE_URL": server.url,
        "SERVICE_KEY": SECRET, "SESSION_ID": session, "USER_ID": "user-7",
        "HOME": os.environ.get("HOME", "/tmp"),
        # For the exporters the drivers do not build themselves (openlit, logfire, traceloop).
        "OTEL_EXPORTER_OTLP_TIMEOUT": "60", **env})
    events = events_after(server, before)
    started = {(e["session_id"], e["request_id"]) for e in events
               if e["type"] == "LLM_REQUEST_STARTED"}
    ended = [e for e in events if e["type"] != "LLM_REQUEST_STARTED"]
    assert started == {(e["session_id"], e["request_id"]) for e in ended}
    LAST_DRIVER_OUTPUT[:] = [done.stderr[-3000:]]
    return ended


# What the last driver printed on stderr (an exporter's warnings), shown when a check fails.
LAST_DRIVER_OUTPUT: list[str] = []


def openai_call(tool=False, cached=USAGE["prompt_tokens_details"]["cached_tokens"],
                reasoning=USAGE["completion_tokens_details"]["reasoning_tokens"]) -> dict:
    return dict(type="LLM_REQUEST_COMPLETED", model="gpt-4o-mini",
                prompt_tokens=USAGE["prompt_tokens"],
                completion_tokens=USAGE["completion_tokens"], cached_prompt_tokens=cached,
                cache_write_prompt_tokens=None, reasoning_tokens=reasoning,
                has_tool_calls=tool)


def anthropic_call(tool=False) -> dict:
    return dict(type="LLM_REQUEST_COMPLETED", model="claude-sonnet-4-5",
                prompt_tokens=ANTHROPIC_PROMPT_TOKENS,
                completion_tokens=ANTHROPIC_USAGE["output_tokens"],
                cached_prompt_tokens=ANTHROPIC_USAGE["cache_read_input_tokens"],
                cache_write_prompt_tokens=ANTHROPIC_USAGE["cache_creation_input_tokens"],
                reasoning_tokens=None, has_tool_calls=tool)


def failure(error_type: str) -> dict:
    return dict(type="LLM_REQUEST_FAILED", model="rate-limited", error_type=error_type)


def figures(ended: list[dict], expected: list[dict]) -> list[dict]:
    return [{k: e.get(k, False if k == "has_tool_calls" else None) for k in want}
            for e, want in zip(ended, expected)]


def check(ended: list[dict], expected: list[dict], *, stream_index: int, ttft: bool,
          session: str | None = None, user: str | None = None, one_session=True) -> None:
    assert len(ended) == len(expected), ([(e["type"], e["model"], e["request_id"],
                                           e.get("duration_ms")) for e in ended],
                                         LAST_DRIVER_OUTPUT)
    assert figures(ended, expected) == expected
    stream = ended[stream_index]
    # The stub waits before the first token: the call lasts at least that long.
    assert stream["duration_ms"] >= FIRST_TOKEN_DELAY_S * 1000
    if ttft:
        assert 0 < stream["time_to_first_token_ms"] <= stream["duration_ms"]
    if session is not None:
        assert {e["session_id"] for e in ended} == {session}
    elif one_session:
        assert len({e["session_id"] for e in ended}) == 1
    assert {e.get("user_id") for e in ended} == {user}


OPENAI_CALLS = [openai_call(), openai_call(tool=True), openai_call(), failure("RateLimitError")]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_opentelemetry_instrumentation_openai_v2(server, stubs, encoding):
    ended = drive(server, stubs, "v2", "v2", OTLP_ENCODING=encoding)
    # The official instrumentation (v1.30 conventions) records neither cache nor reasoning,
    # and `error.type` as "<class 'openai.RateLimitError'>".
    expected = [openai_call(cached=None, reasoning=None),
                openai_call(tool=True, cached=None, reasoning=None),
                openai_call(cached=None, reasoning=None), failure("RateLimitError")]
    check(ended, expected, stream_index=2, ttft=False)


def test_openllmetry_openai_and_anthropic_with_the_sdks_own_spans(server, stubs):
    ended = drive(server, stubs, "openllmetry", "openllmetry")
    # OpenLLMetry drops reasoning tokens from streams; the anthropic SDK's own spans and
    # OpenLLMetry's describe the same calls: four anthropic requests, not eight.
    expected = [openai_call(), openai_call(tool=True), openai_call(reasoning=None),
                failure("RateLimitError"),
                anthropic_call(), anthropic_call(tool=True), anthropic_call(),
                failure("RateLimitError")]
    check(ended, expected, stream_index=6, ttft=True)


def test_anthropic_sdk_spans_alone(server, stubs):
    ended = drive(server, stubs, "openllmetry", "anthropic_sdk")
    expected = [anthropic_call(), anthropic_call(tool=True), anthropic_call(),
                failure("rate_limit_error")]
    # Each call is a root span of its own trace: four sessions.
    check(ended, expected, stream_index=2, ttft=True, one_session=False)


def test_anthropic_sdk_spans_with_openllmetry_in_other_traces_count_once(server, stubs):
    ended = drive(server, stubs, "openllmetry", "anthropic_sdk", WITH_INSTRUMENTATION="1")
    expected = [anthropic_call(), anthropic_call(tool=True), anthropic_call(),
                failure("RateLimitError")]
    check(ended, expected, stream_index=2, ttft=True, one_session=False)


def test_openinference_session_user_and_first_token(server, stubs):
    ended = drive(server, stubs, "openinference", "openinference", session="oi-session")
    check(ended, OPENAI_CALLS, stream_index=2, ttft=True, session="oi-session", user="user-7")


def test_langfuse_sdk_through_its_own_endpoint_and_basic_auth(server, stubs):
    ended = drive(server, stubs, "langfuse", "langfuse", session="lf-session")
    # Langfuse sends no error type for a failed generation.
    expected = OPENAI_CALLS[:3] + [failure("_OTHER")]
    check(ended, expected, stream_index=2, ttft=True, session="lf-session", user="user-7")


def test_logfire_stream_spans_are_one_call(server, stubs):
    ended = drive(server, stubs, "logfire", "logfire")
    # logfire records no reasoning tokens.
    expected = [openai_call(reasoning=None), openai_call(tool=True, reasoning=None),
                openai_call(reasoning=None), failure("RateLimitError")]
    check(ended, expected, stream_index=2, ttft=False)


def test_openlit_openai_and_anthropic(server, stubs):
    ended = drive(server, stubs, "openlit", "openlit")
    # openlit reports Anthropic's own input count (without the cache: the service adds the
    # cache parts back) and no cache at all in Anthropic streams; no reasoning tokens. Its
    # failed Anthropic span has no attributes: its scope and name say what it was.
    stream = dict(anthropic_call(), prompt_tokens=ANTHROPIC_USAGE["input_tokens"],
                  cached_prompt_tokens=None, cache_write_prompt_tokens=None)
    expected = [openai_call(reasoning=None), openai_call(tool=True, reasoning=None),
                openai_call(reasoning=None), failure("RateLimitError"),
                anthropic_call(), anthropic_call(tool=True), stream,
                failure("RateLimitError")]
    check(ended, expected, stream_index=6, ttft=True, one_session=False)


def test_traceloop_sdk_association_properties(server, stubs):
    ended = drive(server, stubs, "traceloop", "traceloop", session="tl-session")
    # As OpenLLMetry (it is its SDK): no reasoning tokens in streams.
    expected = [openai_call(), openai_call(tool=True), openai_call(reasoning=None),
                failure("RateLimitError")]
    check(ended, expected, stream_index=2, ttft=False, session="tl-session", user="user-7")
