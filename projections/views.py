"""Read models: the JSON shapes the API serves, computed from projection state on demand.

Single-item views only read counters (no scans); listings scan the sessions they list.
The response Structs here are also the source of the OpenAPI schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

import msgspec

from events.codec import us_to_timestamp
from projections.filters import EventFilter
from projections.metrics import (ByModel, MetricsState, SessionState, all_pending_counts,
                                 pending_counts, session_stats)
from projections.prices import PICO, PriceTable
from projections.sketch import Sketch
from projections.stats import Stats, combine, cost, unpriced


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
    average_duration_ms: float
    total_prompt_tokens: int
    total_completion_tokens: int
    total_tokens: int
    average_tokens_per_request: float
    requests_with_tools: int
    cached_prompt_tokens: int
    reasoning_tokens: int
    total_cost_usd: float
    prompt_cost_usd: float
    completion_cost_usd: float
    error_rate: float
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


class GlobalMetrics(Metrics, kw_only=True):
    """Every session, or the slice a filter picks (`GET /events/metrics`)."""

    total_sessions: int
    in_flight_requests: int
    stale_requests: int
    unpriced_models: list[str]
    by_model: dict[str, Metrics]


class ModelMetrics(Metrics, kw_only=True):
    """One model over every session (`GET /events/metrics/models/{model}`)."""

    model: str
    priced: bool


class ModelList(msgspec.Struct):
    models: list[ModelMetrics]


class UserMetrics(Metrics, kw_only=True):
    """One user over every session (`GET /events/metrics/users/{user_id}`)."""

    user_id: str
    unpriced_models: list[str]
    by_model: dict[str, Metrics]


class SessionsPage(msgspec.Struct, kw_only=True):
    """One page of `GET /events/metrics/sessions`; pass `next` back as `?cursor=`."""

    sessions: list[SessionMetrics]
    total_sessions: int
    matching_sessions: int
    next: str | None


def _ms(us: int) -> float:
    value = us / 1000
    return int(value) if value.is_integer() else value


def _percentiles(sketch: Sketch | None) -> Percentiles | None:
    values = sketch.percentiles() if sketch is not None else None
    return Percentiles(**values) if values else None


def _fields(s: Stats, cost_p: tuple[int, int]) -> dict:
    ok, failed = s.successful, s.failed
    prompt_p, completion_p = cost_p
    total = ok + failed
    return dict(
        total_requests=total,
        successful_requests=ok,
        failed_requests=failed,
        total_duration_ms=_ms(s.duration_us),
        average_duration_ms=round(s.duration_us / 1000 / ok, 2) if ok else 0,
        total_prompt_tokens=s.prompt_tokens,
        total_completion_tokens=s.completion_tokens,
        total_tokens=s.total_tokens,
        average_tokens_per_request=round(s.total_tokens / ok, 2) if ok else 0,
        requests_with_tools=s.with_tools,
        cached_prompt_tokens=s.cached_prompt_tokens,
        reasoning_tokens=s.reasoning_tokens,
        total_cost_usd=(prompt_p + completion_p) / PICO,
        prompt_cost_usd=prompt_p / PICO,
        completion_cost_usd=completion_p / PICO,
        error_rate=round(failed / total, 6) if total else 0,
        errors_by_type=dict(sorted(s.errors.items())) if s.errors else {},
        duration_ms_percentiles=_percentiles(s.durations),
        time_to_first_token_ms_percentiles=_percentiles(s.ttfts),
        output_tokens_per_second=round(s.gen_tokens / (s.gen_us / 1e6), 2) if s.gen_us else None,
    )


class Slice:
    """Some requests, broken down by model, with their cost at today's prices."""

    def __init__(self, by_model: ByModel, prices: PriceTable):
        self.by_model = by_model
        self.costs = {m: cost(s, prices.lookup(m)) for m, s in by_model.items()}
        self.unpriced = sorted(m for m, s in by_model.items() if unpriced(s, prices.lookup(m)))
        self._per_model = {m: _fields(s, self.costs[m]) for m, s in sorted(by_model.items())}

    def fields(self) -> dict:
        if len(self._per_model) == 1:  # most sessions: the one model's fields are the total
            return dict(next(iter(self._per_model.values())))
        prompt_p = sum(c[0] for c in self.costs.values())
        completion_p = sum(c[1] for c in self.costs.values())
        return _fields(combine(self.by_model.values()), (prompt_p, completion_p))

    def per_model(self) -> dict[str, Metrics]:
        return {m: Metrics(**fields) for m, fields in self._per_model.items()}


# The request-derived part of recent session answers, valid while the session gained no
# finished request: reads of the same sessions (listings, live updates) cost a lookup.
_answers: dict[tuple[int, str | None], tuple] = {}
_ANSWERS_MAX = 20_000


def _session_part(s: SessionState, names: list[str], prices: PriceTable,
                  model: str | None) -> tuple[dict, list[str], dict[str, Metrics]]:
    size = len(s.finished)
    key = (id(s), model)
    hit = _answers.get(key)
    # A compaction replaces `finished`, so its identity is part of what the answer depends on.
    if hit is not None and hit[0] is s.finished and hit[1] == size and hit[2] is prices:
        return hit[3]
    by_model = session_stats(s, names)
    part = Slice(by_model if model is None else _only(by_model, model), prices)
    answer = (part.fields(), part.unpriced, part.per_model())
    if len(_answers) >= _ANSWERS_MAX:
        _answers.clear()
    _answers[key] = (s.finished, size, prices, answer)
    return answer


def session_metrics(state: MetricsState, session_id: str, cutoff_us: int, prices: PriceTable,
                    model: str | None = None) -> SessionMetrics:
    """A session's metrics, or only its requests to `model`."""
    s = state.sessions[session_id]
    fields, unpriced_models, per_model = _session_part(s, state.names, prices, model)
    pending = s.pending.values() if s.pending else ()
    if model is not None:
        pending = [p for p in pending if p.model == model]
    in_flight, stale = pending_counts(pending, cutoff_us)
    return SessionMetrics(
        **fields,
        session_id=session_id,
        first_seen=us_to_timestamp(s.first_seen_us),
        last_seen=us_to_timestamp(s.last_seen_us),
        models=sorted(s.models),
        users=sorted(s.users or ()),
        in_flight_requests=in_flight,
        stale_requests=stale,
        unpriced_models=unpriced_models,
        by_model=per_model,
    )


def _only(by_model: ByModel, model: str) -> ByModel:
    return {model: by_model[model]} if model in by_model else {}


def global_metrics(state: MetricsState, cutoff_us: int, prices: PriceTable,
                   where: EventFilter | None = None) -> GlobalMetrics:
    """Totals over every session, or over the slice `where` picks (model, user or tag; see
    `EventFilter.in_memory`); a filtered replay answers the other questions."""
    where = where or EventFilter()
    if where.user_id is not None:
        by_model = state.users.get(where.user_id, {})
    elif where.tag is not None:
        by_model = state.tags.get(where.tag, {})
    else:
        by_model = state.models
    if where.model is not None:
        by_model = _only(by_model, where.model)
    if where.empty:
        sessions = len(state.sessions)
        in_flight, stale = all_pending_counts(state, cutoff_us)
    else:
        sessions = sum(1 for s in state.sessions.values() if _touches(s, where))
        pending = (p for sid in state.with_pending for p in state.sessions[sid].pending.values())
        in_flight, stale = pending_counts(filter(where, pending), cutoff_us)
    part = Slice(by_model, prices)
    return GlobalMetrics(
        **part.fields(),
        total_sessions=sessions,
        in_flight_requests=in_flight,
        stale_requests=stale,
        unpriced_models=part.unpriced,
        by_model=part.per_model(),
    )


def _touches(s: SessionState, where: EventFilter) -> bool:
    """Whether a session has an event of the slice (model, user and tag filters only)."""
    return ((where.model is None or where.model in s.models)
            and (where.user_id is None or where.user_id in (s.users or ()))
            and (where.tag is None or where.tag in (s.tags or ())))


def model_metrics(model: str, stats: Stats, prices: PriceTable) -> ModelMetrics:
    price = prices.lookup(model)
    return ModelMetrics(**_fields(stats, cost(stats, price)), model=model,
                        priced=price is not None)


def user_metrics(user_id: str, by_model: ByModel, prices: PriceTable) -> UserMetrics:
    part = Slice(by_model, prices)
    return UserMetrics(
        **part.fields(),
        user_id=user_id,
        unpriced_models=part.unpriced,
        by_model=part.per_model(),
    )


# ---- session listings --------------------------------------------------------------------------

SORT_KEYS = {
    "first_seen": None,  # the log's order of first appearance (stable under new sessions)
    "last_seen": lambda s: s.last_seen_us,
    "total_tokens": lambda s: s.total_tokens,
    "total_cost_usd": lambda s: s.cost_p,
    "failed_requests": lambda s: s.failed,
}


class SessionFilter(msgspec.Struct, kw_only=True):
    model: str | None = None
    user_id: str | None = None
    has_failures: bool | None = None
    since_us: int | None = None

    def matches(self, s: SessionState) -> bool:
        if self.model is not None and self.model not in s.models:
            return False
        if self.user_id is not None and self.user_id not in (s.users or ()):
            return False
        if self.has_failures is not None and (s.failed > 0) != self.has_failures:
            return False
        if self.since_us is not None and s.last_seen_us < self.since_us:
            return False
        return True

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.model, self.user_id, self.has_failures,
                                           self.since_us))


def sessions_page(state: MetricsState, cursor: int, limit: int, cutoff_us: int,
                  prices: PriceTable, sort: str = "first_seen", descending: bool = False,
                  where: SessionFilter | None = None) -> SessionsPage:
    """A page of sessions; `cursor` is an offset into the sorted, filtered listing."""
    ids: Iterable[str] = state.order
    if where is not None and where.active:
        ids = [sid for sid in ids if where.matches(state.sessions[sid])]
    key = SORT_KEYS[sort]
    if key is not None:
        sessions = state.sessions
        ids = sorted(ids, key=lambda sid: key(sessions[sid]), reverse=descending)
    elif descending:
        ids = list(reversed(ids))
    ids = ids if isinstance(ids, list) else list(ids)
    page = ids[cursor:cursor + limit]
    end = cursor + len(page)
    return SessionsPage(
        sessions=[session_metrics(state, sid, cutoff_us, prices) for sid in page],
        total_sessions=len(state.sessions),
        matching_sessions=len(ids),
        next=str(end) if end < len(ids) else None,
    )
