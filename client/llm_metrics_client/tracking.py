"""`client.track(session_id, model)`: one LLM request as STARTED, then COMPLETED or FAILED."""

from __future__ import annotations

import time
from typing import Any, Callable

from llm_metrics_client._core import new_id, now

# Optional fields of a completed request that are sent only when the caller set them.
_COMPLETED_EXTRAS = ("time_to_first_token_ms", "cached_prompt_tokens",
                     "cache_write_prompt_tokens", "reasoning_tokens", "finish_reason", "cost_usd")


class Request:
    """A tracked LLM request. Set what you learn on it; the terminal event is sent on exit.

    ```python
    with metrics.track("session-1", "gpt-4o") as req:
        reply = call_the_model()
        req.prompt_tokens, req.completion_tokens = reply.usage_in, reply.usage_out
        req.tool_calls = len(reply.tool_calls)
    ```
    Leaving the block by an exception sends `LLM_REQUEST_FAILED` with the exception's type name
    (and re-raises it); otherwise `LLM_REQUEST_COMPLETED` with the measured duration.
    """

    def __init__(self, emit: Callable[[dict], None], session_id: str, model: str, *,
                 request_id: str | None = None, user_id: str | None = None,
                 tags: list[str] | None = None, provider: str | None = None):
        self._emit = emit
        self.session_id = session_id
        self.model = model
        self.request_id = request_id or new_id()
        optional = (("user_id", user_id), ("tags", tags), ("provider", provider))
        self.common: dict[str, Any] = {k: v for k, v in optional if v}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens: int | None = None
        self.tool_calls: int | None = None
        self.has_tool_calls = False
        self.time_to_first_token_ms: float | None = None
        self.cached_prompt_tokens: int | None = None
        self.cache_write_prompt_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.finish_reason: str | None = None
        self.cost_usd: float | None = None
        self._started: float | None = None
        self.finished = False

    # -- the events ----------------------------------------------------------------------------

    def start(self) -> "Request":
        """Send `LLM_REQUEST_STARTED` and start the clock (the context managers call this)."""
        self._started = time.perf_counter()
        self._emit(self._event("LLM_REQUEST_STARTED"))
        return self

    def first_token(self) -> None:
        """Mark the first streamed token now (sets `time_to_first_token_ms` once)."""
        if self.time_to_first_token_ms is None and self._started is not None:
            self.time_to_first_token_ms = self.elapsed_ms()

    def complete(self) -> None:
        """Send `LLM_REQUEST_COMPLETED` with the duration so far and what was recorded."""
        if self.finished:
            return
        self.finished = True
        event = self._event("LLM_REQUEST_COMPLETED", duration_ms=self.elapsed_ms(),
                            prompt_tokens=int(self.prompt_tokens),
                            completion_tokens=int(self.completion_tokens),
                            has_tool_calls=bool(self.has_tool_calls or self.tool_calls))
        if self.total_tokens is not None:
            event["total_tokens"] = int(self.total_tokens)
        if self.tool_calls is not None:
            event["tool_calls"] = int(self.tool_calls)
        for name in _COMPLETED_EXTRAS:
            value = getattr(self, name)
            if value is not None:
                event[name] = value
        self._emit(event)

    def fail(self, error: BaseException | str, message: str | None = None) -> None:
        """Send `LLM_REQUEST_FAILED`; `error` is an exception or an error type name."""
        if self.finished:
            return
        self.finished = True
        if isinstance(error, BaseException):
            error_type = type(error).__name__
            message = str(error) if message is None else message
        else:
            error_type = error
        event = self._event("LLM_REQUEST_FAILED", error_type=error_type[:256] or "Error",
                            duration_ms=self.elapsed_ms())
        if message:
            event["error_message"] = message[:4096]
        self._emit(event)

    def elapsed_ms(self) -> float:
        if self._started is None:
            return 0.0
        return round((time.perf_counter() - self._started) * 1000, 3)

    def _event(self, type_: str, **fields) -> dict:
        return {"type": type_, "event_id": new_id(), "session_id": self.session_id,
                "request_id": self.request_id, "model": self.model, "timestamp": now(),
                **self.common, **fields}

    # -- `with` and `async with` ---------------------------------------------------------------

    def __enter__(self) -> "Request":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.complete()
        else:
            self.fail(exc)
        return False

    async def __aenter__(self) -> "Request":
        return self.start()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        return self.__exit__(exc_type, exc, tb)
