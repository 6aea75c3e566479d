"""Webhook delivery: the body and signature of an alert, and the task that empties the outbox.

At least once: a delivery is pending until a 2xx answer; every other answer (and a timeout, a
refused connection) schedules a retry with exponential backoff and jitter, until 24 h after
the delivery was created. Every attempt of one delivery carries the same
`x-llm-metrics-delivery` id, so a receiver can drop the repeats of a delivery it already got.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time

import aiohttp
import msgspec

from events import codec
from service.alerts.rules import Rule
from service.alerts.store import AlertStore, Attempt, Delivery, State

log = logging.getLogger(__name__)

DELIVERY_HEADER = "x-llm-metrics-delivery"
SIGNATURE_HEADER = "x-llm-metrics-signature"
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 3600.0
GIVE_UP_AFTER_S = 24 * 3600.0
ATTEMPT_TIMEOUT_S = 10.0
CONCURRENCY = 8
IDLE_S = 5.0


def now_us() -> int:
    return time.time_ns() // 1000


def rfc3339(us: int) -> str:
    return codec.us_to_timestamp(us).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(rule: Rule, state: State, at_us: int) -> bytes:
    """The body announcing `state`: the rule's `json` document, or a Slack `{"text": ...}`."""
    if rule.format == "slack":
        return msgspec.json.encode({"text": _slack_text(rule, state)})
    return msgspec.json.encode({
        "rule": rule.name, "state": state.state, "group": state.group, "measure": rule.measure,
        "op": rule.op, "value": state.value, "threshold": rule.threshold, "window": rule.window,
        "at": rfc3339(at_us),
    })


def _slack_text(rule: Rule, state: State) -> str:
    group = ", ".join(f"{k}={v}" for k, v in state.group.items()) or "the whole service"
    mark = ":rotating_light:" if state.state == "firing" else ":white_check_mark:"
    return (f"{mark} *{rule.name}* {state.state} for {group}: {rule.measure} = {state.value} "
            f"(rule: {rule.op} {rule.threshold:g}, window {rule.window})")


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body keyed with the rule's secret>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_RNG = random.Random()


def retry_delay_s(attempts: int, rng: random.Random = _RNG) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling from 1 s to 1 h,
    times a random factor in [0.5, 1.5) so that receivers coming back are not hit in step."""
    base = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (attempts - 1))
    return base * rng.uniform(0.5, 1.5)


class Deliverer:
    """Sends due deliveries, at most `CONCURRENCY` at once; `wake()` after adding some.

    Attempts that end while the outcome of others is being written are written together, in
    one transaction: under a burst, the alert file's fsyncs do not crowd the event log's.
    """

    def __init__(self, store: AlertStore):
        self._store = store
        self._wakeup = asyncio.Event()
        # Started attempts, until their outcome is written: due() lists them as pending.
        self._in_flight: dict[str, asyncio.Task] = {}
        self._ended: list[Attempt] = []
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        pending = await self._store.retry_pending_now(now_us())
        if pending:
            log.info("%d webhook deliveries pending from before the restart", pending)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S),
            headers={"user-agent": "llm-metrics-alerts"})
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    def wake(self) -> None:
        self._wakeup.set()

    async def close(self) -> None:
        """Stop; attempts cut short are not written, so they are sent again after a start."""
        tasks = [t for t in [self._task, *self._in_flight.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._write_ended()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._write_ended()
                await self._launch_due()
                wait = await self._seconds_to_next()
            except Exception:
                log.exception("webhook delivery loop failed; retrying in %.0f s", IDLE_S)
                wait = IDLE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
            self._wakeup.clear()

    async def _write_ended(self) -> None:
        ended, self._ended = self._ended, []
        if ended:
            await self._store.attempted(ended, now_us())
        for attempt in ended:
            self._in_flight.pop(attempt.delivery_id, None)

    async def _launch_due(self) -> None:
        free = CONCURRENCY - len(self._in_flight)
        if free <= 0:
            return
        for delivery in await self._store.due(now_us(), CONCURRENCY * 2):
            if delivery.id in self._in_flight:
                continue
            self._in_flight[delivery.id] = asyncio.create_task(self._attempt(delivery))
            free -= 1
            if free == 0:
                return

    async def _seconds_to_next(self) -> float:
        next_us = await self._store.next_due_us()
        if next_us is None:
            return IDLE_S
        # Due already means in flight (its end wakes us) or waiting for a free slot.
        return min(IDLE_S, max(0.0, (next_us - now_us()) / 1e6)) or IDLE_S

    async def _attempt(self, delivery: Delivery) -> None:
        http_status, error = await self._post(delivery)
        now = now_us()
        if http_status is not None and 200 <= http_status < 300:
            status, next_us = "delivered", now
        else:
            next_us = now + int(retry_delay_s(delivery.attempts + 1) * 1e6)
            gave_up = next_us > delivery.created_us + int(GIVE_UP_AFTER_S * 1e6)
            status = "failed" if gave_up else "pending"
            log.warning("webhook delivery %s for rule %r: %s (%s)", delivery.id, delivery.rule,
                        error, "gave up" if gave_up else f"retry in {(next_us - now) / 1e6:.1f} s")
        self._ended.append(Attempt(delivery.id, status, http_status, error, next_us))
        self._wakeup.set()

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        headers = {"content-type": "application/json", DELIVERY_HEADER: delivery.id}
        if delivery.signature is not None:
            headers[SIGNATURE_HEADER] = delivery.signature
        assert self._session is not None
        try:
            async with self._session.post(delivery.url, data=delivery.body, headers=headers,
                                          allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"HTTP {response.status}"
        except asyncio.TimeoutError:
            return None, f"no answer within {ATTEMPT_TIMEOUT_S:g} s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:  # whatever else a URL or a peer provokes: retried, not stuck
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
            return None, f"{type(exc).__name__}: {exc}"[:500]
