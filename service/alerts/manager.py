"""Alerts as the service sees them: the store, the evaluator and the deliverer put together,
and the views the routes answer with."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import msgspec

from events.records import Erased, erasure_key
from service.alerts.evaluator import Evaluator, Observe
from service.alerts.rules import Rule
from service.alerts.store import AlertStore, Delivery, State
from service.webhooks import Deliverer, now_us, rfc3339


log = logging.getLogger(__name__)

_ERASED_DIMENSION = {"session": "session_id", "user": "user_id"}


class Alerts:
    """Open with `await Alerts.open(path, facts, observe)`, then `start()`; `close()` at the end."""

    def __init__(self, store: AlertStore, evaluator: Evaluator, deliverer: Deliverer):
        self.store = store
        self.evaluator = evaluator
        self.deliverer = deliverer

    @classmethod
    async def open(cls, path: str | Path, facts, observe: Observe, **evaluator_options) -> "Alerts":
        store = await AlertStore.open(path)
        deliverer = Deliverer(store)
        evaluator = Evaluator(store, facts, observe, on_changes=deliverer.wake,
                              **evaluator_options)
        return cls(store, evaluator, deliverer)

    async def start(self) -> None:
        await self.deliverer.start()
        self.evaluator.start()

    async def close(self) -> None:
        await self.evaluator.close()
        await self.deliverer.close()
        await self.store.close()

    def notify(self, position: int) -> None:
        """The writer's and tailer's hook after new events: only schedules an evaluation."""
        self.evaluator.notify(position)

    async def forget_erased(self, tomb: Erased) -> None:
        """An erasure's tombstone was applied (here or on another replica): the groups of the
        erased session or user go too, states and webhook deliveries, so that their id is not
        kept here either. Matched through the tombstone's hash of the id, which is all the log
        keeps of it."""
        dimension = _ERASED_DIMENSION.get(tomb.scope)
        if dimension is None:
            return  # retention: the groups of old data are not personal data of their own
        try:
            await self.evaluator.forget_groups(
                lambda group: group.get(dimension) is not None
                and erasure_key(tomb.scope, group[dimension]) == tomb.key_hash)
        except Exception:  # the events are erased whatever happens here; say it loudly
            log.exception("the alert groups of an erased %s could not be deleted", tomb.scope)

    async def create_rule(self, rule: Rule) -> bool:
        """Store a new rule and evaluate it soon; False when the name is taken."""
        created = await self.store.add_rule(rule, now_us())
        if created:
            self.evaluator.notify()
        return created

    async def delete_rule(self, name: str) -> bool:
        return await self.store.delete_rule(name, now_us())

    async def rules(self) -> RuleList:
        return RuleList([_rule_view(rule, created) for rule, created in await self.store.rules()])

    async def rule(self, name: str) -> RuleDetail | None:
        """One rule with the state of each group it has seen firing."""
        found = await self.store.rule(name)
        if found is None:
            return None
        groups = [_state_view(s) for s in await self.store.states(name)]
        return RuleDetail(**msgspec.structs.asdict(_rule_view(*found)), groups=groups)

    async def firing(self) -> AlertList:
        """Every group now firing, with its rule's measure, threshold and window."""
        rules = {rule.name: rule for rule, _ in await self.store.rules()}
        return AlertList([
            AlertView(**msgspec.structs.asdict(_state_view(state)), rule=rule.name,
                      measure=rule.measure, op=rule.op, threshold=rule.threshold,
                      window=rule.window)
            for state in await self.store.states(state="firing")
            if (rule := rules.get(state.rule)) is not None],
            self.evaluator.evaluated_position,
            rfc3339(self.evaluator.evaluated_us) if self.evaluator.evaluated_us else None)

    async def deliveries(self, limit: int) -> DeliveryList:
        return DeliveryList([_delivery_view(d) for d in await self.store.deliveries(limit)])


class GroupState(msgspec.Struct):
    group: dict[str, str | None]
    state: Literal["firing", "resolved"]
    since: str
    value: float | None


class RuleView(msgspec.Struct, kw_only=True):
    """A rule as the API shows it: the secret is never shown, only whether there is one."""

    name: str
    measure: str
    op: str
    threshold: float
    window: str
    group_by: str | None
    where: dict[str, list[str]]
    webhook_url: str
    format: str
    has_secret: bool
    created_at: str


class RuleDetail(RuleView, kw_only=True):
    groups: list[GroupState]


class AlertView(GroupState, kw_only=True):
    rule: str
    measure: str
    op: str
    threshold: float
    window: str


class DeliveryView(msgspec.Struct):
    id: str
    rule: str
    group: dict[str, str | None]
    state: Literal["firing", "resolved"]
    status: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: str
    next_attempt_at: str | None
    done_at: str | None


class RuleList(msgspec.Struct):
    rules: list[RuleView]


class AlertList(msgspec.Struct):
    alerts: list[AlertView]
    # The last evaluation took every event up to this log position into account.
    position: int
    evaluated_at: str | None


class DeliveryList(msgspec.Struct):
    deliveries: list[DeliveryView]


def _rule_view(rule: Rule, created_us: int) -> RuleView:
    return RuleView(**rule.public(), created_at=rfc3339(created_us))


def _state_view(state: State) -> GroupState:
    return GroupState(state.group, state.state, rfc3339(state.since_us), state.value)


def _delivery_view(d: Delivery) -> DeliveryView:
    return DeliveryView(
        d.id, d.rule, d.group, d.state, d.status, d.attempts, d.last_status, d.last_error,
        rfc3339(d.created_us), rfc3339(d.next_us) if d.status == "pending" else None,
        rfc3339(d.done_us) if d.done_us is not None else None)
