"""Read models: the JSON shapes the API serves, computed from projection state on demand.

Each view is O(1) in the size of the log (no scans): it only reads counters.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.codec import us_to_timestamp
from projections.metrics import MetricsState, SessionState, Totals


class MetricsView(msgspec.Struct, kw_only=True):
    total_requests: int
    successful_requests: int
    failed_requests: int
    total_duration_ms: float
    average_duration_ms: float
    total_prompt_tokens: int
    total_completion_tokens: int
    total_tokens: int
    average_tokens_per_request: float
    requests_with_tools: int
    in_flight_requests: int


class SessionMetrics(MetricsView, kw_only=True):
    """Metrics of one session (`GET /events/metrics/session/{session_id}`)."""

    session_id: str
    first_seen: datetime
    last_seen: datetime
    models: list[str]


class GlobalMetrics(MetricsView, kw_only=True):
    """Metrics over every session (`GET /events/metrics`)."""

    total_sessions: int


class SessionsPage(msgspec.Struct, kw_only=True):
    """One page of `GET /events/metrics/sessions`; pass `next` back as `?cursor=`."""

    sessions: list[SessionMetrics]
    total_sessions: int
    next: str | None


def _ms(us: int) -> float:
    value = us / 1000
    return int(value) if value.is_integer() else value


def _totals(t: Totals) -> dict:
    ok = t.successful
    return dict(
        total_requests=ok + t.failed,
        successful_requests=ok,
        failed_requests=t.failed,
        total_duration_ms=_ms(t.duration_us),
        average_duration_ms=round(t.duration_us / 1000 / ok, 2) if ok else 0,
        total_prompt_tokens=t.prompt_tokens,
        total_completion_tokens=t.completion_tokens,
        total_tokens=t.total_tokens,
        average_tokens_per_request=round(t.total_tokens / ok, 2) if ok else 0,
        requests_with_tools=t.with_tools,
        in_flight_requests=t.in_flight,
    )


def session_metrics(session_id: str, s: SessionState) -> SessionMetrics:
    return SessionMetrics(
        session_id=session_id,
        **_totals(s),
        first_seen=us_to_timestamp(s.first_seen_us),
        last_seen=us_to_timestamp(s.last_seen_us),
        models=sorted(s.models),
    )


def global_metrics(state: MetricsState) -> GlobalMetrics:
    return GlobalMetrics(**_totals(state.total), total_sessions=state.total.sessions)


def sessions_page(state: MetricsState, cursor: int, limit: int) -> SessionsPage:
    """Sessions in order of first appearance; `cursor` is an index into that order."""
    ids = state.order[cursor:cursor + limit]
    end = cursor + len(ids)
    return SessionsPage(
        sessions=[session_metrics(sid, state.sessions[sid]) for sid in ids],
        total_sessions=len(state.order),
        next=str(end) if end < len(state.order) else None,
    )
