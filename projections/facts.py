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

Apply is one engine transaction per batch of log rows: the batch's events are paired by
(session, request), the stored halves they complete are taken out of `pending` (and
`unstarted`) as they are read, and the merged rows written back in bulk, with the log position
they reflect (`tracking`). A crash anywhere leaves the facts at some committed position;
startup applies the log after it. Each statement costs the engine a millisecond or more
whatever its size, so an apply asks only what it cannot know: nothing of a table it knows
to be empty, and small sets of rows go in as parameters rather than as Arrow tables.

`unstarted` lists the requests whose terminal event came first, so that a late started event
finds its row without scanning `requests`.
"""

from __future__ import annotations

import uuid
from typing import Awaitable, Callable, Iterable, Sequence

import pyarrow as pa

from events.records import Completed, Erased, Failed, Record, Started
from projections.engine import Engine
from projections.answer_store import AnswerStore
from projections.memo import AnswerMemo
from projections.prices import PriceTable, pico_per_token

# Bump when the schema or the apply rules change: facts of another version are rebuilt.
VERSION = 2

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
    cost_usd DOUBLE,
    users VARCHAR[] NOT NULL           -- every user_id its events carry (erasure finds them)
"""
FACT_FIELDS = tuple(line.split()[0] for line in _FACT_COLUMNS.strip().splitlines())

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests ({_FACT_COLUMNS});
CREATE TABLE IF NOT EXISTS pending ({_FACT_COLUMNS});
CREATE TABLE IF NOT EXISTS unstarted (session_id VARCHAR, request_id VARCHAR, end_pos BIGINT);
CREATE TABLE IF NOT EXISTS tracking (
    version INTEGER, position BIGINT, event_key VARCHAR, newest_event_us BIGINT);
-- A token drawn whenever the facts start over: what is derived from them (the session answers
-- kept on disk, projections.answer_store) tells by it that they are the facts it came from.
CREATE TABLE IF NOT EXISTS generation (token VARCHAR);
-- The price of every model the facts name, one row per price period (see projections.prices):
-- cost is computed when asked, from these and the token counts.
CREATE TABLE IF NOT EXISTS model_prices (
    model VARCHAR, from_us BIGINT, until_us BIGINT,
    input HUGEINT, output HUGEINT, cached_input HUGEINT, cache_write HUGEINT,
    above_prompt_tokens BIGINT,
    above_input HUGEINT, above_output HUGEINT, above_cached_input HUGEINT,
    above_cache_write HUGEINT);
"""
TABLES = ("requests", "pending", "unstarted", "tracking", "model_prices", "generation")

_ARROW_TYPES = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "UTINYINT": pa.uint8(),
                "BOOLEAN": pa.bool_(), "DOUBLE": pa.float64(), "VARCHAR[]": pa.list_(pa.string())}
FACT_SCHEMA = pa.schema([(line.split()[0], _ARROW_TYPES[line.split()[1].rstrip(",")])
                         for line in _FACT_COLUMNS.strip().splitlines()])
(_SESSION, _REQUEST, _MODEL, _PROVIDER, _USER, _TAGS, _START_US, _START_POS, _END_US, _END_POS,
 _STATUS) = range(11)
_USERS = len(FACT_FIELDS) - 1
_KEY_SCHEMA = pa.schema([("session_id", pa.string()), ("request_id", pa.string())])
_UNSTARTED_SCHEMA = _KEY_SCHEMA.append(pa.field("end_pos", pa.int64()))
# Prices in integer pico-dollars per token: int64 holds up to 9.2e6 USD per token.
_PRICE_SCHEMA = pa.schema([("model", pa.string()), ("from_us", pa.int64()),
                           ("until_us", pa.int64())]
                          + [(name, pa.int64()) for name in (
                              "input", "output", "cached_input", "cache_write",
                              "above_prompt_tokens", "above_input", "above_output",
                              "above_cached_input", "above_cache_write")])


# Every row without tags or users shares this list: pyarrow only reads it.
_EMPTY: list = []


def _started_columns(items: Sequence[tuple[int, Started]]) -> list[list]:
    """The facts started events make on their own (the terminal columns null), as columns in
    `FACT_FIELDS` order: built column by column, no tuple per event, since a batch holds
    thousands of them."""
    recs = [r for _, r in items]
    nones = [None] * len(recs)
    return [
        [r.session_id for r in recs], [r.request_id for r in recs], [r.model for r in recs],
        [r.provider for r in recs], [r.user_id for r in recs],
        [sorted(set(r.tags)) if r.tags else _EMPTY for r in recs],
        [r.timestamp_us for r in recs], [p for p, _ in items], nones, nones,
        [0] * len(recs),
        *[nones] * (_USERS - 11),
        [_EMPTY if r.user_id is None else [r.user_id] for r in recs],
    ]


def _terminal_columns(items: Sequence[tuple[int, Completed | Failed]]) -> list[list]:
    """The facts terminal events make on their own (the started columns null), as columns."""
    recs = [r for _, r in items]
    for r in recs:
        if type(r) is not Completed and type(r) is not Failed:
            raise TypeError(f"not a log record: {type(r).__name__}")
    nones = [None] * len(recs)
    # int(x * 1000 + 0.5), not round(): as exact for these non-negative values, and cheaper.
    done = [r if type(r) is Completed else None for r in recs]
    failed = [r if type(r) is Failed else None for r in recs]
    return [
        [r.session_id for r in recs], [r.request_id for r in recs], [r.model for r in recs],
        [r.provider for r in recs], [r.user_id for r in recs],
        [sorted(set(r.tags)) if r.tags else _EMPTY for r in recs],
        nones, nones, [r.timestamp_us for r in recs], [p for p, _ in items],
        [1 if r is not None else 2 for r in done],
        [None if r is None else r.error_type for r in failed],
        [None if r is None else r.error_message for r in failed],
        [None if r.duration_ms is None else int(r.duration_ms * 1000 + 0.5) for r in recs],
        [None if r is None or r.time_to_first_token_ms is None
         else int(r.time_to_first_token_ms * 1000 + 0.5) for r in done],
        [None if r is None else r.prompt_tokens for r in done],
        [None if r is None else r.completion_tokens for r in done],
        [None if r is None else r.total_tokens for r in done],
        [None if r is None else r.cached_prompt_tokens for r in done],
        [None if r is None else r.cache_write_prompt_tokens for r in done],
        [None if r is None else r.reasoning_tokens for r in done],
        [None if r is None else r.tool_calls for r in done],
        [None if r is None else r.has_tool_calls for r in done],
        [None if r is None else r.finish_reason for r in done],
        [None if r is None else r.cost_usd for r in done],
        [_EMPTY if r.user_id is None else [r.user_id] for r in recs],
    ]


def _row_columns(rows: Sequence[tuple]) -> list[list]:
    """Stored fact rows as columns."""
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in FACT_FIELDS]


def _union(a: list, b: list) -> list:
    # Both sorted and distinct already; most pairs carry the same list, or one of them none.
    return a if a == b or not b else b if not a else sorted(set(a) | set(b))


def merged(started: list[list], terminal: list[list]) -> list[list]:
    """Requests' facts from their started halves and their terminal halves, as columns aligned
    by request (see the module doc for the rules)."""
    out = list(terminal)
    out[_SESSION], out[_REQUEST] = started[_SESSION], started[_REQUEST]
    out[_PROVIDER] = [t if t is not None else s
                      for s, t in zip(started[_PROVIDER], terminal[_PROVIDER])]
    out[_USER] = [t if t is not None else s for s, t in zip(started[_USER], terminal[_USER])]
    out[_TAGS] = list(map(_union, started[_TAGS], terminal[_TAGS]))
    out[_START_US], out[_START_POS] = started[_START_US], started[_START_POS]
    out[_USERS] = list(map(_union, started[_USERS], terminal[_USERS]))
    return out


def _concat(*parts: list[list]) -> list[list]:
    """Column sets one after the other."""
    parts = [p for p in parts if p[0]]
    if len(parts) == 1:
        return parts[0]
    return [[v for column in columns for v in column] for columns in zip(*parts)] if parts \
        else [[] for _ in FACT_FIELDS]


def _table(columns: Sequence[list], schema: pa.Schema = FACT_SCHEMA) -> pa.Table:
    if not columns or not columns[0]:
        return schema.empty_table()
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)],
                                schema=schema)


# The keys of a batch's halves as two parallel lists, `$1` sessions and `$2` requests: a point
# predicate, no Arrow table to register for a handful of keys.
_KEYS = "(SELECT unnest($1) AS s, unnest($2) AS r) k"


def _key_lists(keys: Iterable[tuple[str, str]]) -> list[list[str]]:
    sessions, requests = [], []
    for session, request in keys:
        sessions.append(session)
        requests.append(request)
    return [sessions, requests]


# Up to this many rows go in as the parameters of one INSERT ... VALUES: for so few, building
# and registering an Arrow table costs more than the insert itself.
_FEW_ROWS = 4


def _insert(cur, table: str, columns: list[list], schema: pa.Schema = FACT_SCHEMA,
            unless_in: str | None = None) -> int:
    """Insert the rows of `columns` into `table` (those whose request is not in `unless_in`
    already, when given); how many were inserted."""
    count = len(columns[0])
    if unless_in is None:
        if count <= _FEW_ROWS:
            row = "(" + ", ".join("?" * len(schema)) + ")"
            cur.execute(f"INSERT INTO {table} VALUES {', '.join([row] * count)}",
                        [value for r in zip(*columns) for value in r])
        else:
            cur.from_arrow(_table(columns, schema)).insert_into(table)
        return count
    cur.register("new_rows", _table(columns, schema))
    try:
        return cur.execute(f"INSERT INTO {table} SELECT * FROM new_rows ANTI JOIN {unless_in} "
                           "USING (session_id, request_id)").fetchone()[0]
    finally:
        cur.unregister("new_rows")


def _apply(cur, rows: Sequence[tuple[int, Record]], pending: int,
           unstarted: int) -> tuple[int, int]:
    """Pair the rows' events by request, complete the halves already stored, write back.

    A second event of one kind of a request (two started, or two terminal, events: the store
    never keeps both, its request slots) is dropped: a log that has them anyway keeps the
    first, so it still applies. `pending` and `unstarted` are how many rows those tables hold:
    a table known to be empty is not asked (most applies touch neither `unstarted` nor, for
    started events, `pending`, and every statement costs the engine milliseconds whatever its
    size). Returns their new counts."""
    started: dict[tuple[str, str], tuple[int, Record]] = {}
    terminal: dict[tuple[str, str], tuple[int, Record]] = {}
    pairs: dict[tuple[str, str], tuple[tuple[int, Record], tuple[int, Record]]] = {}
    for row in rows:
        record = row[1]
        key = (record.session_id, record.request_id)
        if key in pairs:
            continue  # a second event of one kind
        if type(record) is Started:
            if key in started:
                continue
            other = terminal.pop(key, None)
            if other is None:
                started[key] = row
            else:  # both events in this batch
                pairs[key] = (row, other)
        else:
            if key in terminal:
                continue
            other = started.pop(key, None)
            if other is None:
                terminal[key] = row
            else:
                pairs[key] = (other, row)
    finished = [merged(_started_columns([s for s, _ in pairs.values()]),
                       _terminal_columns([t for _, t in pairs.values()]))] if pairs else []
    if unstarted and (started or terminal):
        # Requests known only from their terminal event: a started half completes one; a
        # terminal half would be its second terminal event, and is dropped.
        completing: dict[tuple[str, str], int] = {}
        for session, request, end_pos in cur.execute(
                f"SELECT u.session_id, u.request_id, u.end_pos FROM unstarted u, {_KEYS} "
                "WHERE u.session_id = k.s AND u.request_id = k.r",
                _key_lists([*started, *terminal])).fetchall():
            key = (session, request)
            if terminal.pop(key, None) is None and key in started:
                completing.setdefault(key, end_pos)
        if completing:
            gone = list(completing.values())
            stored = cur.execute("DELETE FROM requests WHERE end_pos IN (SELECT unnest($1)) "
                                 "RETURNING *", [gone]).fetchall()
            finished.append(merged(
                _started_columns([started.pop((r[_SESSION], r[_REQUEST])) for r in stored]),
                _row_columns(stored)))
            unstarted -= cur.execute("DELETE FROM unstarted WHERE end_pos IN (SELECT unnest($1))",
                                     [gone]).fetchone()[0]
    if pending and terminal:
        # The started halves these terminal events complete, taken out of `pending` as they
        # are read.
        stored = cur.execute(f"DELETE FROM pending USING {_KEYS} WHERE pending.session_id = k.s "
                             "AND pending.request_id = k.r RETURNING pending.*",
                             _key_lists(terminal)).fetchall()
        pending -= len(stored)
        halves, completed = [], []
        for row in stored:
            half = terminal.pop((row[_SESSION], row[_REQUEST]), None)
            if half is not None:
                halves.append(row)
                completed.append(half)
        if halves:
            finished.append(merged(_row_columns(halves), _terminal_columns(completed)))
    alone = _terminal_columns(list(terminal.values()))
    finished = _concat(*finished, alone)
    if finished[0]:
        _insert(cur, "requests", finished)
    if started:
        # A started half whose request is pending already is a second started event: the
        # anti-join keeps the first.
        pending += _insert(cur, "pending", _started_columns(list(started.values())),
                           unless_in="pending" if pending else None)
    if alone[0]:
        unstarted += _insert(cur, "unstarted", [alone[_SESSION], alone[_REQUEST], alone[_END_POS]],
                             _UNSTARTED_SCHEMA)
    return pending, unstarted


def _halves_stored(cur) -> tuple[int, int]:
    """How many rows `pending` and `unstarted` hold."""
    return cur.execute("SELECT (SELECT count(*) FROM pending), "
                       "(SELECT count(*) FROM unstarted)").fetchone()


def _event_key(record: Record) -> str:
    """What identifies the event at the tracked position, to tell this log from another."""
    if type(record) is Erased:
        return f"Erased\x1f{record.key_hash}\x1f{record.count}\x1f{record.erased_at_us}"
    return f"{type(record).__name__}\x1f{record.session_id}\x1f{record.request_id}" \
           f"\x1f{record.timestamp_us}"


def _pico(usd_per_million: float | None) -> int | None:
    """USD per million tokens as integer pico-dollars per token, so that sums are exact."""
    return None if usd_per_million is None else pico_per_token(usd_per_million)


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
        self.generation = ""
        self._event_key: str | None = None
        self._models: set[str] = set()
        # How many rows `pending` and `unstarted` hold: an apply skips the lookups in a table
        # known to be empty (see `_apply`).
        self._pending = 0
        self._unstarted = 0
        # One-session answers until their session changes (`projections.memo`), and those
        # of every settled session on disk when the service keeps them (`answer_store`).
        self.answers = AnswerMemo()
        self.answer_store: AnswerStore | None = None
        # Awaited after each erasure's tombstone is applied (the alerts forget its groups).
        self.erasure_hooks: list[Callable[[Erased], Awaitable[None]]] = []

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
            token = cur.execute("SELECT token FROM generation").fetchone()
            if token is None:  # facts from before the table: their generation starts now
                self._new_generation(cur)
            else:
                self.generation = token[0]
        self._count_halves(cur)
        self._models = {m for (m,) in cur.execute("SELECT DISTINCT model FROM model_prices")
                        .fetchall()}
        self._sync_prices(cur)

    def _clear(self, cur) -> None:
        for table in TABLES:
            cur.execute(f"DELETE FROM {table}")
        cur.execute("INSERT INTO tracking VALUES (?, 0, NULL, 0)", [VERSION])
        self._new_generation(cur)
        self.position, self._event_key, self.newest_event_us = 0, None, 0
        self._models = set()
        self._pending = self._unstarted = 0

    def _new_generation(self, cur) -> None:
        self.generation = uuid.uuid4().hex
        cur.execute("DELETE FROM generation")
        cur.execute("INSERT INTO generation VALUES (?)", [self.generation])

    def _count_halves(self, cur) -> None:
        self._pending, self._unstarted = _halves_stored(cur)

    async def reset(self) -> None:
        """Forget every fact (before a rebuild from the whole log)."""
        await self._forget_all_answers()
        await self.engine.write(self._clear)
        await self._forget_all_answers()
        self.answers.forget_all()

    async def matches(self, record_at_position: Record | None) -> bool:
        """Whether these facts are of the log whose event at `position` is the one given."""
        if self.position == 0:
            return True
        return record_at_position is not None and _event_key(record_at_position) == self._event_key

    async def apply_rows(self, rows: Sequence[tuple[int, Record]]) -> None:
        """Apply `(position, record)` rows, in increasing position order, after `position`.

        All of it, the Python part included, runs in the engine's writer thread: a batch of
        100k events takes a while to pair and convert, and the event loop must not wait."""
        rows = [row for row in rows if row[0] > self.position]
        if not rows:
            return
        if any(type(record) is Erased for _, record in rows):
            await self._apply_around_erasures(rows)
            return
        last_position, last_key = rows[-1][0], _event_key(rows[-1][1])
        known_models, newest_before = self._models, self.newest_event_us
        pending, unstarted = self._pending, self._unstarted

        def apply(cur):
            # Here rather than on the event loop: a batch can be 100k events.
            newest = max(newest_before, max(r.timestamp_us for _, r in rows))
            new_models = {r.model for _, r in rows} - known_models
            counts = _apply(cur, rows, pending, unstarted)
            if new_models:
                self._insert_prices(cur, new_models)
            cur.execute("UPDATE tracking SET position = ?, event_key = ?, newest_event_us = ?",
                        [last_position, last_key, newest])
            return newest, new_models, counts, {r.session_id for _, r in rows}

        newest, new_models, (self._pending, self._unstarted), sessions = \
            await self.engine.write(apply)
        self._models |= new_models
        self.position, self._event_key, self.newest_event_us = last_position, last_key, newest
        self.answers.forget(sessions)
        if self.answer_store is not None:
            self.answer_store.touch(sessions)

    # ---- erasure (docs/event-log.md, "Erasure") -------------------------------------------------

    async def _apply_around_erasures(self, rows: Sequence[tuple[int, Record]]) -> None:
        """Apply `rows` in order, each `Erased` tombstone on its own, between the others."""
        run: list[tuple[int, Record]] = []
        for position, record in rows:
            if type(record) is Erased:
                await self.apply_rows(run)
                run = []
                await self._erase(position, record)
            else:
                run.append((position, record))
        await self.apply_rows(run)

    async def _erase(self, position: int, tomb: Erased) -> None:
        """Forget every fact an event at one of `tomb.positions` made, and the prices of the
        models no fact names any more; then rewrite the facts file, which would otherwise
        keep the deleted strings in its freed blocks."""
        key = _event_key(tomb)
        # Before the facts change, and after (below): no answer kept on disk may outlive what
        # it shows.
        await self._forget_all_answers()

        def erase(cur) -> tuple[int, set[str], tuple[int, int]]:
            gone = 0
            for sql in ("DELETE FROM requests WHERE start_pos IN (SELECT unnest($1)) "
                        "OR end_pos IN (SELECT unnest($1))",
                        "DELETE FROM pending WHERE start_pos IN (SELECT unnest($1))",
                        "DELETE FROM unstarted WHERE end_pos IN (SELECT unnest($1))"):
                gone += cur.execute(sql, [list(tomb.positions)]).fetchone()[0]
            cur.execute("DELETE FROM model_prices WHERE model NOT IN "
                        "(SELECT model FROM requests UNION SELECT model FROM pending)")
            cur.execute("UPDATE tracking SET position = ?, event_key = ?", [position, key])
            return gone, {m for (m,) in cur.execute("SELECT DISTINCT model FROM model_prices")
                          .fetchall()}, _halves_stored(cur)

        gone, self._models, (self._pending, self._unstarted) = await self.engine.write(erase)
        self.position, self._event_key = position, key
        await self._forget_all_answers()
        self.answers.forget_all()
        for hook in self.erasure_hooks:
            await hook(tomb)
        if gone:
            await self.engine.compact()

    def _insert_prices(self, cur, models: Iterable[str]) -> None:
        rows = price_rows(self.prices, sorted(models))
        if rows:
            cur.register("new_prices", _table(list(map(list, zip(*rows))), _PRICE_SCHEMA))
            try:
                cur.execute("INSERT INTO model_prices SELECT * FROM new_prices")
            finally:
                cur.unregister("new_prices")

    def _sync_prices(self, cur) -> None:
        cur.execute("DELETE FROM model_prices")
        self._insert_prices(cur, self._models)

    async def set_prices(self, prices: PriceTable) -> None:
        """Price every request, past and future, with `prices` from now on."""
        self.prices = prices
        await self._forget_all_answers()
        await self.engine.write(self._sync_prices)
        await self._forget_all_answers()
        self.answers.forget_all()

    async def _forget_all_answers(self) -> None:
        # Called before a change of every fact (no kept answer outlives what it shows, not
        # even in free pages) and again after it: the store's keeper may have begun a round
        # on the facts as they were in between.
        if self.answer_store is not None:
            await self.answer_store.forget_all()
