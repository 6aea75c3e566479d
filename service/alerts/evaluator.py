"""The evaluator: asks each rule's question, compares with the stored states, records changes.

Triggered by the writer and the tailer after new events (`notify`, which only sets a flag, so
ingest never waits), debounced by `DEBOUNCE_S`, and on a timer. One evaluation at a time, so a
state change is decided exactly once; it is written with its delivery in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Awaitable, Callable

from service.alerts.questions import TooManyGroups
from service.alerts.rules import Rule, absent_value, is_satisfied
from service.alerts.store import AlertStore, Change, State, group_key
from service import webhooks

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.5
# Under steady ingest, evaluations start at most this often: the rest of the time is ingest's.
MIN_GAP_S = 2.0
INTERVAL_S = 30.0

# (group key -> (group, value)) of every group the rule's question answered.
Observed = dict[str, tuple[dict, float | None]]
# (facts, rule, newest event time, log position) -> what the rule's question answers.
Observe = Callable[[object, Rule, int, int], Awaitable[Observed]]


def decide(rule: Rule, states: list[State], observed: Observed,
           now_us: int) -> tuple[list[State], list[State]]:
    """The groups whose state changes (as their new states) and those that keep their state
    with a new value. A group never seen firing has no state; a known group the answer no
    longer lists has the value of an empty group (0 for sums, undefined otherwise)."""
    known = {group_key(s.group): s for s in states}
    changed, revalued = [], []
    for key in observed.keys() | known.keys():
        previous = known.get(key)
        group, value = observed[key] if key in observed else (previous.group, absent_value(rule))
        firing = is_satisfied(rule, value)
        was_firing = previous is not None and previous.state == "firing"
        if firing != was_firing:
            changed.append(State(rule.name, group, "firing" if firing else "resolved", now_us,
                                 value))
        elif previous is not None and previous.value != value:
            revalued.append(State(rule.name, group, previous.state, previous.since_us, value))
    changed.sort(key=lambda s: group_key(s.group))
    return changed, revalued


def announce(rule: Rule, state: State, now_us: int) -> Change:
    """A state change with the delivery that tells the rule's webhook."""
    body = webhooks.render(rule, state, now_us)
    signature = webhooks.sign(rule.secret, body) if rule.secret is not None else None
    return Change(state, uuid.uuid4().hex, rule.webhook_url, body, signature)


class Evaluator:
    def __init__(self, store: AlertStore, facts, observe: Observe,
                 on_changes: Callable[[], None], interval_s: float = INTERVAL_S):
        self._store = store
        self._facts = facts
        self._observe = observe
        self._on_changes = on_changes
        self._interval_s = interval_s
        self._wakeup = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.evaluations = 0
        # Every event up to this log position was taken into account by the last evaluation.
        self.evaluated_position = 0
        self.evaluated_us: int | None = None

    def notify(self, position: int | None = None) -> None:
        """New events were applied (or a rule was added): evaluate soon. Never blocks."""
        self._wakeup.set()

    def start(self) -> None:
        self._wakeup.set()
        self._task = asyncio.create_task(self._run(), name="alert-evaluator")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = -MIN_GAP_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval_s)
            # Let a burst of commits land before asking: one evaluation covers them all.
            await asyncio.sleep(max(DEBOUNCE_S, last + MIN_GAP_S - loop.time()))
            self._wakeup.clear()
            last = loop.time()
            try:
                await self.evaluate()
            except Exception:
                log.exception("alert evaluation failed; trying again at the next event or timer")

    async def forget_groups(self, match: Callable[[dict], bool]) -> int:
        """`AlertStore.forget_groups`, between two evaluations: one under way cannot write a
        forgotten group back."""
        async with self._one_at_a_time:
            return await self._store.forget_groups(match)

    async def evaluate(self) -> int:
        """Evaluate every rule once; returns the number of state changes recorded."""
        async with self._one_at_a_time:
            return await self._evaluate()

    async def _evaluate(self) -> int:
        # Read together (nothing awaits between): the newest event time of that log position.
        position, newest_us = self._facts.position, self._facts.newest_event_us
        self.evaluations += 1
        changes = 0
        # No event yet: no window can be placed.
        for rule, _ in await self._store.rules() if newest_us else []:
            try:
                observed = await self._observe(self._facts, rule, newest_us, position)
            except TooManyGroups as exc:
                log.error("%s", exc)
                continue
            except Exception:
                log.exception("alert rule %r could not be evaluated", rule.name)
                continue
            now = webhooks.now_us()
            changed, revalued = decide(rule, await self._store.states(rule.name), observed, now)
            # False when the rule was deleted while its question ran: it must not come back.
            if await self._store.record(rule.name, [announce(rule, s, now) for s in changed],
                                        revalued, now):
                changes += len(changed)
        if changes:
            self._on_changes()
        self.evaluated_position, self.evaluated_us = position, webhooks.now_us()
        return changes
