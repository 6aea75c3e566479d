"""Per-session, per-model, per-user and per-tag request metrics: a pure fold over log records.

The rules (the seed's definitions, extended by the analytics issue):
- a request counts once it has a terminal event: `total_requests = successful + failed`;
- durations, tokens and cost are summed over completed (successful) requests, and the averages
  are over those;
- a request with a started event and no terminal one yet is pending: in flight, or stale once
  it is older than the stale window (decided when read, against the newest event time);
- the order of arrival never changes the result: a terminal event may come before its start.

Wide slices (a model, a user, a tag) keep running `Stats`. A session keeps instead a compact
record of each finished request (twelve 64-bit integers in one array, no object per request)
and builds its `Stats` when read: sessions are small, and this keeps memory and fold time low
on logs with millions of sessions. A long session folds its records into `Stats` every
COMPACT_AT requests, so its memory stays bounded too.

The store guarantees each request has at most one started and one terminal event, so a small
dict and set per session are enough to match them up in any order.
"""

from __future__ import annotations

import struct
from array import array
from typing import Iterable

import msgspec

from events.records import Completed, Failed, Record, Started
from projections.prices import PriceTable, caller_cost_split
from projections.sketch import bucket_of
from projections.stats import Stats, add_caller_cost, add_completed, add_failed, combine

ByModel = dict[str, Stats]

# The layout of one finished request in `SessionState.finished`.
(F_MODEL, F_ERROR, F_DURATION_US, F_PROMPT, F_COMPLETION, F_TOTAL, F_CACHED, F_REASONING,
 F_TOOLS, F_TTFT_US, F_CALLER_PROMPT_P, F_CALLER_COMPLETION_P) = range(12)
WIDTH = 12
COMPACT_AT = 32
NONE = -1  # "no value" in the integer layout (all real values are >= 0)
# Packing into bytes and appending them is 3x cheaper than array.extend() with a tuple.
_pack = struct.Struct(f"={WIDTH}q").pack
_ZEROS = (0,) * (WIDTH - 2)


class SessionState(msgspec.Struct, gc=False):
    first_seen_us: int
    last_seen_us: int
    models: list[str]
    # Finished requests, WIDTH integers each (see F_*): models and error types by index into
    # MetricsState.names.
    finished: array
    # None until the session has one: mutable defaults cost microseconds per new session.
    users: list[str] | None = None
    tags: list[str] | None = None
    # Kept whole so sorted listings need no per-session sums (cost at the fold's prices,
    # which are part of the snapshot's fingerprint).
    total_tokens: int = 0
    cost_p: int = 0
    failed: int = 0
    # request_id -> its started event, for requests not finished; None when empty.
    pending: dict[str, Started] | None = None
    # Requests whose terminal event came before their start.
    finished_first: set[str] | None = None
    # Long sessions: the Stats of their older finished requests, folded once `finished` held
    # COMPACT_AT of them, so a session's memory stops growing with its requests.
    compacted: ByModel | None = None


class MetricsState(msgspec.Struct, gc=False):
    sessions: dict[str, SessionState] = {}
    # Session ids in order of first appearance in the log: the stable order of the listing.
    order: list[str] = []
    models: ByModel = {}
    users: dict[str, ByModel] = {}
    tags: dict[str, ByModel] = {}
    # Model names and error types, numbered for the sessions' integer records.
    names: list[str] = []
    pending: int = 0
    # Pending requests per second of their start: counts stale ones without visiting each.
    pending_seconds: dict[int, int] = {}
    # Sessions with pending requests: filtered counts only need to look at these.
    with_pending: set[str] = set()
    newest_event_us: int = 0


def _stats(by_model: ByModel, model: str) -> Stats:
    stats = by_model.get(model)
    if stats is None:
        stats = by_model[model] = Stats()
    return stats


def _dim(table: dict[str, ByModel], key: str) -> ByModel:
    by_model = table.get(key)
    if by_model is None:
        by_model = table[key] = {}
    return by_model


class MetricsProjection:
    """Folds records into `MetricsState`. `apply` is the hot path of ingest and replay."""

    name = "metrics"
    # Bump when the state's shape or the fold's rules change: old snapshots are then ignored.
    version = 6
    state_type = MetricsState

    def __init__(self, prices: PriceTable, state: MetricsState | None = None):
        self.prices = prices
        self.state = state if state is not None else MetricsState()

    @property
    def state(self) -> MetricsState:
        return self._state

    @state.setter
    def state(self, state: MetricsState) -> None:
        self._state = state
        self._number = {name: i for i, name in enumerate(state.names)}

    @property
    def fingerprint(self) -> str:
        """What a snapshot must match: the fold's version, and the prices it folded with (each
        session's cost sum for sorting, and the split of a caller's `cost_usd` between prompt
        and completion, use the table; every other cost is computed when read)."""
        return f"{self.version}/{self.prices.digest}"

    def _name(self, name: str) -> int:
        number = self._number.get(name)
        if number is None:
            number = self._number[name] = len(self._state.names)
            self._state.names.append(name)
        return number

    def apply(self, record: Record) -> None:
        state = self._state
        sid = record.session_id
        ts = record.timestamp_us
        model = record.model
        if ts > state.newest_event_us:
            state.newest_event_us = ts
        session = state.sessions.get(sid)
        if session is None:
            # The numbered name is one shared string, not a copy per session.
            model = state.names[self._name(model)]
            session = SessionState(ts, ts, [model], array("q"))
            state.sessions[sid] = session
            state.order.append(sid)
        else:
            if ts < session.first_seen_us:
                session.first_seen_us = ts
            elif ts > session.last_seen_us:
                session.last_seen_us = ts
            if model not in session.models:
                session.models.append(state.names[self._name(model)])
        user = record.user_id
        if user is not None:
            if session.users is None:
                session.users = [user]
            elif user not in session.users:
                session.users.append(user)
        for tag in record.tags:
            if session.tags is None:
                session.tags = [tag]
            elif tag not in session.tags:
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
                second = ts // 1_000_000
                seconds = state.pending_seconds
                seconds[second] = seconds.get(second, 0) + 1
            return

        pending = session.pending
        if pending is not None and rid in pending:
            second = pending.pop(rid).timestamp_us // 1_000_000
            if not pending:
                session.pending = None
                state.with_pending.discard(sid)
            state.pending -= 1
            seconds = state.pending_seconds
            if seconds[second] == 1:
                del seconds[second]
            else:
                seconds[second] -= 1
        elif session.finished_first is None:
            session.finished_first = {rid}
        else:
            session.finished_first.add(rid)

        dims = [state.models]
        if user is not None:
            dims.append(_dim(state.users, user))
        for tag in record.tags:
            dims.append(_dim(state.tags, tag))

        if kind is Completed:
            # int(x + 0.5), not round(): as exact for these non-negative values, 8x cheaper.
            duration_us = int(record.duration_ms * 1000 + 0.5)
            ttft = record.time_to_first_token_ms
            ttft_us = NONE if ttft is None else int(ttft * 1000 + 0.5)
            prompt, completion, cached = (record.prompt_tokens, record.completion_tokens,
                                          record.cached_prompt_tokens)
            tools = 1 if record.has_tool_calls else 0
            price = self.prices.lookup(model)
            if record.cost_usd is None:
                caller_p = caller_c = NONE
                if price is not None:
                    session.cost_p += ((prompt - cached) * price.input + cached * price.cached_input
                                       + completion * price.output)
            else:
                caller_p, caller_c = caller_cost_split(record, price)
                session.cost_p += caller_p + caller_c
            session.finished.frombytes(_pack(
                self._name(model), NONE, duration_us, prompt, completion, record.total_tokens,
                cached, record.reasoning_tokens, tools, ttft_us, caller_p, caller_c))
            session.total_tokens += record.total_tokens
            if len(session.finished) >= COMPACT_AT * WIDTH:
                _compact(session, state.names)
            args = (duration_us, prompt, completion, record.total_tokens, cached,
                    record.reasoning_tokens, tools,
                    duration_us if ttft is None else duration_us - ttft_us,
                    bucket_of(duration_us / 1000),
                    None if ttft is None else bucket_of(ttft_us / 1000))
            for by_model in dims:
                stats = _stats(by_model, model)
                add_completed(stats, *args)
                if caller_p != NONE:
                    add_caller_cost(stats, prompt, cached, completion, caller_p, caller_c)
        elif kind is Failed:
            session.finished.frombytes(_pack(self._name(model), self._name(record.error_type),
                                             *_ZEROS))
            session.failed += 1
            if len(session.finished) >= COMPACT_AT * WIDTH:
                _compact(session, state.names)
            for by_model in dims:
                add_failed(_stats(by_model, model), record.error_type)


# Sessions whose stats were built lately: listings and live updates read the same sessions again
# and again, and a long session costs in proportion to its requests. An entry holds the
# session's `finished` array itself (a compaction replaces it) and how much of it was folded:
# requests are only ever appended, so a later read folds just the new ones.
_built: dict[int, tuple[array, int, ByModel]] = {}
_BUILT_MAX = 20_000


def session_stats(session: SessionState, names: list[str]) -> ByModel:
    """A session's `Stats` per model, from its finished requests (do not modify them)."""
    finished = session.finished
    size = len(finished)
    hit = _built.get(id(session))
    if hit is not None and hit[0] is finished:
        done, by_model = hit[1], hit[2]
        if done == size:
            return by_model
    else:
        done = 0
        by_model = {m: combine([s]) for m, s in (session.compacted or {}).items()}
        if len(_built) >= _BUILT_MAX:
            _built.clear()
    _fold_finished(session, names, done, by_model)
    _built[id(session)] = (finished, size, by_model)
    return by_model


def _compact(session: SessionState, names: list[str]) -> None:
    by_model = session.compacted if session.compacted is not None else {}
    _fold_finished(session, names, 0, by_model)
    session.compacted = by_model
    session.finished = array("q")


def _fold_finished(session: SessionState, names: list[str], start: int, by_model: ByModel) -> None:
    f = session.finished
    for i in range(start, len(f), WIDTH):
        stats = _stats(by_model, names[f[i + F_MODEL]])
        if f[i + F_ERROR] != NONE:
            add_failed(stats, names[f[i + F_ERROR]])
            continue
        duration_us, ttft_us = f[i + F_DURATION_US], f[i + F_TTFT_US]
        add_completed(stats, duration_us, f[i + F_PROMPT], f[i + F_COMPLETION], f[i + F_TOTAL],
                      f[i + F_CACHED], f[i + F_REASONING], f[i + F_TOOLS],
                      duration_us if ttft_us == NONE else duration_us - ttft_us,
                      bucket_of(duration_us / 1000),
                      None if ttft_us == NONE else bucket_of(ttft_us / 1000))
        if f[i + F_CALLER_PROMPT_P] != NONE:
            add_caller_cost(stats, f[i + F_PROMPT], f[i + F_CACHED], f[i + F_COMPLETION],
                            f[i + F_CALLER_PROMPT_P], f[i + F_CALLER_COMPLETION_P])


def pending_counts(pending: Iterable[Started], cutoff_us: int) -> tuple[int, int]:
    """(in flight, stale) among pending started events: stale ones started in a second before
    the second of `cutoff_us` (staleness is decided to the second)."""
    cutoff = cutoff_us // 1_000_000
    in_flight = stale = 0
    for started in pending:
        if started.timestamp_us // 1_000_000 < cutoff:
            stale += 1
        else:
            in_flight += 1
    return in_flight, stale


def all_pending_counts(state: MetricsState, cutoff_us: int) -> tuple[int, int]:
    """`pending_counts` over every session, in time proportional to the distinct seconds in
    which pending requests started, not to their number."""
    cutoff = cutoff_us // 1_000_000
    stale = sum(count for second, count in state.pending_seconds.items() if second < cutoff)
    return state.pending - stale, stale
