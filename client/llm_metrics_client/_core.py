"""What both client flavours share: the event buffer, the retry policy, and what a reply means.

No I/O here: `sync.MetricsClient` sends with urllib from a thread, `aio.AsyncMetricsClient`
with aiohttp from a task, and both ask this module what to do with the answer.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

log = logging.getLogger("llm_metrics.client")

HEADER = "x-internal-auth"
# Seconds between two "events dropped" warnings while the service stays unreachable.
DROP_WARNING_EVERY_S = 10.0


def now() -> str:
    """The current time as the RFC 3339 string the service expects."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def encode(batch: list[dict]) -> bytes:
    return json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode()


def serialisable(batch: list[dict], stats: "Stats") -> list[dict]:
    """`batch` without the events JSON cannot encode (a `datetime` left in a field, say): those
    are dropped, counted as rejected and logged, instead of stopping the flusher."""
    try:
        encode(batch)
        return batch
    except (TypeError, ValueError):
        pass
    kept = []
    for event in batch:
        try:
            encode([event])
            kept.append(event)
        except (TypeError, ValueError) as exc:
            stats.rejected += 1
            log.error("llm-metrics: dropped an event that is not JSON-serialisable (%s): %.200r",
                      exc, event)
    return kept


@dataclass
class Stats:
    """Counters of a client's life; `dropped` is what the memory bound cost."""

    queued: int = 0
    sent: int = 0          # accepted by the service (new or already stored)
    dropped: int = 0       # oldest events dropped because the buffer was full
    rejected: int = 0      # refused by the service as invalid or conflicting (not retried)
    retries: int = 0       # failed attempts that were retried
    batches: int = 0       # successful POSTs
    auth_failures: int = 0  # attempts the service refused with 401/403 (retried)
    last_auth_error: str | None = None  # why, as the service said it (never the key)


@dataclass
class Buffer:
    """Events waiting to be sent, oldest first, at most `limit` of them (the oldest go first)."""

    limit: int
    stats: Stats
    events: deque = field(default_factory=deque)
    _last_warning: float = float("-inf")
    _dropped_since_warning: int = 0

    def __len__(self) -> int:
        return len(self.events)

    def add(self, event: dict) -> None:
        self.events.append(event)
        self.stats.queued += 1
        self._trim()

    def take(self, n: int) -> list[dict]:
        return [self.events.popleft() for _ in range(min(n, len(self.events)))]

    def put_back(self, batch: list[dict]) -> None:
        """Return an unsent batch to the front (it is older than anything queued since)."""
        self.events.extendleft(reversed(batch))
        self._trim()

    def _trim(self) -> None:
        over = len(self.events) - self.limit
        if over <= 0:
            return
        for _ in range(over):
            self.events.popleft()
        self.stats.dropped += over
        self._dropped_since_warning += over
        clock = time.monotonic()
        if clock - self._last_warning >= DROP_WARNING_EVERY_S:
            log.warning("llm-metrics client: buffer full (%d events), dropped the %d oldest "
                        "(%d in total); is the service reachable?", self.limit,
                        self._dropped_since_warning, self.stats.dropped)
            self._last_warning = clock
            self._dropped_since_warning = 0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: `base * 2**attempt`, capped, times a random 0.5..1."""

    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        return min(self.cap, self.base * 2 ** min(attempt, 30)) * random.uniform(0.5, 1.0)


class ClientBase:
    """What both client flavours are configured with; the flavour adds how it sends.

    `batch_size` events or `flush_interval` seconds make a batch; at most `max_queue` events wait
    (the oldest are dropped past that); `timeout` bounds one post; `backoff` spaces retries.
    """

    def __init__(self, base_url: str, secret: str, *, batch_size: int = 100,
                 flush_interval: float = 1.0, max_queue: int = 10_000, timeout: float = 10.0,
                 backoff: Backoff = Backoff()):
        self.url = base_url.rstrip("/") + "/events"
        self._secret = secret
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.backoff = backoff
        self.stats = Stats()
        self._buffer = Buffer(max_queue, self.stats)
        self._in_flight = 0
        self._flush_requested = False
        self._closed = False

    def emit(self, event: dict) -> None:
        raise NotImplementedError

    def track(self, session_id: str, model: str, **options):
        """`with client.track(session_id, model) as req:` (`async with` works too; see
        `llm_metrics_client.Request`)."""
        from llm_metrics_client.tracking import Request  # tracking builds on this module

        return Request(self.emit, session_id, model, **options)


class Sent(NamedTuple):
    appended: int
    duplicates: int


class Retry(NamedTuple):
    """Keep the batch and try again after the backoff (5xx, 429, 401/403, network errors)."""

    reason: str
    retry_after: float | None = None
    auth: bool = False     # refused for the key (401/403): an operator must act


class Drop(NamedTuple):
    """The service refused these events of the batch for good; `keep` goes back to the queue."""

    reason: str
    dropped: list[dict]
    keep: list[dict]


def outcome(batch: list[dict], status: int, body: bytes, headers) -> Sent | Retry | Drop:
    """What to do with `batch` after the service answered `status` and `body`."""
    reply = _json(body)
    if 200 <= status < 300:
        return Sent(reply.get("appended", 0), reply.get("duplicates", 0))
    reason = f"HTTP {status}: {reply.get('error') or body[:200].decode(errors='replace')}"
    if status in (401, 403):
        # Retried: a wrong key is fixed by an operator, and the bounded buffer caps the cost.
        return Retry(reason, _retry_after(headers), auth=True)
    if status == 429 or status >= 500 or status == 408:
        return Retry(reason, _retry_after(headers))
    if status == 413 and len(batch) > 1:
        return Drop(reason, [], batch)  # keep all: the caller halves its batch size
    # 400/409/...: the service says which events are at fault (`details[].index`); requests are
    # all-or-nothing, so the others were not stored and go back to the queue.
    bad = {d.get("index") for d in reply.get("details", []) if isinstance(d, dict)}
    bad &= set(range(len(batch)))
    if not bad:
        return Drop(reason, batch, [])
    return Drop(reason, [e for i, e in enumerate(batch) if i in bad],
                [e for i, e in enumerate(batch) if i not in bad])


def delivered(stats: "Stats", batch: list[dict], batch_size: int, default_size: int) -> int:
    """Count a delivered batch; the batch size to use next (back to normal after a 413)."""
    stats.sent += len(batch)
    stats.batches += 1
    return default_size if batch_size < default_size else batch_size


def after_drop(result: Drop, batch: list[dict], batch_size: int,
               stats: "Stats") -> tuple[list[dict], int, list[dict]]:
    """After a refusal: (what to send now, the batch size, what goes back to the buffer)."""
    if result.dropped:
        stats.rejected += len(result.dropped)
        log.error("llm-metrics: the service refused %d events (%s); they are not retried",
                  len(result.dropped), result.reason)
        return result.keep, batch_size, []
    # 413: too big in one request; send the first half now, the rest goes back.
    half = max(1, len(batch) // 2)
    return batch[:half], half, batch[half:]


def retry_delay(stats: "Stats", backoff: "Backoff", attempt: int, result: Retry) -> float:
    """Count a retry and say how long to wait before it (the service's `Retry-After` wins).

    A refused key is a WARNING the first time (with the service's reason) and is kept in
    `stats.auth_failures` / `stats.last_auth_error`; other retries are INFO.
    """
    stats.retries += 1
    delay = backoff.delay(attempt, result.retry_after)
    if result.auth:
        if not stats.auth_failures:
            log.warning("llm-metrics: the service refused the client's key (%s); events are "
                        "kept and retried until the key is fixed or the buffer is full",
                        result.reason)
        stats.auth_failures += 1
        stats.last_auth_error = result.reason
    else:
        log.info("llm-metrics: %s; retrying in %.1f s", result.reason, delay)
    return delay


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(headers) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
