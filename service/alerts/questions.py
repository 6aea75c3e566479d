"""Each rule as a question to the query layer, and its answer as one value per group."""

from __future__ import annotations

import msgspec

from projections.query import MAX_LIMIT, Question, ask
from service.alerts.rules import Rule, absent_value, window_range
from service.alerts.store import group_key

# Groups one rule may watch (read in pages of MAX_LIMIT). A rule with more is not evaluated at
# all: deciding on part of its groups would resolve the others for want of a value.
MAX_GROUPS = 100_000


class TooManyGroups(Exception):
    """The rule's question has more than MAX_GROUPS groups."""


def question(rule: Rule, newest_us: int, as_of_position: int | None = None) -> Question:
    """The first page of the rule's question: its measure per group over its window."""
    from_us, to_us = window_range(rule.window, newest_us)
    return Question(
        group_by=(rule.group_by,) if rule.group_by else (),
        measures=(rule.measure,),
        where={dimension: tuple(values) for dimension, values in rule.where.items()},
        from_us=from_us, to_us=to_us, as_of_position=as_of_position,
        # Sorted by the group, so that pages do not shift as values change.
        sort=rule.group_by, order="asc", limit=MAX_LIMIT)


async def observe(facts, rule: Rule, newest_us: int,
                  position: int) -> dict[str, tuple[dict, float | None]]:
    """group key -> (group, value) for every group the window holds, as of log `position`
    (every page sees the same log, however much is appended meanwhile); the whole service is
    the group `{}` (present even without requests, with the value of an empty window)."""
    q = question(rule, newest_us, as_of_position=position)
    observed: dict[str, tuple[dict, float | None]] = {}
    while True:
        answer = await ask(facts, q)
        for row in answer.rows:
            group = {rule.group_by: row[rule.group_by]} if rule.group_by else {}
            value = row.get(rule.measure)
            observed[group_key(group)] = (group, None if value is None else float(value))
        if answer.next is None:
            break
        if len(observed) >= MAX_GROUPS:
            raise TooManyGroups(f"alert rule {rule.name!r} has more than {MAX_GROUPS} groups: "
                                "not evaluated (narrow it with where, or group by less)")
        q = msgspec.structs.replace(q, cursor=answer.next)
    if not rule.group_by and not observed:
        observed[group_key({})] = ({}, absent_value(rule))
    return observed
