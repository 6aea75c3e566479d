"""The JSON shapes the API serves. `projections.query` fills them; they are also the source of
the OpenAPI schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Percentiles(msgspec.Struct):
    p50: float
    p90: float
    p95: float
    p99: float


class Metrics(msgspec.Struct, kw_only=True):
    """The totals every metrics response carries, for whatever slice of requests it covers."""

    total_requests: int
    successful_requests: int
    failed_requests: int
    total_duration_ms: float
    average_duration_ms: float | None
    total_prompt_tokens: int
    total_completion_tokens: int
    total_tokens: int
    average_tokens_per_request: float | None
    requests_with_tools: int
    cached_prompt_tokens: int
    cache_write_prompt_tokens: int
    reasoning_tokens: int
    total_cost_usd: float
    prompt_cost_usd: float
    completion_cost_usd: float
    error_rate: float | None
    errors_by_type: dict[str, int]
    duration_ms_percentiles: Percentiles | None
    time_to_first_token_ms_percentiles: Percentiles | None
    output_tokens_per_second: float | None


class SessionMetrics(Metrics, kw_only=True):
    """One session (`GET /events/metrics/session/{session_id}`)."""

    session_id: str
    first_seen: datetime
    last_seen: datetime
    models: list[str]
    users: list[str]
    in_flight_requests: int
    stale_requests: int
    unpriced_models: list[str]
    by_model: dict[str, Metrics]
    other_models: int = 0


class GlobalMetrics(Metrics, kw_only=True):
    """Every session, or the slice a filter picks (`GET /events/metrics`)."""

    total_sessions: int
    in_flight_requests: int
    stale_requests: int
    unpriced_models: list[str]
    by_model: dict[str, Metrics]
    other_models: int = 0


class ModelMetrics(Metrics, kw_only=True):
    """One model over every session (`GET /events/metrics/models/{model}`)."""

    model: str
    priced: bool


class ModelList(msgspec.Struct):
    models: list[ModelMetrics]
    next: str | None = None


class UserMetrics(Metrics, kw_only=True):
    """One user over every session (`GET /events/metrics/users/{user_id}`)."""

    user_id: str
    unpriced_models: list[str]
    by_model: dict[str, Metrics]
    other_models: int = 0


class SessionsPage(msgspec.Struct, kw_only=True):
    """One page of `GET /events/metrics/sessions`; pass `next` back as `?cursor=`."""

    sessions: list[SessionMetrics]
    total_sessions: int
    matching_sessions: int
    next: str | None


class QueryAnswer(msgspec.Struct):
    """`GET /events/metrics/query` (and the users and tags listings): one row per group, with
    the group's dimension values and the measures asked for."""

    rows: list[dict[str, Any]]
    next: str | None


class RequestFact(msgspec.Struct, kw_only=True):
    """One request of a session (`GET /events/metrics/session/{id}/requests`)."""

    request_id: str
    status: str
    model: str
    provider: str | None
    user_id: str | None
    tags: list[str]
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    time_to_first_token_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_prompt_tokens: int | None
    cache_write_prompt_tokens: int | None
    reasoning_tokens: int | None
    tool_calls: int | None
    has_tool_calls: bool | None
    finish_reason: str | None
    error_type: str | None
    error_message: str | None
    cost_usd: float | None
    priced: bool


class RequestsPage(msgspec.Struct):
    requests: list[RequestFact]
    next: str | None


class Point(msgspec.Struct):
    start: datetime
    requests: int
    failed_requests: int
    total_tokens: int
    total_cost_usd: float
    duration_ms_p50: float | None
    duration_ms_p95: float | None


class Series(msgspec.Struct):
    bucket: str
    points: list[Point]
