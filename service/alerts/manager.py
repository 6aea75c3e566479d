"""Alerts as the service sees them: the store, the evaluator and the deliverer put together,
and the views the routes answer with."""

from __future__ import annotations

from pathlib import Path

from service.alerts.evaluator import Evaluator, Observe
from service.alerts.rules import Rule
from service.alerts.store import AlertStore, Delivery, State
from service.webhooks import Deliverer, now_us, rfc3339


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

    async def create_rule(self, rule: Rule) -> bool:
        """Store a new rule and evaluate it soon; False when the name is taken."""
        created = await self.store.add_rule(rule, now_us())
        if created:
            self.evaluator.notify()
        return created

    async def delete_rule(self, name: str) -> bool:
        return await self.store.delete_rule(name, now_us())

    async def rules(self) -> list[dict]:
        return [_rule_view(rule, created) for rule, created in await self.store.rules()]

    async def rule(self, name: str) -> dict | None:
        """One rule with the state of each group it has seen firing."""
        found = await self.store.rule(name)
        if found is None:
            return None
        view = _rule_view(*found)
        view["groups"] = [_state_view(s) for s in await self.store.states(name)]
        return view

    async def firing(self) -> list[dict]:
        """Every group now firing, with its rule's measure, threshold and window."""
        rules = {rule.name: rule for rule, _ in await self.store.rules()}
        views = []
        for state in await self.store.states(state="firing"):
            rule = rules.get(state.rule)
            if rule is not None:
                views.append({"rule": rule.name, **_state_view(state), "measure": rule.measure,
                              "op": rule.op, "threshold": rule.threshold, "window": rule.window})
        return views

    async def deliveries(self, limit: int) -> list[dict]:
        return [_delivery_view(d) for d in await self.store.deliveries(limit)]


def _rule_view(rule: Rule, created_us: int) -> dict:
    return {**rule.public(), "created_at": rfc3339(created_us)}


def _state_view(state: State) -> dict:
    return {"group": state.group, "state": state.state, "since": rfc3339(state.since_us),
            "value": state.value}


def _delivery_view(d: Delivery) -> dict:
    return {
        "id": d.id, "rule": d.rule, "group": d.group, "state": d.state, "status": d.status,
        "attempts": d.attempts, "last_status": d.last_status, "last_error": d.last_error,
        "created_at": rfc3339(d.created_us),
        "next_attempt_at": rfc3339(d.next_us) if d.status == "pending" else None,
        "done_at": rfc3339(d.done_us) if d.done_us is not None else None,
    }
