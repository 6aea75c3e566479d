"""Per-session and global request metrics: a pure fold over log records.

The rules (the seed's definitions):
- a request counts once it has a terminal event: `total_requests = successful + failed`;
- durations and tokens are summed over completed (successful) requests, and the averages are
  over those, rounded to 2 decimals;
- a request with a started event and no terminal one yet is in flight;
- the order of arrival never changes the result: a terminal event may come before its start.

The store guarantees each request has at most one started and one terminal event, so two
small sets per session are enough to match them up in any order.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from events.records import Completed, Failed, Record, Started


class Totals(msgspec.Struct, gc=False):
    """Counters shared by a session and the whole service."""

    successful: int = 0
    failed: int = 0
    # Durations are summed as integer microseconds so the sum does not depend on event order.
    duration_us: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    with_tools: int = 0
    in_flight: int = 0


class SessionState(Totals, gc=False):
    first_seen_us: int = 0
    last_seen_us: int = 0
    models: list[str] = []
    # Requests started and not finished; None when empty (most sessions, most of the time).
    pending: set[str] | None = None
    # Requests whose terminal event came before their start.
    finished_first: set[str] | None = None


class GlobalState(Totals, gc=False):
    sessions: int = 0


class MetricsState(msgspec.Struct, gc=False):
    sessions: dict[str, SessionState] = {}
    # Session ids in order of first appearance in the log: the stable order of the listing.
    order: list[str] = []
    total: GlobalState = msgspec.field(default_factory=GlobalState)


class MetricsProjection:
    """Folds records into `MetricsState`. `apply` is the hot path of ingest and replay."""

    name: ClassVar[str] = "metrics"
    # Bump when the state's shape or the fold's rules change: old snapshots are then ignored.
    version: ClassVar[int] = 1
    state_type: ClassVar[type] = MetricsState

    def __init__(self, state: MetricsState | None = None):
        self.state = state if state is not None else MetricsState()

    def apply(self, record: Record) -> None:
        state = self.state
        total = state.total
        sid = record.session_id
        ts = record.timestamp_us
        session = state.sessions.get(sid)
        if session is None:
            session = SessionState(first_seen_us=ts, last_seen_us=ts, models=[record.model])
            state.sessions[sid] = session
            state.order.append(sid)
            total.sessions += 1
        else:
            if ts < session.first_seen_us:
                session.first_seen_us = ts
            elif ts > session.last_seen_us:
                session.last_seen_us = ts
            if record.model not in session.models:
                session.models.append(record.model)

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
                    session.pending = {rid}
                else:
                    session.pending.add(rid)
                session.in_flight += 1
                total.in_flight += 1
            return

        pending = session.pending
        if pending is not None and rid in pending:
            pending.discard(rid)
            if not pending:
                session.pending = None
            session.in_flight -= 1
            total.in_flight -= 1
        elif session.finished_first is None:
            session.finished_first = {rid}
        else:
            session.finished_first.add(rid)

        if kind is Completed:
            duration_us = round(record.duration_ms * 1000)
            tools = 1 if record.has_tool_calls else 0
            for t in (session, total):
                t.successful += 1
                t.duration_us += duration_us
                t.prompt_tokens += record.prompt_tokens
                t.completion_tokens += record.completion_tokens
                t.total_tokens += record.total_tokens
                t.with_tools += tools
        elif kind is Failed:
            session.failed += 1
            total.failed += 1
