"""`MetricsClient`: the blocking flavour, for threaded code (Flask, Django, scripts, notebooks).

Calls never wait for the network: `emit` and `track` only queue. One daemon thread sends the
queue with the standard library's `urllib` (no dependency, no event loop of its own, so it also
works inside programs that run their own asyncio loop).
"""

from __future__ import annotations

import atexit
import threading
import time
import urllib.error
import urllib.request
import weakref

from llm_metrics_client._core import (HEADER, ClientBase, Drop, Retry, Sent, after_drop,
                          delivered, encode, log, outcome, retry_delay,
                          serialisable)


class MetricsClient(ClientBase):
    """Send LLM request events to an LLM Metrics service, batched, in the background.

    A batch leaves when `batch_size` events are queued or `flush_interval` seconds after its
    oldest event. 5xx, 429 and network errors are retried with exponential backoff (safe: every
    event carries its own `event_id`, so a repeated post is a no-op). While the service is down,
    at most `max_queue` events are kept; past that the oldest are dropped, counted in
    `stats.dropped`, with a warning.
    """

    def __init__(self, base_url: str, secret: str, **settings):
        """Settings (see `ClientBase`): batch_size=100, flush_interval=1.0 s, max_queue=10_000,
        timeout=10.0 s, backoff=Backoff()."""
        super().__init__(base_url, secret, **settings)
        self._cond = threading.Condition()
        self._oldest_at: float | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llm-metrics-flusher", daemon=True)
        self._thread.start()
        # Deliver what is queued when the program exits (without keeping the client alive).
        self._atexit = _weak_close(self)
        atexit.register(self._atexit)

    # -- the caller's side ---------------------------------------------------------------------

    def emit(self, event: dict) -> None:
        """Queue one wire event (a dict as `POST /events` takes it). Never blocks on the network."""
        with self._cond:
            if self._closed:
                raise RuntimeError("MetricsClient is closed")
            if self._oldest_at is None:
                self._oldest_at = time.monotonic()
            self._buffer.add(event)
            if len(self._buffer) >= self.batch_size or len(self._buffer) == 1:
                # The first event starts the interval clock; a full batch goes now.
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; True once delivered (or refused), False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            try:
                while len(self._buffer) or self._in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if not self._thread.is_alive() or (remaining is not None and remaining <= 0):
                        return False
                    self._cond.wait(remaining if remaining is not None else 0.5)
                return True
            finally:
                self._flush_requested = False

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (for up to `timeout` seconds), then stop the thread. True if nothing was lost."""
        if self._closed:
            return True
        delivered = self.flush(timeout)
        with self._cond:
            self._closed = self._closing = True
            lost = len(self._buffer) + self._in_flight
            self._cond.notify_all()
        self._thread.join(timeout=max(self.timeout, 1.0))
        atexit.unregister(self._atexit)
        if lost:
            log.warning("llm-metrics client closed with %d events not delivered", lost)
        return delivered

    def __enter__(self) -> "MetricsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the flusher thread --------------------------------------------------------------------

    def _run(self) -> None:
        batch_size = self.batch_size
        while True:
            with self._cond:
                while not self._closing and not self._due():
                    self._cond.wait(self._wait_time())
                if self._closing:
                    return
                batch = self._buffer.take(batch_size)
                self._oldest_at = time.monotonic() if len(self._buffer) else None
                self._in_flight = len(batch)
            try:
                batch_size = self._deliver(batch, batch_size)
            except Exception:  # a bug must not stop the flusher for the rest of the program
                log.exception("llm-metrics: lost a batch of %d events", len(batch))
                self.stats.dropped += len(batch)
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _due(self) -> bool:
        if not len(self._buffer):
            return False
        return (self._flush_requested or len(self._buffer) >= self.batch_size
                or time.monotonic() - self._oldest_at >= self.flush_interval)

    def _wait_time(self) -> float | None:
        if self._oldest_at is None:
            return None
        return max(0.0, self.flush_interval - (time.monotonic() - self._oldest_at))

    def _deliver(self, batch: list[dict], batch_size: int) -> int:
        """Send until the batch is delivered or refused; returns the batch size to use next."""
        attempt = 0
        batch = serialisable(batch, self.stats)
        while batch:
            result = self._post(batch)
            if isinstance(result, Sent):
                return delivered(self.stats, batch, batch_size, self.batch_size)
            if isinstance(result, Drop):
                batch, batch_size, back = after_drop(result, batch, batch_size, self.stats)
                if back:
                    with self._cond:
                        self._buffer.put_back(back)
                continue
            delay = retry_delay(self.stats, self.backoff, attempt, result)
            attempt += 1
            with self._cond:
                if self._closing or self._cond.wait_for(lambda: self._closing, delay):
                    self._buffer.put_back(batch)  # counted as not delivered by close()
                    return batch_size
        return batch_size

    def _post(self, batch: list[dict]) -> Sent | Retry | Drop:
        request = urllib.request.Request(
            self.url, data=encode(batch), method="POST",
            headers={HEADER: self._secret, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return outcome(batch, reply.status, reply.read(), reply.headers)
        except urllib.error.HTTPError as exc:
            return outcome(batch, exc.code, exc.read(), exc.headers)
        except (OSError, urllib.error.URLError) as exc:  # refused, reset, timeout, DNS
            return Retry(f"cannot reach {self.url}: {exc}")


def _weak_close(client: MetricsClient):
    ref = weakref.ref(client)

    def close() -> None:
        target = ref()
        if target is not None:
            target.close(timeout=5.0)

    return close
