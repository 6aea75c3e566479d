"""One session's answer (`GET /events/metrics/session/{id}`), the read a dashboard makes most.

The engine takes tens of milliseconds for it (planning and scanning for a few rows), so for the
question about the whole session as of now (no filter, window or as-of; any other is asked as
it is) an answer is looked for first

- among those kept in memory until their session changes (`projections.memo`);
- on disk (`projections.answer_store`), where the service keeps every settled session's answer
  (`keep`, a task of its own, writes them: all of them at first, then those of the sessions
  each apply touched, a round at a time);

and only then asked of the engine. Questions that found nothing are asked together: while
`SLOTS` of them are with the engine, the next ones gather into one question about all their
sessions, which costs the engine about what one does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from pathlib import Path

import msgspec

from projections import query, views
from projections.answer_store import AnswerStore
from projections.facts import VERSION, Facts
from projections.query import MAX_FILTER_VALUES, Scope

log = logging.getLogger(__name__)

# Gathered questions with the engine at once (the engine's readers: projections.engine).
SLOTS = 4

_encode = msgspec.json.Encoder().encode


async def answer(facts: Facts, session_id: str, scope: Scope, *,
                 timeout: float | None = None) -> bytes | None:
    """The JSON of the session's `SessionMetrics` in the slice, or None when the slice has no
    event of it. Staleness counts depend on the clock, so a kept answer with pending requests
    holds only within the second it was judged at."""
    q = scope.question
    plain = (not q.where and q.from_us is None and q.to_us is None
             and q.as_of_position is None and scope.now_us is None)
    if not plain:
        answers = await query.overview(facts, scope, "session_id", [session_id],
                                       timeout=timeout)
        found = answers.get(session_id)
        return None if found is None else _encode(query.session_metrics(session_id, found))
    judged_at = _judged_at(facts, scope.stale_after_us)
    key = (session_id, scope.stale_after_us, scope.top_models)
    kept = facts.answers.get(key)
    if kept is not None and kept[0] in (None, judged_at):
        return kept[1]
    store = facts.answer_store
    if store is not None and store.policy == (scope.stale_after_us, scope.top_models) \
            and store.serves(session_id):
        found, body = store.lookup(session_id)
        if not found:
            return None
        if body is not None:
            # Kept in memory too: a probe and an inflate cost ~10x a memory hit, and the
            # sessions read again are the ones dashboards poll.
            facts.answers.keep(facts.answers.ticket(key, session_id), body)
            return body
    return await _gatherer(facts, scope).ask(session_id, timeout)


def _judged_at(facts: Facts, stale_after_us: int) -> int:
    return (query.reference_us(facts) - stale_after_us) // 1_000_000


class _Gatherer:
    """The questions about sessions of one `Facts` (and one staleness limit) not yet asked."""

    def __init__(self, facts: Facts, stale_after_us: int, top_models: int):
        self._facts = facts
        self._stale_after_us = stale_after_us
        self._top_models = top_models
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(SLOTS)
        self._open: dict[str, asyncio.Future] | None = None

    async def ask(self, session_id: str, timeout: float | None) -> bytes | None:
        if self._loop is not asyncio.get_running_loop():  # a new loop (tests run several)
            self._loop, self._slots, self._open = asyncio.get_running_loop(), \
                asyncio.Semaphore(SLOTS), None
        batch = self._open
        if batch is None or (session_id not in batch and len(batch) >= MAX_FILTER_VALUES):
            batch = self._open = {}
            asyncio.get_running_loop().create_task(self._run(batch, timeout))
        future = batch.get(session_id)
        if future is None:
            future = batch[session_id] = asyncio.get_running_loop().create_future()
            # Retrieved here, so that an error nobody waits for any more is not reported.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        # Shielded: a client that goes away leaves the question to the others who wait for it.
        return await asyncio.shield(future)

    async def _run(self, batch: dict[str, asyncio.Future], timeout: float | None) -> None:
        await asyncio.sleep(0)  # the questions that came with this one join it
        async with self._slots:
            if self._open is batch:
                self._open = None
            try:
                bodies = await self._ask(list(batch), timeout)
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                return
            except BaseException:
                for future in batch.values():
                    future.cancel()
                raise
            for session_id, future in batch.items():
                if not future.done():
                    future.set_result(bodies.get(session_id))

    async def _ask(self, session_ids: list[str], timeout: float | None) -> dict[str, bytes]:
        memo = self._facts.answers
        tickets = [memo.ticket((sid, self._stale_after_us, self._top_models), sid)
                   for sid in session_ids]
        try:
            judged_at, answers = await _answers_of(self._facts, session_ids,
                                                   self._stale_after_us, self._top_models,
                                                   timeout)
        except BaseException:
            for ticket in tickets:
                memo.drop(ticket)
            raise
        bodies = {}
        for ticket in tickets:
            found = answers.get(ticket.session)
            if found is None:
                memo.drop(ticket)
                continue
            body = bodies[ticket.session] = _encode(query.session_metrics(ticket.session, found))
            memo.keep(ticket, body, judged_at if _pending(found) else None)
        return bodies


async def _answers_of(facts: Facts, session_ids: list[str], stale_after_us: int,
                      top_models: int, timeout: float | None = None) -> tuple[int, dict]:
    """(the second staleness was judged at, `query.overview`'s answers) for these sessions:
    one time for the whole question, and the `judged_at` answers are kept with."""
    reference = query.reference_us(facts)
    answers = await query.overview(
        facts, Scope(stale_after_us=stale_after_us, now_us=reference, top_models=top_models),
        "session_id", session_ids, timeout=timeout)
    return (reference - stale_after_us) // 1_000_000, answers


def _pending(found: dict) -> bool:
    return bool(found["in_flight_requests"] or found["stale_requests"])


_gatherers: weakref.WeakKeyDictionary[Facts, dict[tuple[int, int], _Gatherer]] = \
    weakref.WeakKeyDictionary()


def _gatherer(facts: Facts, scope: Scope) -> _Gatherer:
    by_policy = _gatherers.setdefault(facts, {})
    policy = (scope.stale_after_us, scope.top_models)
    gatherer = by_policy.get(policy)
    if gatherer is None:
        gatherer = by_policy[policy] = _Gatherer(facts, *policy)
    return gatherer


# ---- the answers kept on disk ------------------------------------------------------------------

# Sessions per round of `keep` (one engine question), and the pause between rounds, which
# leaves the engine and the event loop to ingest and reads.
CHUNK = 1000
PAUSE_S = 0.05
# While applies keep coming, rounds are smaller (a round's rows are fetched and made into
# answers in threads that hold the GIL meanwhile: the event loop waited up to 30-58 ms in a
# round of 1000 sessions, 3-11 ms in one of 200) and the pause after one is this many times
# the round's own time: the keeper then takes a twentieth of the time, ingest the rest.
BUSY_CHUNK = 200
YIELD = 19
# How often an idle keeper looks for work.
IDLE_S = 0.1
# More sessions dirty than this (a flood of new ones) and the store starts over: building
# everything costs less than answering that many in rounds, and the set stays bounded.
MAX_DIRTY = 200_000
# Bump when an answer's computation changes in a way its inputs below do not show.
ANSWERS_VERSION = 1


def _dictionary() -> bytes:
    """What the bodies on disk are deflated with: the field names an answer repeats."""
    names = [f.encode_name for struct in (views.SessionMetrics, views.Metrics, views.Percentiles)
             for f in msgspec.structs.fields(struct)]
    return ('{"' + '":0,"'.join(names) + '":null}').encode()


def basis(facts: Facts, stale_after_us: int, top_models: int) -> str:
    """What the answers on disk are computed on: the facts (their version and generation),
    the prices, the policy, and the code that computes and shapes them."""
    code = hashlib.blake2b(digest_size=8)
    for module in (query, views):
        code.update(Path(module.__file__).read_bytes())
    return ":".join(map(str, (ANSWERS_VERSION, VERSION, facts.generation, facts.prices.digest,
                              stale_after_us, top_models, code.hexdigest())))


async def open_store(facts: Facts, path: str | Path, stale_after_us: int, top_models: int
                     ) -> AnswerStore:
    """The answer store at `path` for these facts, attached to them (`facts.answer_store`):
    the sessions changed since it last held are dirty again."""
    store = await AnswerStore.open(path, lambda: basis(facts, stale_after_us, top_models),
                                   _dictionary())
    store.policy = (stale_after_us, top_models)
    if store.complete and store.watermark > facts.position:
        await store.forget_all()  # older facts than the answers: not the ones they came from
    elif store.complete and store.watermark < facts.position:
        rows = await facts.engine.read(
            "SELECT session_id FROM requests WHERE start_pos > $1 OR end_pos > $1 UNION "
            "SELECT session_id FROM pending WHERE start_pos > $1 UNION "
            "SELECT session_id FROM unstarted WHERE end_pos > $1", [store.watermark])
        store.touch(r[0] for r in rows)
    facts.answer_store = store
    return store


async def keep(facts: Facts, store: AnswerStore) -> None:
    """Keep the store true, for as long as the task runs: build every session's answer when it
    has none, then answer the sessions each apply touches, a round at a time."""
    stale_after_us, top_models = store.policy
    pace = _Pace(store)
    while True:
        pace.begin()
        try:
            if store.dirty > MAX_DIRTY:
                await store.forget_all()
            if not store.complete:
                await _build(facts, store, pace, stale_after_us, top_models)
            elif store.dirty:
                await _refresh(facts, store, pace, stale_after_us, top_models)
            else:
                # Polled rather than woken: an apply or an erasure only has to change the
                # store's state, and a cancelled sleep always ends the task.
                await asyncio.sleep(IDLE_S)
                continue
        except asyncio.CancelledError:
            raise
        except Exception:  # the engine failed a round: the engine answers meanwhile
            log.exception("session answers: a round failed; trying again")
            await asyncio.sleep(5)
        await pace.rest()


class _Pace:
    """How much a round of the keeper takes and how long it rests after: ingest goes first."""

    def __init__(self, store: AnswerStore):
        self._store = store
        self.busy = False  # whether applies came in during the last round
        self.begin()

    def begin(self) -> None:
        self._started, self._stamp = time.monotonic(), self._store.stamp

    @property
    def chunk(self) -> int:
        return BUSY_CHUNK if self.busy else CHUNK

    async def rest(self) -> None:
        self.busy = self._store.stamp != self._stamp
        await asyncio.sleep(max(PAUSE_S, (time.monotonic() - self._started) * YIELD)
                            if self.busy else PAUSE_S)


def _rows(session_ids: list[str], answers: dict):
    def encode() -> tuple[dict[str, bytes | None], list[str]]:
        bodies, gone = {}, []
        for sid in session_ids:
            found = answers.get(sid)
            if found is None:
                gone.append(sid)
            else:
                bodies[sid] = None if _pending(found) else \
                    _encode(query.session_metrics(sid, found))
        return bodies, gone
    return encode


async def _refresh(facts: Facts, store: AnswerStore, pace: _Pace, stale_after_us: int,
                   top_models: int) -> None:
    epoch, answered = store.epoch, store.dirty_batch(pace.chunk)
    session_ids = list(answered)
    _, answers = await _answers_of(facts, session_ids, stale_after_us, top_models)
    await store.put(epoch, answered, _rows(session_ids, answers), facts.position)


async def _build(facts: Facts, store: AnswerStore, pace: _Pace, stale_after_us: int,
                 top_models: int) -> None:
    epoch, stamp, started_at = store.epoch, store.stamp, facts.position
    last = None
    while epoch == store.epoch:
        rows = await facts.engine.read(
            "SELECT DISTINCT session_id FROM (SELECT session_id FROM requests UNION ALL "
            "SELECT session_id FROM pending) WHERE $1::VARCHAR IS NULL OR session_id > $1 "
            "ORDER BY 1 LIMIT $2", [last, pace.chunk])
        if not rows:
            await store.finish(epoch, stamp, started_at, facts.position)
            return
        session_ids = [r[0] for r in rows]
        _, answers = await _answers_of(facts, session_ids, stale_after_us, top_models)
        await store.put(epoch, {}, _rows(session_ids, answers), facts.position)
        last = session_ids[-1]
        await pace.rest()
        pace.begin()
