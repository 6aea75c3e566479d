"""Request facts: one row per LLM request, the read side's only state.

A request's events (at most one started and one terminal event, the store's rule) become one
row of `requests` once its terminal event is applied, or of `pending` while only its start is
known. A dimension (model, provider, user, tag, session, time) is a column; every metric is a
query over these rows (`projections.query`). How two events make one row, whatever their order:

- times and positions come from the event they belong to (`start_*` from the started event,
  `end_*` from the terminal one);
- model, provider and user come from the terminal event when it has them, else from the
  started event; tags are the union of both events' tags;
- everything the terminal event measures (status, tokens, durations, error) comes from it.

Apply is one engine transaction per batch of log rows: the new events, the pending rows and
the start-less requests they complete, merged by (session, request) with a GROUP BY, then
written back, with the log position they reflect (`tracking`). A crash anywhere leaves the
facts at some committed position; startup applies the log after it.

`unstarted` lists the requests whose terminal event came first, so that a late started event
finds its row without scanning `requests`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Iterable, Sequence

import pyarrow as pa

from events.records import Completed, Failed, Record, Started
from projections.engine import Engine
from projections.prices import PriceTable

# Bump when the schema or the apply rules change: facts of another version are rebuilt.
VERSION = 1

_FACT_COLUMNS = """
    session_id VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    provider VARCHAR,
    user_id VARCHAR,
    tags VARCHAR[] NOT NULL,
    start_us BIGINT,
    start_pos BIGINT,
    end_us BIGINT,
    end_pos BIGINT,
    status UTINYINT NOT NULL,          -- 0 pending, 1 completed, 2 failed
    error_type VARCHAR,
    error_message VARCHAR,
    duration_us BIGINT,
    ttft_us BIGINT,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    total_tokens BIGINT,
    cached_tokens BIGINT,
    cache_write_tokens BIGINT,
    reasoning_tokens BIGINT,
    tool_calls BIGINT,
    has_tools BOOLEAN,
    finish_reason VARCHAR,
    cost_usd DOUBLE
"""
FACT_FIELDS = tuple(line.split()[0] for line in _FACT_COLUMNS.strip().splitlines())

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests ({_FACT_COLUMNS});
CREATE TABLE IF NOT EXISTS pending ({_FACT_COLUMNS});
CREATE TABLE IF NOT EXISTS unstarted (session_id VARCHAR, request_id VARCHAR, end_pos BIGINT);
CREATE TABLE IF NOT EXISTS tracking (
    version INTEGER, position BIGINT, event_key VARCHAR, newest_event_us BIGINT);
-- The price of every model the facts name, one row per price period (see projections.prices):
-- cost is computed when asked, from these and the token counts.
CREATE TABLE IF NOT EXISTS model_prices (
    model VARCHAR, from_us BIGINT, until_us BIGINT,
    input HUGEINT, output HUGEINT, cached_input HUGEINT, cache_write HUGEINT,
    above_prompt_tokens BIGINT,
    above_input HUGEINT, above_output HUGEINT, above_cached_input HUGEINT,
    above_cache_write HUGEINT);
"""
TABLES = ("requests", "pending", "unstarted", "tracking", "model_prices")

# One event of a batch, in the layout the merge reads (terminal fields null on started events).
_EVENT_SCHEMA = pa.schema([
    ("kind", pa.uint8()), ("pos", pa.int64()),
    ("session_id", pa.string()), ("request_id", pa.string()), ("model", pa.string()),
    ("ts", pa.int64()), ("user_id", pa.string()), ("tags", pa.list_(pa.string())),
    ("provider", pa.string()), ("error_type", pa.string()), ("error_message", pa.string()),
    ("duration_us", pa.int64()), ("ttft_us", pa.int64()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("total_tokens", pa.int64()),
    ("cached_tokens", pa.int64()), ("cache_write_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()), ("tool_calls", pa.int64()), ("has_tools", pa.bool_()),
    ("finish_reason", pa.string()), ("cost_usd", pa.float64()),
])
_NO_TERMINAL = (None,) * 15


def _us(ms: float | None) -> int | None:
    # int(x + 0.5), not round(): as exact for these non-negative values, and cheaper.
    return None if ms is None else int(ms * 1000 + 0.5)


def events_table(rows: Sequence[tuple[int, Record]]) -> pa.Table:
    """The batch's events as one Arrow table in the merge's layout."""
    out = []
    append = out.append
    for pos, r in rows:
        kind = type(r)
        head = (pos, r.session_id, r.request_id, r.model, r.timestamp_us, r.user_id,
                list(r.tags), r.provider)
        if kind is Started:
            append((1,) + head + _NO_TERMINAL)
        elif kind is Completed:
            append((2,) + head + (
                None, None, _us(r.duration_ms), _us(r.time_to_first_token_ms), r.prompt_tokens,
                r.completion_tokens, r.total_tokens, r.cached_prompt_tokens,
                r.cache_write_prompt_tokens, r.reasoning_tokens, r.tool_calls, r.has_tool_calls,
                r.finish_reason, r.cost_usd))
        elif kind is Failed:
            append((3,) + head + (
                r.error_type, r.error_message, _us(r.duration_ms), None, None, None, None, None,
                None, None, None, None, None, None))
    columns = list(zip(*out)) if out else [()] * len(_EVENT_SCHEMA)
    return pa.Table.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, _EVENT_SCHEMA)],
        schema=_EVENT_SCHEMA)


# The merge: the batch's events, plus the halves already stored that they complete, grouped into
# one row per request. `kind` 1 is a started half, 2 and 3 a terminal one (completed, failed).
_TERMINAL_AS_HALF = """
    SELECT status + 1 AS kind, end_pos AS pos, session_id, request_id, model, end_us AS ts,
           user_id, tags, provider, error_type, error_message, duration_us, ttft_us,
           prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens,
           reasoning_tokens, tool_calls, has_tools, finish_reason, cost_usd
"""
_MERGE = f"""
CREATE OR REPLACE TEMP TABLE batch_keys AS
    SELECT DISTINCT session_id, request_id FROM batch_events;
CREATE OR REPLACE TEMP TABLE matched_unstarted AS
    SELECT u.* FROM unstarted u SEMI JOIN batch_keys USING (session_id, request_id);
CREATE OR REPLACE TEMP TABLE halves AS
    SELECT * FROM batch_events
    UNION ALL
    SELECT 1 AS kind, start_pos AS pos, session_id, request_id, model, start_us AS ts, user_id,
           tags, provider, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL
    FROM pending SEMI JOIN batch_keys USING (session_id, request_id)
    UNION ALL
    {_TERMINAL_AS_HALF}
    FROM requests WHERE end_pos IN (SELECT end_pos FROM matched_unstarted);
CREATE OR REPLACE TEMP TABLE merged AS
SELECT session_id, request_id,
    coalesce(any_value(model) FILTER (kind > 1), any_value(model)) AS model,
    coalesce(any_value(provider) FILTER (kind > 1), any_value(provider)) AS provider,
    coalesce(any_value(user_id) FILTER (kind > 1), any_value(user_id)) AS user_id,
    list_sort(list_distinct(flatten(list(tags)))) AS tags,
    any_value(ts) FILTER (kind = 1) AS start_us,
    any_value(pos) FILTER (kind = 1) AS start_pos,
    any_value(ts) FILTER (kind > 1) AS end_us,
    any_value(pos) FILTER (kind > 1) AS end_pos,
    coalesce(any_value(kind) FILTER (kind > 1) - 1, 0)::UTINYINT AS status,
    any_value(error_type) FILTER (kind > 1) AS error_type,
    any_value(error_message) FILTER (kind > 1) AS error_message,
    any_value(duration_us) FILTER (kind > 1) AS duration_us,
    any_value(ttft_us) FILTER (kind > 1) AS ttft_us,
    any_value(prompt_tokens) FILTER (kind > 1) AS prompt_tokens,
    any_value(completion_tokens) FILTER (kind > 1) AS completion_tokens,
    any_value(total_tokens) FILTER (kind > 1) AS total_tokens,
    any_value(cached_tokens) FILTER (kind > 1) AS cached_tokens,
    any_value(cache_write_tokens) FILTER (kind > 1) AS cache_write_tokens,
    any_value(reasoning_tokens) FILTER (kind > 1) AS reasoning_tokens,
    any_value(tool_calls) FILTER (kind > 1) AS tool_calls,
    any_value(has_tools) FILTER (kind > 1) AS has_tools,
    any_value(finish_reason) FILTER (kind > 1) AS finish_reason,
    any_value(cost_usd) FILTER (kind > 1) AS cost_usd
FROM halves GROUP BY session_id, request_id;
DELETE FROM pending USING batch_keys k
    WHERE pending.session_id = k.session_id AND pending.request_id = k.request_id;
DELETE FROM requests WHERE end_pos IN (SELECT end_pos FROM matched_unstarted);
DELETE FROM unstarted WHERE end_pos IN (SELECT end_pos FROM matched_unstarted);
INSERT INTO requests SELECT * FROM merged WHERE status > 0;
INSERT INTO pending SELECT * FROM merged WHERE status = 0;
INSERT INTO unstarted SELECT session_id, request_id, end_pos FROM merged
    WHERE status > 0 AND start_pos IS NULL;
"""


def _event_key(record: Record) -> str:
    """What identifies the event at the tracked position, to tell this log from another."""
    return f"{type(record).__name__}\x1f{record.session_id}\x1f{record.request_id}" \
           f"\x1f{record.timestamp_us}"


def _pico(usd_per_million: float | None) -> int | None:
    """USD per million tokens as integer pico-dollars per token, so that sums are exact."""
    if usd_per_million is None:
        return None
    return int((Decimal(str(usd_per_million)) * 10**6).to_integral_value())


def price_rows(prices: PriceTable, models: Iterable[str]) -> list[tuple]:
    """`model_prices` rows for `models`: one per price period, each valid from its `from` to
    the next one's (the first also before it); an unpriced model gets one row of NULLs."""
    rows = []
    for model in models:
        periods = prices.periods(model)
        if not periods:
            rows.append((model, None, None) + (None,) * 9)
            continue
        for i, p in enumerate(periods):
            start = None if i == 0 else p.from_us
            until = periods[i + 1].from_us if i + 1 < len(periods) else None
            rows.append((model, start, until, _pico(p.input), _pico(p.output),
                         _pico(p.cached_input), _pico(p.cache_write), p.above_prompt_tokens,
                         _pico(p.above_input), _pico(p.above_output),
                         _pico(p.above_cached_input), _pico(p.above_cache_write)))
    return rows


class Facts:
    """The request facts of one log, with the position they reflect.

    The read models' interface to the writer and tailer: `position` and `apply_rows(rows)`.
    Open with `await Facts.open(engine, prices)`; then apply the log after `position`
    (`projections.replay.replay`).
    """

    def __init__(self, engine: Engine, prices: PriceTable):
        self.engine = engine
        self.prices = prices
        self.position = 0
        self.newest_event_us = 0
        self._event_key: str | None = None
        self._models: set[str] = set()
        # Bumped by every apply and price change: answers cached against it stay valid until then.
        self.generation = 0

    @classmethod
    async def open(cls, engine: Engine, prices: PriceTable) -> "Facts":
        """The facts kept in `engine` (empty ones when none, or of another version)."""
        facts = cls(engine, prices)
        await engine.write(facts._load)
        return facts

    def _load(self, cur) -> None:
        cur.execute(SCHEMA)
        row = cur.execute("SELECT version, position, event_key, newest_event_us "
                          "FROM tracking").fetchone()
        if row is None or row[0] != VERSION:
            self._clear(cur)
        else:
            self.position, self._event_key, self.newest_event_us = row[1], row[2], row[3]
        self._models = {m for (m,) in cur.execute("SELECT DISTINCT model FROM model_prices")
                        .fetchall()}
        self._sync_prices(cur)

    def _clear(self, cur) -> None:
        for table in TABLES:
            cur.execute(f"DELETE FROM {table}")
        cur.execute("INSERT INTO tracking VALUES (?, 0, NULL, 0)", [VERSION])
        self.position, self._event_key, self.newest_event_us = 0, None, 0
        self._models = set()

    async def reset(self) -> None:
        """Forget every fact (before a rebuild from the whole log)."""
        await self.engine.write(self._clear)
        self.generation += 1

    async def matches(self, record_at_position: Record | None) -> bool:
        """Whether these facts are of the log whose event at `position` is the one given."""
        if self.position == 0:
            return True
        return record_at_position is not None and _event_key(record_at_position) == self._event_key

    async def apply_rows(self, rows: Sequence[tuple[int, Record]]) -> None:
        """Apply `(position, record)` rows, in increasing position order, after `position`."""
        rows = [row for row in rows if row[0] > self.position]
        if not rows:
            return
        table = events_table(rows)
        newest = max(self.newest_event_us, max(r.timestamp_us for _, r in rows))
        last_position, last_key = rows[-1][0], _event_key(rows[-1][1])
        new_models = {r.model for _, r in rows} - self._models

        def apply(cur):
            cur.register("batch_events", table)
            try:
                cur.execute(_MERGE)
            finally:
                cur.unregister("batch_events")
            if new_models:
                self._insert_prices(cur, new_models)
            cur.execute("UPDATE tracking SET position = ?, event_key = ?, newest_event_us = ?",
                        [last_position, last_key, newest])

        await self.engine.write(apply)
        self._models |= new_models
        self.position, self._event_key, self.newest_event_us = last_position, last_key, newest
        self.generation += 1

    def _insert_prices(self, cur, models: Iterable[str]) -> None:
        rows = price_rows(self.prices, sorted(models))
        if rows:
            cur.executemany("INSERT INTO model_prices VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def _sync_prices(self, cur) -> None:
        cur.execute("DELETE FROM model_prices")
        self._insert_prices(cur, self._models)

    async def set_prices(self, prices: PriceTable) -> None:
        """Price every request, past and future, with `prices` from now on."""
        self.prices = prices
        await self.engine.write(self._sync_prices)
        self.generation += 1
