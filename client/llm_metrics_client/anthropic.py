"""Track every `messages.create` of an `anthropic.Anthropic` / `AsyncAnthropic` client.

```python
from anthropic import Anthropic
from llm_metrics_client import MetricsClient
from llm_metrics_client.anthropic import instrument

llm = instrument(Anthropic(), MetricsClient(url, secret), session_id="chat-42")
llm.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[...])
```

Each call sends `LLM_REQUEST_STARTED`, then `LLM_REQUEST_COMPLETED` or `LLM_REQUEST_FAILED`
(the exception's type: `RateLimitError`, `APIStatusError`, ...). Anthropic's `input_tokens`
excludes the prompt cache, so `prompt_tokens` = `input_tokens` + `cache_read_input_tokens` +
`cache_creation_input_tokens`, with the two cache parts as `cached_prompt_tokens` and
`cache_write_prompt_tokens`. `tool_use` blocks are counted as tool calls; `stop_reason` is
the finish reason.

With `stream=True` the events go when the stream ends: usage comes from `message_start`
(input and cache) and `message_delta` (output, cumulative), time to first token is the first
content delta. A stream closed before its end is FAILED `StreamClosed`. Recording never
breaks the call: a failure to record is logged. This module does not import `anthropic`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from llm_metrics_client._streams import AsyncTrackedStream, TrackedStream
from llm_metrics_client.openai import _is_async, _never_raise
from llm_metrics_client.tracking import Request

PROVIDER = "anthropic"


def instrument(anthropic_client: Any, metrics: Any, *, session_id: str | Callable[[], str],
               user_id: str | None = None, tags: list[str] | None = None,
               provider: str = PROVIDER) -> Any:
    """Wrap `anthropic_client.messages.create` in place and return the client (see the module
    docstring); `session_id` is a string or a function called at each request."""
    messages = anthropic_client.messages
    original = messages.create
    if getattr(original, "__llm_metrics__", False):
        return anthropic_client
    emit = _never_raise(metrics.emit)

    def begin(kwargs: dict) -> Request:
        sid = session_id() if callable(session_id) else session_id
        return Request(emit, sid, str(kwargs.get("model", "")), user_id=user_id, tags=tags,
                       provider=provider).start()

    def finish(req: Request, result: Any, kwargs: dict, stream_type: type) -> Any:
        if kwargs.get("stream"):
            return stream_type(result, _StreamState(req))
        _record_message(req, result)
        req.complete()
        return result

    if _is_async(original):
        @functools.wraps(original)
        async def create(*args, **kwargs):
            req = begin(kwargs)
            try:
                result = await original(*args, **kwargs)
            except BaseException as exc:
                req.fail(exc)
                raise
            return finish(req, result, kwargs, AsyncTrackedStream)
    else:
        @functools.wraps(original)
        def create(*args, **kwargs):
            req = begin(kwargs)
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                req.fail(exc)
                raise
            return finish(req, result, kwargs, TrackedStream)

    create.__llm_metrics__ = True
    messages.create = create
    return anthropic_client


def _record_input(req: Request, usage: Any) -> None:
    """Input and cache from a usage object; prompt tokens include both cache parts."""
    read = getattr(usage, "cache_read_input_tokens", None) or 0
    written = getattr(usage, "cache_creation_input_tokens", None) or 0
    req.prompt_tokens = (getattr(usage, "input_tokens", None) or 0) + read + written
    req.cached_prompt_tokens = read or None
    req.cache_write_prompt_tokens = written or None


def _record_message(req: Request, message: Any) -> None:
    usage = getattr(message, "usage", None)
    if usage is not None:
        _record_input(req, usage)
        req.completion_tokens = getattr(usage, "output_tokens", None) or 0
    req.finish_reason = getattr(message, "stop_reason", None)
    tools = [b for b in getattr(message, "content", None) or []
             if getattr(b, "type", None) == "tool_use"]
    req.tool_calls = len(tools)


class _StreamState:
    """What the stream's events teach us."""

    def __init__(self, req: Request):
        self.req = req
        self.tool_blocks = 0

    def see(self, event: Any) -> bool:
        """Record one stream event; every event is the caller's (True)."""
        kind = getattr(event, "type", None)
        req = self.req
        if kind == "message_start":
            message = getattr(event, "message", None)
            usage = getattr(message, "usage", None)
            if usage is not None:
                _record_input(req, usage)
                req.completion_tokens = getattr(usage, "output_tokens", None) or 0
        elif kind == "content_block_start":
            if getattr(getattr(event, "content_block", None), "type", None) == "tool_use":
                self.tool_blocks += 1
                req.first_token()
        elif kind == "content_block_delta":
            req.first_token()
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
            # output_tokens in message_delta is the running total, not an increment.
            if getattr(usage, "output_tokens", None) is not None:
                req.completion_tokens = usage.output_tokens
            if getattr(usage, "input_tokens", None) is not None:
                _record_input(req, usage)
            reason = getattr(getattr(event, "delta", None), "stop_reason", None)
            if reason:
                req.finish_reason = reason
        return True

    def finish(self) -> None:
        self.req.tool_calls = self.tool_blocks
        self.req.complete()
