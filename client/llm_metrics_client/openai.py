"""Track every `chat.completions.create` of an `openai.OpenAI` / `AsyncOpenAI` client.

```python
from openai import OpenAI
from llm_metrics_client import MetricsClient
from llm_metrics_client.openai import instrument

llm = instrument(OpenAI(), MetricsClient(url, secret), session_id="chat-42")
llm.chat.completions.create(model="gpt-4o-mini", messages=[...])   # tracked, nothing else changes
```

Each call sends `LLM_REQUEST_STARTED`, then `LLM_REQUEST_COMPLETED` (duration, prompt and
completion tokens, cached and reasoning tokens, tool calls, finish reason) or
`LLM_REQUEST_FAILED` with the exception's type (`RateLimitError`, `APITimeoutError`, ...).

Streaming (`stream=True`) returns the same stream object behaviour: the events go when the stream
ends. Time to first token is the time to the first chunk carrying content or a tool call. Usage
comes from the final chunk: when the caller did not set `stream_options`, the wrapper asks for
`{"include_usage": True}` and hides that extra usage-only chunk, so the caller sees exactly the
chunks it would have seen. A stream closed before its end is reported as failed
(`StreamClosed`): the caller gave up on the answer.

This module does not import `openai`; it wraps whatever client object it is given.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from llm_metrics_client._core import log
from llm_metrics_client._streams import AsyncTrackedStream, TrackedStream
from llm_metrics_client.tracking import Request

PROVIDER = "openai"


def instrument(openai_client: Any, metrics: Any, *, session_id: str | Callable[[], str],
               user_id: str | None = None, tags: list[str] | None = None,
               provider: str = PROVIDER) -> Any:
    """Wrap `openai_client.chat.completions.create` in place and return the client.

    `metrics` is a `MetricsClient` or `AsyncMetricsClient` (anything with `emit`). A failure to
    record (say, a closed metrics client) is logged and never raised into the call.
    `session_id` is a string or a function called at each request (e.g. reading a contextvar).
    Works for `OpenAI` and `AsyncOpenAI` (detected from `create` being a coroutine function).
    """
    completions = openai_client.chat.completions
    original = completions.create
    if getattr(original, "__llm_metrics__", False):
        return openai_client  # already instrumented

    emit = _never_raise(metrics.emit)

    def begin(kwargs: dict) -> tuple[Request, bool]:
        sid = session_id() if callable(session_id) else session_id
        req = Request(emit, sid, str(kwargs.get("model", "")), user_id=user_id, tags=tags,
                      provider=provider)
        added_usage = False
        if kwargs.get("stream") and kwargs.get("stream_options") is None:
            kwargs["stream_options"] = {"include_usage": True}
            added_usage = True
        req.start()
        return req, added_usage

    def finish(req, result, kwargs, added_usage, stream_type):
        if kwargs.get("stream"):
            return stream_type(result, _StreamState(req, added_usage))
        _record_response(req, result)
        req.complete()
        return result

    if _is_async(original):
        @functools.wraps(original)
        async def create(*args, **kwargs):
            req, added_usage = begin(kwargs)
            try:
                result = await original(*args, **kwargs)
            except BaseException as exc:
                req.fail(exc)
                raise
            return finish(req, result, kwargs, added_usage, AsyncTrackedStream)
    else:
        @functools.wraps(original)
        def create(*args, **kwargs):
            req, added_usage = begin(kwargs)
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                req.fail(exc)
                raise
            return finish(req, result, kwargs, added_usage, TrackedStream)

    create.__llm_metrics__ = True
    completions.create = create
    return openai_client


def _never_raise(emit):
    """Metrics must not break the call they observe: a failing `emit` (a closed client) logs."""
    def safe_emit(event: dict) -> None:
        try:
            emit(event)
        except Exception as exc:
            log.warning("llm-metrics: event for request %s not recorded: %s",
                        event.get("request_id"), exc)
    return safe_emit


def _is_async(fn) -> bool:
    # openai decorates `create`, which hides the coroutine function underneath.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))


def _record_usage(req: Request, usage: Any) -> None:
    if usage is None:
        return
    req.prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    req.completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    total = getattr(usage, "total_tokens", None)
    if total is not None:
        req.total_tokens = total
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    if cached:
        req.cached_prompt_tokens = cached
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
    if reasoning:
        req.reasoning_tokens = reasoning


def _record_response(req: Request, response: Any) -> None:
    _record_usage(req, getattr(response, "usage", None))
    choices = getattr(response, "choices", None) or []
    if choices:
        req.finish_reason = getattr(choices[0], "finish_reason", None)
        calls = getattr(getattr(choices[0], "message", None), "tool_calls", None) or []
        req.tool_calls = len(calls)


class _StreamState:
    """What a stream teaches us, chunk by chunk."""

    def __init__(self, req: Request, added_usage: bool):
        self.req = req
        self.added_usage = added_usage
        self.tool_call_ids: set[int] = set()

    def see(self, chunk: Any) -> bool:
        """Record one chunk; False when the chunk is ours (usage we asked for) and is hidden."""
        req = self.req
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            _record_usage(req, usage)
        choices = getattr(chunk, "choices", None) or []
        for choice in choices:
            delta = getattr(choice, "delta", None)
            calls = getattr(delta, "tool_calls", None) or []
            if getattr(delta, "content", None) or calls or getattr(delta, "refusal", None):
                req.first_token()
            for call in calls:
                self.tool_call_ids.add(getattr(call, "index", 0))
            if getattr(choice, "finish_reason", None):
                req.finish_reason = choice.finish_reason
        return not (self.added_usage and not choices and usage is not None)

    def finish(self) -> None:
        if self.tool_call_ids:
            self.req.tool_calls = len(self.tool_call_ids)
        self.req.complete()
