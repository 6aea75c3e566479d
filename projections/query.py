"""Questions -> one engine query each: every metric the service serves is computed here.

A `Question` names a slice of requests (filters, a time window, a point in the log) and what to
compute over it (measures, grouped by dimensions). `ask` answers the query API; `overview` the
session, global, model and user answers; `sessions_page`, `session_requests` and `series` the
listings. They all build their SQL from the same pieces below (`_finished`, `_RAW`,
`_MEASURES`), so no number is computed two ways.

Rules (README "Metrics"):
- a request counts once it has a terminal event; it belongs to the window and bucket of that
  event's time; as of position P, it counts when its terminal event is at or before P;
- tokens, durations and cost are summed over completed requests, averages are over those;
- percentiles are exact, nearest rank (DuckDB's `quantile_disc`);
- cost is computed when asked, from the token counts and the price table in force; a caller's
  `cost_usd` wins (split between prompt and completion in the table's proportion);
- a request started and not finished is pending: stale once it started more than the stale
  window before the reference time (the newest event time, never later than the clock), else
  in flight.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import msgspec

from events.codec import us_to_timestamp
from events.store import EventStore
from projections import views
from projections.facts import Facts

PICO = 10**12
QUANTILES = (0.5, 0.9, 0.95, 0.99)
BUCKETS = {"1m": 60_000_000, "5m": 300_000_000, "1h": 3_600_000_000, "1d": 86_400_000_000}
DIMENSIONS = ("model", "provider", "user_id", "session_id", "tag", "error_type", "finish_reason")
MAX_LIMIT = 1000
MAX_FILTER_VALUES = 100
# Rows of an overview beyond which its answers are assembled in a thread, not on the loop.
OFF_LOOP_ROWS = 400


class QueryError(ValueError):
    """A question that cannot be answered as asked; `param` names the offending parameter."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class Question(msgspec.Struct, frozen=True, kw_only=True):
    group_by: tuple[str, ...] = ()
    measures: tuple[str, ...] = ("total_requests",)
    where: dict[str, tuple[str, ...]] = {}
    from_us: int | None = None
    to_us: int | None = None
    as_of_position: int | None = None
    bucket: str | None = None
    sort: str | None = None
    order: str = "desc"
    limit: int = 100
    cursor: str | None = None


# ---- the slice of requests a question is about ---------------------------------------------------

# The price in force for a request: the model's period holding its time; the whole request at
# the `above` prices when its prompt is past the tier's threshold.
_PRICE = """LEFT JOIN model_prices p ON p.model = r.model
    AND (p.from_us IS NULL OR coalesce(r.end_us, r.start_us) >= p.from_us)
    AND (p.until_us IS NULL OR coalesce(r.end_us, r.start_us) < p.until_us)"""


def _rate(name: str) -> str:
    return (f"CASE WHEN r.prompt_tokens > p.above_prompt_tokens THEN p.above_{name} "
            f"ELSE p.{name} END AS rate_{name}")


def _priced(source: str) -> str:
    """`source` (rows of `requests` or `pending`, already filtered) with its cost columns:
    `cost_p` and `prompt_cost_p` (pico-dollars), `unpriced`, and `gen_us` (generation time).
    Built in steps so that each expression is written, and planned, once."""
    rates = ", ".join(_rate(n) for n in ("input", "output", "cached_input", "cache_write"))
    joined = f"SELECT r.*, {rates}, p.input IS NULL AS no_price FROM ({source}) r {_PRICE}"
    table = f"""SELECT *,
        CASE WHEN status = 1 THEN
            (prompt_tokens - cached_tokens - cache_write_tokens)::HUGEINT * rate_input
            + cached_tokens::HUGEINT * rate_cached_input
            + cache_write_tokens::HUGEINT * rate_cache_write END AS table_prompt_p,
        CASE WHEN status = 1 THEN completion_tokens::HUGEINT * rate_output END
            AS table_completion_p,
        round(cost_usd * 1e12)::HUGEINT AS caller_p
        FROM ({joined})"""
    return f"""SELECT *,
        CASE WHEN status <> 1 THEN 0
             WHEN cost_usd IS NOT NULL THEN caller_p
             ELSE coalesce(table_prompt_p + table_completion_p, 0) END AS cost_p,
        CASE WHEN status <> 1 THEN 0
             WHEN cost_usd IS NULL THEN coalesce(table_prompt_p, 0)
             WHEN coalesce(table_prompt_p + table_completion_p, 0) > 0
                  THEN caller_p * table_prompt_p // (table_prompt_p + table_completion_p)
             WHEN prompt_tokens + completion_tokens > 0
                  THEN caller_p * prompt_tokens // (prompt_tokens + completion_tokens)
             ELSE 0 END AS prompt_cost_p,
        (status = 1 AND cost_usd IS NULL AND no_price) AS unpriced,
        CASE WHEN status = 1 THEN duration_us - coalesce(ttft_us, 0) END AS gen_us
        FROM ({table})"""


# Raw aggregates that need the price join (the others read the facts alone).
_COSTED = {"cost", "prompt_cost", "unpriced"}
_GEN_US = "CASE WHEN status = 1 THEN duration_us - coalesce(ttft_us, 0) END AS gen_us"


class _Sql:
    """SQL text with its parameters, built in order."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def _conditions(sql: _Sql, q: Question, *, time_column: str) -> list[str]:
    conditions = []
    for dim, values in q.where.items():
        if dim == "tag":
            conditions.append(f"list_has_any(r.tags, {sql.bind(list(values))}::VARCHAR[])")
        else:
            conditions.append(f"r.{dim} IN (SELECT unnest({sql.bind(list(values))}::VARCHAR[]))")
    if q.from_us is not None:
        conditions.append(f"{time_column} >= {sql.bind(q.from_us)}")
    if q.to_us is not None:
        conditions.append(f"{time_column} < {sql.bind(q.to_us)}")
    return conditions


def _finished(sql: _Sql, q: Question, *, costed: bool = True) -> str:
    """The finished requests of the slice, with their cost columns (or only `gen_us`)."""
    conditions = _conditions(sql, q, time_column="r.end_us")
    if q.as_of_position is not None:
        conditions.append(f"r.end_pos <= {sql.bind(q.as_of_position)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    source = f"SELECT * FROM requests r {where}"
    return _priced(source) if costed else f"SELECT *, {_GEN_US} FROM ({source})"


def _known(sql: _Sql, q: Question) -> str:
    """Every request of the slice known at the question's position, finished or pending, with
    `is_pending` (pending at that position). Pending requests fall in a window by their start."""
    time_column = "CASE WHEN r.is_pending THEN r.start_us ELSE r.end_us END"
    conditions = _conditions(sql, q, time_column=time_column)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    if q.as_of_position is None:
        rows = ("SELECT *, false AS is_pending FROM requests UNION ALL "
                "SELECT *, true AS is_pending FROM pending")
    else:
        p = sql.bind(q.as_of_position)
        rows = (f"SELECT *, end_pos > {p} AS is_pending FROM requests "
                f"WHERE end_pos <= {p} OR start_pos <= {p} UNION ALL "
                f"SELECT *, true AS is_pending FROM pending WHERE start_pos <= {p}")
    return f"SELECT * FROM ({rows}) r {where}"


# ---- measures ----------------------------------------------------------------------------------

# Aggregates over finished requests, by name; measures are expressions over these.
_RAW = {
    "n": "count(*)",
    "ok": "count(*) FILTER (WHERE status = 1)",
    "failed": "count(*) FILTER (WHERE status = 2)",
    "prompt": "coalesce(sum(prompt_tokens) FILTER (WHERE status = 1), 0)",
    "completion": "coalesce(sum(completion_tokens) FILTER (WHERE status = 1), 0)",
    "total": "coalesce(sum(total_tokens) FILTER (WHERE status = 1), 0)",
    "cached": "coalesce(sum(cached_tokens) FILTER (WHERE status = 1), 0)",
    "cache_write": "coalesce(sum(cache_write_tokens) FILTER (WHERE status = 1), 0)",
    "reasoning": "coalesce(sum(reasoning_tokens) FILTER (WHERE status = 1), 0)",
    "duration": "coalesce(sum(duration_us) FILTER (WHERE status = 1), 0)",
    "tools": "count(*) FILTER (WHERE status = 1 AND has_tools)",
    "cost": "coalesce(sum(cost_p), 0)",
    "prompt_cost": "coalesce(sum(prompt_cost_p), 0)",
    "dur_q": f"quantile_disc(duration_us, {list(QUANTILES)}) FILTER (WHERE status = 1)",
    "ttft_q": f"quantile_disc(ttft_us, {list(QUANTILES)}) "
              "FILTER (WHERE status = 1 AND ttft_us IS NOT NULL)",
    "gen_tokens": "coalesce(sum(completion_tokens) FILTER (WHERE gen_us > 0), 0)",
    "gen_us": "coalesce(sum(gen_us) FILTER (WHERE gen_us > 0), 0)",
    "errors": "histogram(error_type) FILTER (WHERE status = 2)",
    "unpriced": "list_sort(list(DISTINCT model) FILTER (WHERE unpriced))",
}


def _measure(expr: str, *raw: str) -> tuple[str, tuple[str, ...]]:
    return expr, raw


_MEASURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "total_requests": _measure("n", "n"),
    "successful_requests": _measure("ok", "ok"),
    "failed_requests": _measure("failed", "failed"),
    "error_rate": _measure("CASE WHEN n > 0 THEN round(failed / n, 6) END", "n", "failed"),
    "total_prompt_tokens": _measure("prompt", "prompt"),
    "total_completion_tokens": _measure("completion", "completion"),
    "total_tokens": _measure("total", "total"),
    "cached_prompt_tokens": _measure("cached", "cached"),
    "cache_write_prompt_tokens": _measure("cache_write", "cache_write"),
    "reasoning_tokens": _measure("reasoning", "reasoning"),
    "requests_with_tools": _measure("tools", "tools"),
    "total_duration_ms": _measure("duration / 1000", "duration"),
    "average_duration_ms": _measure("CASE WHEN ok > 0 THEN round(duration / 1000 / ok, 2) END",
                                    "duration", "ok"),
    "average_tokens_per_request": _measure("CASE WHEN ok > 0 THEN round(total / ok, 2) END",
                                           "total", "ok"),
    "total_cost_usd": _measure("cost / 1e12", "cost"),
    "prompt_cost_usd": _measure("prompt_cost / 1e12", "prompt_cost"),
    "completion_cost_usd": _measure("(cost - prompt_cost) / 1e12", "cost", "prompt_cost"),
    "output_tokens_per_second": _measure(
        "CASE WHEN gen_us > 0 THEN round(gen_tokens / (gen_us / 1e6), 2) END",
        "gen_tokens", "gen_us"),
    **{f"duration_ms_p{round(q * 100)}": _measure(f"dur_q[{i + 1}] / 1000", "dur_q")
       for i, q in enumerate(QUANTILES)},
    **{f"time_to_first_token_ms_p{round(q * 100)}": _measure(f"ttft_q[{i + 1}] / 1000", "ttft_q")
       for i, q in enumerate(QUANTILES)},
}
MEASURES = tuple(_MEASURES)
# What the listings (users, tags) and the session/global answers carry.
LISTING_MEASURES = (
    "total_requests", "successful_requests", "failed_requests", "error_rate", "total_tokens",
    "total_cost_usd", "average_duration_ms", "duration_ms_p50", "duration_ms_p95",
    "time_to_first_token_ms_p50", "time_to_first_token_ms_p95")
_OVERVIEW_MEASURES = tuple(m for m in MEASURES
                           if not m.startswith(("duration_ms_p", "time_to_first_token_ms_p")))


def _group_column(dim: str, bucket: str | None) -> str:
    if dim == "time":
        return f"(end_us - end_us % {BUCKETS[bucket]})"
    return dim


def _aggregate(sql: _Sql, q: Question, measures: Sequence[str], raw_extra: Sequence[str] = (),
               *, totals_of: str | None = None) -> tuple[str, list[str]]:
    """SELECT <group columns>, <measures> for the question; returns (sql, output columns).

    With `totals_of` (the last group dimension), rows totalling every value of it come too, with
    that dimension null and `_total` true (GROUPING SETS: one pass, quantiles of their own).
    """
    raw = dict.fromkeys(r for m in measures for r in _MEASURES[m][1])
    raw.update(dict.fromkeys(raw_extra))
    source = _finished(sql, q, costed=bool(_COSTED & set(raw)))
    if "tag" in q.group_by:
        # A request with two tags counts in both tag groups; one without tags in the null group.
        source = (f"SELECT * EXCLUDE (t), t AS tag FROM ({source}) s, "
                  "unnest(CASE WHEN len(s.tags) = 0 THEN [NULL] ELSE s.tags END) u(t)")
    groups = [f"{_group_column(d, q.bucket)} AS {d}" for d in q.group_by]
    selected = groups + [f"{_RAW[r]} AS {r}" for r in raw]
    group_clause = " GROUP BY ALL" if groups else ""
    columns = list(q.group_by) + list(measures) + list(raw_extra)
    if totals_of is not None:
        rest = [d for d in q.group_by if d != totals_of]
        selected.insert(0, f"grouping({totals_of}) = 1 AS _total")
        group_clause = (f" GROUP BY GROUPING SETS (({', '.join(q.group_by)}), "
                        f"({', '.join(rest)}))")
        columns.insert(0, "_total")
    inner = f"SELECT {', '.join(selected)} FROM ({source}) f{group_clause}"
    outer = ", ".join((["_total"] if totals_of else []) + list(q.group_by)
                      + [f"{_MEASURES[m][0]} AS {m}" for m in measures] + list(raw_extra))
    return f"SELECT {outer} FROM ({inner}) g", columns


# ---- the query API -------------------------------------------------------------------------------

def check(q: Question) -> Question:
    """`q` if it can be answered; raises `QueryError` naming the parameter otherwise."""
    for dim in q.group_by:
        if dim == "time":
            if q.bucket is None:
                raise QueryError("group_by", "group_by=time needs a bucket (1m, 5m, 1h, 1d)")
        elif dim not in DIMENSIONS:
            raise QueryError("group_by", f"unknown dimension {dim!r}; use any of "
                                         f"{', '.join(DIMENSIONS)}, time")
    if len(set(q.group_by)) != len(q.group_by):
        raise QueryError("group_by", "a dimension is named twice")
    if not q.measures:
        raise QueryError("measures", "name at least one measure")
    for m in q.measures:
        if m not in _MEASURES:
            raise QueryError("measures", f"unknown measure {m!r}; use any of "
                                         f"{', '.join(MEASURES)}")
    for dim, values in q.where.items():
        if dim not in DIMENSIONS:
            raise QueryError(dim, f"unknown filter {dim!r}")
        if len(values) > MAX_FILTER_VALUES:
            raise QueryError(dim, f"at most {MAX_FILTER_VALUES} values of {dim!r}")
    if q.bucket is not None and q.bucket not in BUCKETS:
        raise QueryError("bucket", f"bucket must be one of {', '.join(BUCKETS)}")
    if q.from_us is not None and q.to_us is not None and q.from_us >= q.to_us:
        raise QueryError("from", "'from' must be before 'to'")
    if q.sort is not None and q.sort not in q.measures and q.sort not in q.group_by:
        raise QueryError("sort", f"sort by one of the measures or dimensions asked for, not "
                                 f"{q.sort!r}")
    if q.order not in ("asc", "desc"):
        raise QueryError("order", "order must be asc or desc")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be from 1 to {MAX_LIMIT}")
    _offset(q.cursor)
    return q


def _offset(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit() or len(cursor) > 12:
        raise QueryError("cursor", "cursor must be the 'next' value of a previous answer")
    return int(cursor)


def _page_clause(sql: _Sql, q: Question, columns: Sequence[str]) -> str:
    sort = q.sort or (q.measures[0] if not q.group_by or "time" not in q.group_by else "time")
    order = q.order if q.sort or sort != "time" else "asc"
    ties = ", ".join(f"{d} ASC NULLS FIRST" for d in q.group_by)
    return (f" ORDER BY {sort} {order.upper()} NULLS LAST{', ' + ties if ties else ''}"
            f" LIMIT {sql.bind(q.limit + 1)} OFFSET {sql.bind(_offset(q.cursor))}")


def _jsonable(column: str, value: Any) -> Any:
    if column == "time" and value is not None:
        return us_to_timestamp(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return value
    return value


async def ask(facts: Facts, q: Question, *, timeout: float | None = None) -> views.QueryAnswer:
    """Answer the query API: one row per group with the measures asked for."""
    check(q)
    sql = _Sql()
    text, columns = _aggregate(sql, q, q.measures)
    text += _page_clause(sql, q, columns)
    rows = await facts.engine.read(text, sql.params, timeout=timeout)
    more = len(rows) > q.limit
    offset = _offset(q.cursor)
    return views.QueryAnswer(
        rows=[{c: _jsonable(c, v) for c, v in zip(columns, row)} for row in rows[:q.limit]],
        next=str(offset + q.limit) if more else None)


# ---- session, global, model and user answers -----------------------------------------------------

def _percentiles(values: list | None) -> views.Percentiles | None:
    if values is None:
        return None
    return views.Percentiles(*(v / 1000 for v in values))


def _metrics(row: dict) -> dict:
    fields = {m: row[m] for m in _OVERVIEW_MEASURES}
    fields["errors_by_type"] = dict(sorted((row["errors"] or {}).items()))
    fields["duration_ms_percentiles"] = _percentiles(row["dur_q"])
    fields["time_to_first_token_ms_percentiles"] = _percentiles(row["ttft_q"])
    return fields


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """What `overview` is about: a slice of requests, and how to judge staleness."""

    question: Question = Question()
    stale_after_us: int = 600_000_000
    now_us: int | None = None
    # `by_model` of an answer holds this many models at most (most requests first); the
    # rest are counted in `other_models` (ask the query API for them).
    top_models: int = 100


async def _reference_us(facts: Facts, scope: Scope) -> int:
    """The time staleness is judged against: the newest event time (as of the question's
    position), but never later than the clock, so one event stamped in the future cannot turn
    every pending request stale."""
    position = scope.question.as_of_position
    if position is None:
        return reference_us(facts, scope.now_us)
    rows = await facts.engine.read(
        "SELECT max(t) FROM (SELECT max(end_us) FILTER (WHERE end_pos <= $1) AS t FROM requests"
        " UNION ALL SELECT max(start_us) FILTER (WHERE start_pos <= $1) FROM requests"
        " UNION ALL SELECT max(start_us) FILTER (WHERE start_pos <= $1) FROM pending)",
        [position])
    return min(rows[0][0] or 0, _now(scope.now_us))


def reference_us(facts: Facts, now_us: int | None = None) -> int:
    """`_reference_us` as of now: the newest event time, or the clock (`now_us`) if earlier."""
    return min(facts.newest_event_us, _now(now_us))


def _now(now_us: int | None) -> int:
    return now_us if now_us is not None else time.time_ns() // 1000


async def overview(facts: Facts, scope: Scope, by: str | None = None,
                   keys: Sequence[str] | None = None, *, timeout: float | None = None
                   ) -> dict[str | None, dict]:
    """Totals, per-model breakdowns and what pending requests and sessions the slice has, per
    value of `by` (None: one answer for the whole slice), only for `keys` when given.

    Each answer is a dict with the `Metrics` fields, `by_model`, `unpriced_models`,
    `in_flight_requests`, `stale_requests`, `total_sessions`, `first_seen_us`, `last_seen_us`,
    `models` and `users`.
    """
    q = check(msgspec.structs.replace(scope.question, group_by=(), measures=_OVERVIEW_MEASURES))
    if keys is not None:
        # After `check`: keys come from the service (the sessions it answers), as many as it
        # asks about, not from a parameter.
        q = msgspec.structs.replace(q, where={**q.where, by: tuple(keys)})
    cutoff = await _reference_us(facts, scope) - scope.stale_after_us
    key = [by] if by else []
    sql = _Sql()
    per_model = by != "model"
    text, columns = _aggregate(
        sql, msgspec.structs.replace(q, group_by=tuple(key) + (("model",) if per_model else ())),
        _OVERVIEW_MEASURES, ("dur_q", "ttft_q", "errors", "unpriced"),
        totals_of="model" if per_model else None)
    if per_model:
        # Bounded: 20,000 models must not make one answer megabytes long (issue 12).
        part = ", ".join(["_total", *key])
        text = (f"SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY "
                f"{part} ORDER BY total_requests DESC, model) AS _rank, count(*) OVER "
                f"(PARTITION BY {part}) AS _models FROM ({text}) a) b "
                f"WHERE _total OR _rank <= {sql.bind(scope.top_models)}")
        columns = [*columns, "_models"]
    measures_rows, extent = await asyncio.gather(
        facts.engine.read(text, sql.params, timeout=timeout),
        _extent(facts, q, by, cutoff, timeout))

    assemble = functools.partial(_overview_answers, by, scope.top_models, columns,
                                 measures_rows, extent)
    if len(measures_rows) + len(extent) > OFF_LOOP_ROWS:
        # Thousands of rows made into answers would hold the event loop for tens of ms.
        return await asyncio.get_running_loop().run_in_executor(None, assemble)
    return assemble()


def _overview_answers(by: str | None, top_models: int, columns: list[str],
                      measures_rows: list[tuple], extent: list[tuple]
                      ) -> dict[str | None, dict]:
    answers: dict[str | None, dict] = {}
    for row in extent:
        k, rest = (row[0], row[1:]) if by else (None, row)
        answers[k] = dict(total_sessions=rest[0], first_seen_us=rest[1], last_seen_us=rest[2],
                          models=rest[3], users=rest[4], in_flight_requests=rest[5],
                          stale_requests=rest[6], by_model={}, other_models=0,
                          unpriced_models=[], **_metrics(_EMPTY))
    if not by and not answers:
        answers[None] = dict(total_sessions=0, first_seen_us=None, last_seen_us=None, models=[],
                             users=[], in_flight_requests=0, stale_requests=0, by_model={},
                             other_models=0, unpriced_models=[], **_metrics(_EMPTY))
    for row in measures_rows:
        values = dict(zip(columns, row))
        answer = answers.get(values[by] if by else None)
        if answer is None:
            continue
        if values.get("_total", True):
            answer.update(_metrics(values))
            answer["unpriced_models"] = (values["unpriced"] or [])[:top_models]
        else:
            answer["by_model"][values["model"]] = views.Metrics(**_metrics(values))
            answer["other_models"] = values["_models"]
    for answer in answers.values():
        answer["by_model"] = dict(sorted(answer["by_model"].items()))
        answer["other_models"] = max(0, answer["other_models"] - len(answer["by_model"]))
    return answers


async def _extent(facts: Facts, q: Question, by: str | None, cutoff_us: int,
                  timeout: float | None) -> list[tuple]:
    """Per value of `by`: sessions, first and last event time, models, users, in-flight and
    stale requests, over every request of the slice (pending ones too)."""
    sql = _Sql()
    known = _known(sql, q)
    c = sql.bind(cutoff_us // 1_000_000)
    group = f" GROUP BY {by}" if by else ""
    return await facts.engine.read(
        f"SELECT {by + ', ' if by else ''}count(DISTINCT session_id), "
        "min(least(coalesce(start_us, end_us), coalesce(end_us, start_us))), "
        "max(greatest(coalesce(start_us, end_us), coalesce(end_us, start_us))), "
        "list_sort(list(DISTINCT model)), list_sort(list(DISTINCT user_id)), "
        f"count(*) FILTER (WHERE is_pending AND start_us // 1000000 >= {c}), "
        f"count(*) FILTER (WHERE is_pending AND start_us // 1000000 < {c}) "
        f"FROM ({known}) k{group}", sql.params, timeout=timeout)


async def pending_counts(facts: Facts, scope: Scope, *, timeout: float | None = None
                         ) -> tuple[int, int, int]:
    """(sessions, in-flight requests, stale requests) of the slice."""
    cutoff = await _reference_us(facts, scope) - scope.stale_after_us
    row = (await _extent(facts, check(scope.question), None, cutoff, timeout))[0]
    return row[0], row[5], row[6]


async def model_figures(facts: Facts, bounds_us: Sequence[int], top: int, *,
                        timeout: float | None = None) -> list[dict]:
    """Per model (the `top` with most requests; the rest summed as `other`): request, token and
    cost totals, and cumulative duration and time-to-first-token counts at `bounds_us`."""
    sql = _Sql()
    finished = _finished(sql, Question())
    limit = sql.bind(top)
    raw = ("ok", "failed", "prompt", "completion", "cached", "cache_write", "reasoning", "cost",
           "duration")
    histograms = [f"count(*) FILTER (WHERE status = 1 AND duration_us <= {b}) AS d{i}"
                  for i, b in enumerate(bounds_us)]
    histograms += [f"count(*) FILTER (WHERE status = 1 AND ttft_us <= {b}) AS t{i}"
                   for i, b in enumerate(bounds_us)]
    histograms += ["count(ttft_us) FILTER (WHERE status = 1) AS ttft_n",
                   "coalesce(sum(ttft_us) FILTER (WHERE status = 1), 0) AS ttft_sum"]
    text = (f"WITH f AS ({finished}), top AS (SELECT model FROM f GROUP BY model "
            f"ORDER BY count(*) DESC, model LIMIT {limit}) "
            f"SELECT CASE WHEN model IN (SELECT model FROM top) THEN model ELSE 'other' END "
            f"AS label, {', '.join(f'{_RAW[r]} AS {r}' for r in raw)}, {', '.join(histograms)} "
            f"FROM f GROUP BY label ORDER BY label")
    rows = await facts.engine.read(text, sql.params, timeout=timeout)
    names = ["model", *raw, *(f"d{i}" for i in range(len(bounds_us))),
             *(f"t{i}" for i in range(len(bounds_us))), "ttft_n", "ttft_sum"]
    return [dict(zip(names, row)) for row in rows]


_EMPTY = {**{r: None for r in ("dur_q", "ttft_q", "errors", "unpriced")},
          **{m: 0 for m in _OVERVIEW_MEASURES},
          **{m: None for m in ("error_rate", "average_duration_ms", "average_tokens_per_request",
                               "output_tokens_per_second")}}


def _public(answer: dict) -> dict:
    return {k: v for k, v in answer.items()
            if k not in ("first_seen_us", "last_seen_us", "models", "users", "total_sessions")}


def session_metrics(session_id: str, answer: dict) -> views.SessionMetrics:
    public = _public(answer)
    return views.SessionMetrics(
        **public, session_id=session_id,
        first_seen=us_to_timestamp(answer["first_seen_us"]),
        last_seen=us_to_timestamp(answer["last_seen_us"]),
        models=answer["models"], users=[u for u in answer["users"] if u is not None])


def global_metrics(answer: dict) -> views.GlobalMetrics:
    return views.GlobalMetrics(**_public(answer), total_sessions=answer["total_sessions"])


def model_metrics(model: str, answer: dict, priced: bool) -> views.ModelMetrics:
    fields = {k: v for k, v in _public(answer).items()
              if k not in ("by_model", "other_models", "unpriced_models", "in_flight_requests",
                           "stale_requests")}
    return views.ModelMetrics(**fields, model=model, priced=priced)


def user_metrics(user_id: str, answer: dict) -> views.UserMetrics:
    fields = {k: v for k, v in _public(answer).items()
              if k not in ("in_flight_requests", "stale_requests")}
    return views.UserMetrics(**fields, user_id=user_id)


async def model_page(facts: Facts, scope: Scope, limit: int, cursor: str | None, *,
                     timeout: float | None = None) -> views.ModelList:
    """The models with finished requests in the slice, by name, `limit` from `cursor` on."""
    q = scope.question
    names = await ask(facts, msgspec.structs.replace(
        q, group_by=("model",), measures=("total_requests",), sort="model", order="asc",
        limit=limit, cursor=cursor), timeout=timeout)
    page = [row["model"] for row in names.rows]
    answers = {}
    for start in range(0, len(page), MAX_FILTER_VALUES):
        answers.update(await overview(facts, scope, "model",
                                      page[start:start + MAX_FILTER_VALUES], timeout=timeout))
    priced = await priced_models(facts)
    return views.ModelList([model_metrics(name, answers[name], name in priced)
                            for name in page if name in answers], names.next)


async def priced_models(facts: Facts) -> set[str]:
    rows = await facts.engine.read("SELECT DISTINCT model FROM model_prices "
                                   "WHERE input IS NOT NULL")
    return {m for (m,) in rows}


# ---- listings ----------------------------------------------------------------------------------

SESSION_SORTS = ("first_seen", "last_seen", "total_tokens", "total_cost_usd", "failed_requests")


class SessionFilter(msgspec.Struct, frozen=True, kw_only=True):
    model: str | None = None
    user_id: str | None = None
    has_failures: bool | None = None
    since_us: int | None = None


async def sessions_page(facts: Facts, scope: Scope, where: SessionFilter, sort: str,
                        descending: bool, limit: int, cursor: str | None,
                        *, timeout: float | None = None) -> views.SessionsPage:
    """A page of sessions, each with its full answer. Filters pick sessions that have any
    request of the model / user; `since` those seen at or after it."""
    offset = _offset(cursor)
    sql = _Sql()
    known = _known(sql, scope.question)
    having = []
    if where.model is not None:
        having.append(f"bool_or(model = {sql.bind(where.model)})")
    if where.user_id is not None:
        having.append(f"bool_or(user_id = {sql.bind(where.user_id)})")
    if where.has_failures is not None:
        having.append(f"(count(*) FILTER (WHERE status = 2 AND NOT is_pending) > 0) = "
                      f"{sql.bind(where.has_failures)}")
    if where.since_us is not None:
        having.append(f"max(greatest(coalesce(start_us, end_us), coalesce(end_us, start_us)))"
                      f" >= {sql.bind(where.since_us)}")
    order = {
        # The order of first appearance in the log: stable while new sessions arrive.
        "first_seen": "min(least(coalesce(start_pos, end_pos), coalesce(end_pos, start_pos)))",
        "last_seen": "max(greatest(coalesce(start_us, end_us), coalesce(end_us, start_us)))",
        "total_tokens": "coalesce(sum(total_tokens) FILTER (WHERE status = 1 AND NOT "
                        "is_pending), 0)",
        "failed_requests": "count(*) FILTER (WHERE status = 2 AND NOT is_pending)",
        "total_cost_usd": None,
    }[sort]
    direction = "DESC" if descending else "ASC"
    if order is None:
        finished = _finished(sql, scope.question)
        ranked = (f"SELECT k.session_id, coalesce(c.cost, 0) AS o FROM (SELECT session_id FROM "
                  f"({known}) k GROUP BY session_id{' HAVING ' + ' AND '.join(having) if having else ''}"
                  f") k LEFT JOIN (SELECT session_id, sum(cost_p) AS cost FROM ({finished}) f "
                  f"GROUP BY session_id) c USING (session_id)")
    else:
        ranked = (f"SELECT session_id, {order} AS o FROM ({known}) k GROUP BY session_id"
                  f"{' HAVING ' + ' AND '.join(having) if having else ''}")
    rows = await facts.engine.read(
        f"SELECT session_id, count(*) OVER () FROM ({ranked}) s "
        f"ORDER BY o {direction}, session_id {direction} "
        f"LIMIT {sql.bind(limit)} OFFSET {sql.bind(offset)}", sql.params, timeout=timeout)
    total = await facts.engine.read(
        "SELECT count(*) FROM (SELECT session_id FROM requests UNION SELECT session_id "
        "FROM pending)")
    ids = [r[0] for r in rows]
    matching = rows[0][1] if rows else (0 if offset == 0 else await _count_sessions(
        facts, ranked, sql.params[:-2], timeout))
    answers = await overview(facts, scope, "session_id", ids, timeout=timeout) if ids else {}
    end = offset + len(ids)
    return views.SessionsPage(
        sessions=[session_metrics(sid, answers[sid]) for sid in ids if sid in answers],
        total_sessions=total[0][0], matching_sessions=matching,
        next=str(end) if end < matching else None)


async def _count_sessions(facts: Facts, ranked: str, params: list, timeout) -> int:
    rows = await facts.engine.read(f"SELECT count(*) FROM ({ranked}) s", params, timeout=timeout)
    return rows[0][0]


async def session_requests(facts: Facts, session_id: str, limit: int, cursor: str | None,
                           *, timeout: float | None = None) -> views.RequestsPage | None:
    """A session's requests, newest first (by the position of their latest event); None when
    the session has none."""
    offset = _offset(cursor)
    sql = _Sql()
    sid = sql.bind(session_id)
    columns = ", ".join(_FACT_NAMES)
    rows = await facts.engine.read(
        f"SELECT {columns}, cost_p, unpriced, NOT no_price AS priced FROM ("
        + _priced(f"SELECT * FROM requests WHERE session_id = {sid} UNION ALL "
                  f"SELECT * FROM pending WHERE session_id = {sid}")
        + ") ORDER BY greatest(coalesce(end_pos, 0), coalesce(start_pos, 0)) DESC "
        f"LIMIT {sql.bind(limit + 1)} OFFSET {sql.bind(offset)}", sql.params, timeout=timeout)
    if not rows and offset == 0:
        return None
    names = list(_FACT_NAMES) + ["cost_p", "unpriced", "priced"]
    out = []
    for row in rows[:limit]:
        f = dict(zip(names, row))
        status = ("pending", "completed", "failed")[f["status"]]
        out.append(views.RequestFact(
            request_id=f["request_id"], status=status, model=f["model"], provider=f["provider"],
            user_id=f["user_id"], tags=f["tags"],
            started_at=None if f["start_us"] is None else us_to_timestamp(f["start_us"]),
            finished_at=None if f["end_us"] is None else us_to_timestamp(f["end_us"]),
            duration_ms=None if f["duration_us"] is None else f["duration_us"] / 1000,
            time_to_first_token_ms=None if f["ttft_us"] is None else f["ttft_us"] / 1000,
            prompt_tokens=f["prompt_tokens"], completion_tokens=f["completion_tokens"],
            total_tokens=f["total_tokens"], cached_prompt_tokens=f["cached_tokens"],
            cache_write_prompt_tokens=f["cache_write_tokens"],
            reasoning_tokens=f["reasoning_tokens"], tool_calls=f["tool_calls"],
            has_tool_calls=f["has_tools"], finish_reason=f["finish_reason"],
            error_type=f["error_type"], error_message=f["error_message"],
            cost_usd=f["cost_p"] / PICO if status == "completed" and not f["unpriced"] else None,
            priced=bool(f["priced"]) or f["cost_usd"] is not None))
    more = len(rows) > limit
    return views.RequestsPage(out, str(offset + limit) if more else None)


from projections.facts import FACT_FIELDS as _FACT_NAMES  # noqa: E402


# ---- time series -------------------------------------------------------------------------------

MAX_POINTS = 1500


async def data_range(facts: Facts) -> tuple[int, int] | None:
    rows = await facts.engine.read("SELECT min(end_us), max(end_us) FROM requests")
    low, high = rows[0]
    return None if low is None else (low, high + 1)


async def series(facts: Facts, q: Question, *, timeout: float | None = None) -> views.Series:
    """Every bucket starting in [from, to) (from aligned down to the bucket), empty ones too."""
    width = BUCKETS[q.bucket]
    start = q.from_us - q.from_us % width
    points = -(-(q.to_us - start) // width)
    if points > MAX_POINTS:
        raise QueryError("bucket", f"{points} points of {q.bucket} between 'from' and 'to' is "
                                   f"more than {MAX_POINTS}; use a larger 'bucket' or a shorter "
                                   "range")
    q = msgspec.structs.replace(
        q, from_us=start, group_by=("time",),
        measures=("total_requests", "failed_requests", "total_tokens", "total_cost_usd",
                  "duration_ms_p50", "duration_ms_p95"))
    sql = _Sql()
    text, columns = _aggregate(sql, q, q.measures)
    rows = await facts.engine.read(text, sql.params, timeout=timeout)
    found = {row[0]: row for row in rows}
    out = []
    for at in range(start, q.to_us, width):
        row = found.get(at)
        out.append(views.Point(
            start=us_to_timestamp(at),
            requests=row[1] if row else 0, failed_requests=row[2] if row else 0,
            total_tokens=row[3] if row else 0, total_cost_usd=row[4] if row else 0.0,
            duration_ms_p50=row[5] if row else None, duration_ms_p95=row[6] if row else None))
    return views.Series(q.bucket, out)


# ---- as of a time --------------------------------------------------------------------------------

async def position_at(store: EventStore, recorded_us: int) -> int:
    """The last position recorded at or before `recorded_us` (0 if none): a binary search,
    since positions are recorded in increasing time."""
    low, high = 0, await store.last_position()
    while low < high:
        mid = (low + high + 1) // 2
        rows = await store.read(mid - 1, 1)
        if rows and rows[0][3] <= recorded_us:
            low = mid
        else:
            high = mid - 1
    return low


def utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, timezone.utc)


# ---- erasure -----------------------------------------------------------------------------------

async def positions_of(facts: Facts, *, session_id: str | None = None,
                       user_id: str | None = None, older_than_us: int | None = None
                       ) -> list[int]:
    """The log positions of every event of the requests of one session, of one user (any of
    a request's events naming them), or older than a time (a finished request by its
    terminal event, a pending one by its start): what an erasure deletes."""
    if session_id is not None:
        where, params = "session_id = $1", [session_id]
    elif user_id is not None:
        where, params = "list_contains(users, $1)", [user_id]
    elif older_than_us is not None:
        where, params = "coalesce(end_us, start_us) < $1", [older_than_us]
    else:
        raise ValueError("positions_of needs session_id, user_id or older_than_us")
    rows = await facts.engine.read(
        f"SELECT p FROM (SELECT unnest([start_pos, end_pos]) AS p FROM requests WHERE {where} "
        f"UNION ALL SELECT start_pos FROM pending WHERE {where}) WHERE p IS NOT NULL ORDER BY p",
        params)
    return [p for (p,) in rows]
