"""What one LLM-call span says, whichever instrumentation wrote it.

The libraries name the same facts differently: the OpenTelemetry GenAI conventions (current and
previous names), OpenLLMetry/traceloop, OpenInference (Arize Phoenix), Langfuse, openlit,
logfire and the anthropic SDK's own spans. `read_call` turns a span's attributes into one
`Call` with the project's field names; `service.otlp_spans` decides which spans are calls and
turns them into events. No HTTP here.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, NamedTuple

# Each field, and the attributes that carry it, best first. Span attributes are looked up before
# resource attributes for the session and the user only.
SESSION = ("gen_ai.conversation.id", "session.id", "langfuse.session.id",
           "traceloop.association.properties.session_id")
USER = ("user.id", "enduser.id", "langfuse.user.id", "traceloop.association.properties.user_id")
MODEL = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name",
         "langfuse.observation.model.name")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
         "llm.usage.prompt_tokens")
OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
          "llm.token_count.completion", "llm.usage.completion_tokens")
CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
              "llm.token_count.prompt_details.cache_read")
CACHE_WRITE = ("gen_ai.usage.cache_creation.input_tokens",
               "gen_ai.usage.cache_write.input_tokens",
               "gen_ai.usage.cache_creation_input_tokens",
               "llm.token_count.prompt_details.cache_write")
REASONING = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
             "llm.token_count.completion_details.reasoning")
FINISH = ("gen_ai.response.finish_reasons", "llm.finish_reason", "anthropic.message.stop_reason",
          "langfuse.observation.metadata.finish_reason")
# Seconds from the request to the first streamed chunk.
TTFT_SECONDS = ("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
RESPONSE_ID = ("gen_ai.response.id",)
# JSON strings: Langfuse's usage, OpenInference's request parameters (the model of a failed call).
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_COMPLETION_START = "langfuse.observation.completion_start_time"
LANGFUSE_OUTPUT = "langfuse.observation.output"
LANGFUSE_TYPE = "langfuse.observation.type"
INVOCATION_PARAMETERS = "llm.invocation_parameters"
OPENINFERENCE_KIND = "openinference.span.kind"
OPENINFERENCE_FIRST_TOKEN = "First Token Stream Event"

# Langfuse's usage keys (its own and the provider's, as its integrations pass them through).
_USAGE_INPUT = ("input", "prompt_tokens", "input_tokens")
_USAGE_OUTPUT = ("output", "completion_tokens", "output_tokens")
_USAGE_CACHE_READ = ("input_cached_tokens", "input_cache_read", "cache_read_input_tokens",
                     "prompt_tokens_details.cached_tokens")
_USAGE_CACHE_WRITE = ("input_cache_creation", "cache_creation_input_tokens")
_USAGE_REASONING = ("output_reasoning_tokens", "output_reasoning",
                    "completion_tokens_details.reasoning_tokens")

ERROR_TYPE = "error.type"
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"

# Every attribute read (only these are converted from protobuf: prompts and completions can be
# large). LANGFUSE_OUTPUT is read only to see whether the model asked for a tool.
READ_ATTRIBUTES = frozenset(
    SESSION + USER + MODEL + PROVIDER + INPUT + OUTPUT + CACHE_READ + CACHE_WRITE + REASONING
    + FINISH + TTFT_SECONDS + RESPONSE_ID
    + (LANGFUSE_USAGE, LANGFUSE_COMPLETION_START, LANGFUSE_OUTPUT, LANGFUSE_TYPE,
       INVOCATION_PARAMETERS, OPENINFERENCE_KIND, ERROR_TYPE, OPERATION, REQUEST_MODEL,
       "gen_ai.request.stream", "duration", "logfire.span_type", "langfuse.observation.level",
       "langfuse.observation.status_message"))

# Finish reasons that mean "the model asked for a tool" across providers' vocabularies.
TOOL_FINISH_REASONS = frozenset({"tool_calls", "tool_call", "tool_use", "function_call"})


class ConventionError(ValueError):
    """An attribute whose value cannot mean what its name says; the message names it."""


class Call(NamedTuple):
    """One LLM call as the span describes it; None where the span does not say."""

    model: str
    provider: str | None
    session_id: str | None
    user_id: str | None
    response_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_prompt_tokens: int | None
    cache_write_prompt_tokens: int | None
    reasoning_tokens: int | None
    ttft_ms: float | None
    finish_reason: str | None
    asked_for_tool: bool
    error_type: str | None


def is_llm_call(attributes: dict[str, Any]) -> bool:
    """A span some convention marks as an LLM call (or a tool run, counted separately)."""
    return (OPERATION in attributes or REQUEST_MODEL in attributes
            or attributes.get(OPENINFERENCE_KIND) == "LLM"
            or attributes.get(LANGFUSE_TYPE) == "generation")


# openlit's failed anthropic calls carry no attribute at all: its scope and the span name
# (`{operation} {model}`, the GenAI span-name convention) still say what they were.
_SPAN_NAME = re.compile(r"^(chat|text_completion|generate_content) (\S+)$")
OPENLIT_SCOPE = "openlit.instrumentation."


def from_span_name(scope: str, name: str) -> dict[str, Any]:
    """The attributes an attribute-less openlit span stands for ({} for any other span)."""
    match = _SPAN_NAME.match(name) if scope.startswith(OPENLIT_SCOPE) else None
    if match is None:
        return {}
    return {OPERATION: match.group(1), REQUEST_MODEL: match.group(2),
            "gen_ai.provider.name": scope.removeprefix(OPENLIT_SCOPE)}


def read_call(attributes: dict, resource: dict, start_ns: int,
              events: list[tuple[str, int, dict]]) -> Call:
    """The call `attributes` describe; `events` are the span's (name, time_ns, attributes)."""
    usage = _json_object(attributes.get(LANGFUSE_USAGE), LANGFUSE_USAGE)
    cached = _count(attributes, CACHE_READ) or _usage(usage, _USAGE_CACHE_READ)
    written = _count(attributes, CACHE_WRITE) or _usage(usage, _USAGE_CACHE_WRITE)
    prompt = _count(attributes, INPUT)
    if prompt is None:
        prompt = _usage(usage, _USAGE_INPUT)
    if prompt is not None and prompt < (cached or 0) + (written or 0):
        # The provider's own count (Anthropic's input_tokens) leaves the cache out.
        prompt += (cached or 0) + (written or 0)
    completion = _count(attributes, OUTPUT)
    if completion is None:
        completion = _usage(usage, _USAGE_OUTPUT)
    reasons = finish_reasons(_first(attributes, FINISH))
    return Call(
        model=str(_first(attributes, MODEL) or _invocation_model(attributes) or ""),
        provider=_text(_first(attributes, PROVIDER)),
        session_id=_text(_first(attributes, SESSION) or _first(resource, SESSION)),
        user_id=_text(_first(attributes, USER) or _first(resource, USER)),
        response_id=_text(_first(attributes, RESPONSE_ID)),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
        cache_write_prompt_tokens=written,
        reasoning_tokens=_count(attributes, REASONING) or _usage(usage, _USAGE_REASONING),
        ttft_ms=_ttft_ms(attributes, start_ns, events),
        finish_reason=reasons[0] if reasons else None,
        asked_for_tool=(any(r in TOOL_FINISH_REASONS for r in reasons)
                        or _langfuse_tool_call(attributes.get(LANGFUSE_OUTPUT))),
        error_type=error_class(attributes.get(ERROR_TYPE)),
    )


_CLASS_REPR = re.compile(r"^<class '([^']+)'>$")


def error_class(value: Any) -> str | None:
    """`error.type` as the exception's class name: `<class 'openai.RateLimitError'>` and
    `openai.RateLimitError` are `RateLimitError`; a code such as `rate_limit_error` or `429`
    stays as it is."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    match = _CLASS_REPR.match(text)
    if match:
        text = match.group(1)
    if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", text):
        text = text.rsplit(".", 1)[1]
    return text


def finish_reasons(value: Any) -> list[str]:
    """A list of finish reasons from a list, a string, or a JSON-encoded list or string
    (logfire, Langfuse)."""
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", '"'):
            try:
                value = json.loads(stripped)
            except ValueError:
                pass
        if isinstance(value, str):
            return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [str(r) for r in value if r is not None and r != ""]
    return [str(value)]


def _ttft_ms(attributes: dict, start_ns: int, events: list[tuple[str, int, dict]]
             ) -> float | None:
    for name in TTFT_SECONDS:
        seconds = _number(attributes.get(name), name)
        if seconds is not None:
            return seconds * 1000
    for name, time_ns, _ in events:
        if name == OPENINFERENCE_FIRST_TOKEN and time_ns >= start_ns:
            return (time_ns - start_ns) / 1e6
    started = attributes.get(LANGFUSE_COMPLETION_START)
    if started:
        text = _json_text(started)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConventionError(f"{LANGFUSE_COMPLETION_START} must be an ISO 8601 time, "
                                  f"got {started!r}") from None
        if moment.tzinfo is not None:
            delta_ms = moment.timestamp() * 1000 - start_ns / 1e6
            if delta_ms >= 0:
                return delta_ms
    return None


def _langfuse_tool_call(output: Any) -> bool:
    if not isinstance(output, str) or "tool" not in output:
        return False
    try:
        message = json.loads(output)
    except ValueError:
        return False
    if isinstance(message, dict):
        return bool(message.get("tool_calls")) or any(
            isinstance(block, dict) and block.get("type") == "tool_use"
            for block in message.get("content") or [] if isinstance(message.get("content"), list))
    return False


def _invocation_model(attributes: dict) -> str | None:
    raw = attributes.get(INVOCATION_PARAMETERS)
    if not isinstance(raw, str):
        return None
    try:
        parameters = json.loads(raw)
    except ValueError:
        return None
    model = parameters.get("model") if isinstance(parameters, dict) else None
    return model if isinstance(model, str) and model else None


def _first(attributes: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None and value != "":
            return value
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_text(value: Any) -> str:
    """Langfuse JSON-encodes string attributes (`"\\"2026-...\\""`): the string inside."""
    if isinstance(value, str) and value.startswith('"'):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return str(value)


def _json_object(value: Any, name: str) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        decoded = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise ConventionError(f"{name} must be a JSON object, got {str(value)[:100]!r}")
    return decoded


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConventionError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConventionError(f"{name} must be a number, got {value!r}") from None


def _whole(value: Any, name: str) -> int | None:
    number = _number(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise ConventionError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _count(attributes: dict, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = attributes.get(name)
        if value is not None:
            return _whole(value, name)
    return None


def _usage(usage: dict, keys: tuple[str, ...]) -> int | None:
    """A count from Langfuse's usage object; `a.b` reaches into a nested object."""
    for key in keys:
        value: Any = usage
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return _whole(value, f"{LANGFUSE_USAGE}.{key}")
    return None
