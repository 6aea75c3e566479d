"""One session's answer (`GET /events/metrics/session/{id}`), the read a dashboard makes most.

Two things make it cheap under load, both for the question about the whole session as of now
(no filter, window or as-of; any other is asked as it is):

- an answer is kept until its session changes (`projections.memo`);
- questions that find nothing kept are asked together: while `SLOTS` of them are with the
  engine, the next ones gather into one question about all their sessions, which costs the
  engine about what one does (its time goes to planning, not to the few rows of a session).
"""

from __future__ import annotations

import asyncio
import weakref

import msgspec

from projections import query
from projections.facts import Facts
from projections.query import MAX_FILTER_VALUES, Scope

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
    kept = facts.answers.get((session_id, scope.stale_after_us, scope.top_models))
    if kept is not None and kept[0] in (None, judged_at):
        return kept[1]
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
        memo, facts = self._facts.answers, self._facts
        tickets = [memo.ticket((sid, self._stale_after_us, self._top_models), sid)
                   for sid in session_ids]
        # One time for the whole question, and the `judged_at` it is kept with.
        reference = query.reference_us(facts)
        judged_at = (reference - self._stale_after_us) // 1_000_000
        try:
            answers = await query.overview(
                facts, Scope(stale_after_us=self._stale_after_us, now_us=reference,
                             top_models=self._top_models),
                "session_id", session_ids, timeout=timeout)
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
            pending = found["in_flight_requests"] or found["stale_requests"]
            memo.keep(ticket, body, judged_at if pending else None)
        return bodies


_gatherers: weakref.WeakKeyDictionary[Facts, dict[tuple[int, int], _Gatherer]] = \
    weakref.WeakKeyDictionary()


def _gatherer(facts: Facts, scope: Scope) -> _Gatherer:
    by_policy = _gatherers.setdefault(facts, {})
    policy = (scope.stale_after_us, scope.top_models)
    gatherer = by_policy.get(policy)
    if gatherer is None:
        gatherer = by_policy[policy] = _Gatherer(facts, *policy)
    return gatherer
