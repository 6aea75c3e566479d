"""Per-session, per-model, per-user and per-tag request metrics: a pure fold over log records.

The rules (the seed's definitions, extended by the analytics issue):
- a request counts once it has a terminal event: `total_requests = successful + failed`;
- durations, tokens and cost are summed over completed (successful) requests, and the averages
  are over those;
- a request with a started event and no terminal one yet is pending: in flight, or stale once
  it is older than the stale window (decided when read, against the newest event time);
- the order of arrival never changes the result: a terminal event may come before its start.

The store guarantees each request has at most one started and one terminal event, so a small
dict and set per session are enough to match them up in any order.
"""

from __future__ import annotations

from typing import Iterable

import msgspec

from events.records import Completed, Failed, Record, Started
from projections.prices import PriceTable, request_cost
from projections.sketch import bucket_of
from projections.stats import Stats, add_completed, add_failed

ByModel = dict[str, Stats]


class SessionState(msgspec.Struct, gc=False):
    first_seen_us: int
    last_seen_us: int
    models: list[str]
    by_model: ByModel = {}
    users: list[str] = []
    tags: list[str] = []
    # Kept whole so sorted listings need no per-session sums.
    total_tokens: int = 0
    cost_p: int = 0
    failed: int = 0
    # request_id -> its started event, for requests not finished; None when empty.
    pending: dict[str, Started] | None = None
    # Requests whose terminal event came before their start.
    finished_first: set[str] | None = None


class MetricsState(msgspec.Struct, gc=False):
    sessions: dict[str, SessionState] = {}
    # Session ids in order of first appearance in the log: the stable order of the listing.
    order: list[str] = []
    models: ByModel = {}
    users: dict[str, ByModel] = {}
    tags: dict[str, ByModel] = {}
    pending: int = 0
    # Sessions with pending requests: counting stale requests only needs to look at these.
    with_pending: set[str] = set()
    newest_event_us: int = 0


def _stats(by_model: ByModel, model: str) -> Stats:
    stats = by_model.get(model)
    if stats is None:
        stats = by_model[model] = Stats()
    return stats


class MetricsProjection:
    """Folds records into `MetricsState`. `apply` is the hot path of ingest and replay."""

    name = "metrics"
    # Bump when the state's shape or the fold's rules change: old snapshots are then ignored.
    version = 2
    state_type = MetricsState

    def __init__(self, prices: PriceTable, state: MetricsState | None = None):
        self.prices = prices
        self.state = state if state is not None else MetricsState()

    @property
    def fingerprint(self) -> str:
        """What a snapshot must match: the fold's version and the prices it folded with."""
        return f"{self.version}/{self.prices.digest}"

    def apply(self, record: Record) -> None:
        state = self.state
        sid = record.session_id
        ts = record.timestamp_us
        model = record.model
        if ts > state.newest_event_us:
            state.newest_event_us = ts
        session = state.sessions.get(sid)
        if session is None:
            session = SessionState(ts, ts, [model])
            state.sessions[sid] = session
            state.order.append(sid)
        else:
            if ts < session.first_seen_us:
                session.first_seen_us = ts
            elif ts > session.last_seen_us:
                session.last_seen_us = ts
            if model not in session.models:
                session.models.append(model)
        user = record.user_id
        if user is not None and user not in session.users:
            session.users.append(user)
        for tag in record.tags:
            if tag not in session.tags:
                session.tags.append(tag)

        rid = record.request_id
        kind = type(record)
        if kind is Started:
            early = session.finished_first
            if early is not None and rid in early:
                early.discard(rid)
                if not early:
                    session.finished_first = None
            else:
                if session.pending is None:
                    session.pending = {rid: record}
                    state.with_pending.add(sid)
                else:
                    session.pending[rid] = record
                state.pending += 1
            return

        pending = session.pending
        if pending is not None and rid in pending:
            del pending[rid]
            if not pending:
                session.pending = None
                state.with_pending.discard(sid)
            state.pending -= 1
        elif session.finished_first is None:
            session.finished_first = {rid}
        else:
            session.finished_first.add(rid)

        dims = [session.by_model, state.models]
        if user is not None:
            dims.append(_dim(state.users, user))
        for tag in record.tags:
            dims.append(_dim(state.tags, tag))

        if kind is Completed:
            price = self.prices.lookup(model)
            prompt_p, completion_p = request_cost(record, price)
            unpriced = 1 if price is None and record.cost_usd is None else 0
            duration_us = round(record.duration_ms * 1000)
            ttft = record.time_to_first_token_ms
            if ttft is None:
                gen_us, ttft_bucket = duration_us, None
            else:
                gen_us, ttft_bucket = duration_us - round(ttft * 1000), bucket_of(ttft)
            args = (record.prompt_tokens, record.completion_tokens, record.total_tokens,
                    record.cached_prompt_tokens, record.reasoning_tokens,
                    1 if record.has_tool_calls else 0, duration_us, prompt_p, completion_p,
                    unpriced, gen_us, bucket_of(record.duration_ms), ttft_bucket)
            for by_model in dims:
                add_completed(_stats(by_model, model), *args)
            session.total_tokens += record.total_tokens
            session.cost_p += prompt_p + completion_p
        elif kind is Failed:
            for by_model in dims:
                add_failed(_stats(by_model, model), record.error_type)
            session.failed += 1


def _dim(table: dict[str, ByModel], key: str) -> ByModel:
    by_model = table.get(key)
    if by_model is None:
        by_model = table[key] = {}
    return by_model


def pending_counts(pending: Iterable[Started], cutoff_us: int) -> tuple[int, int]:
    """(in flight, stale) among pending started events: stale ones started before `cutoff_us`."""
    in_flight = stale = 0
    for started in pending:
        if started.timestamp_us < cutoff_us:
            stale += 1
        else:
            in_flight += 1
    return in_flight, stale
