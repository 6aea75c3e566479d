"""`AsyncMetricsClient`: the asyncio flavour (FastAPI, aiohttp, any `async def` code).

Same behaviour as `MetricsClient`, but the flusher is a task on the caller's event loop and
sends with aiohttp (which the service itself already depends on). `emit` and `track` only
queue and must be called from that loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from llm_metrics_client._core import (HEADER, ClientBase, Drop, Retry, Sent, after_drop,
                          delivered, encode, log, outcome, retry_delay,
                          serialisable)


class AsyncMetricsClient(ClientBase):
    """Batched, retrying, memory-bounded event sender for asyncio code.

    Use it as `async with AsyncMetricsClient(url, secret) as metrics:` or call `await close()`.
    The flusher starts with the first event (or `start()`), on the running loop.
    """

    def __init__(self, base_url: str, secret: str, **settings):
        """Settings (see `ClientBase`): batch_size=100, flush_interval=1.0 s, max_queue=10_000,
        timeout=10.0 s, backoff=Backoff()."""
        super().__init__(base_url, secret, **settings)
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- the caller's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher on the running loop (done by the first `emit` anyway)."""
        if self._task is None:
            self._wakeup, self._idle = asyncio.Event(), asyncio.Event()
            self._idle.set()
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="llm-metrics-flusher")

    def emit(self, event: dict) -> None:
        """Queue one wire event; never waits for the network."""
        if self._closed:
            raise RuntimeError("AsyncMetricsClient is closed")
        self.start()
        self._buffer.add(event)
        self._idle.clear()
        if len(self._buffer) >= self.batch_size or len(self._buffer) == 1:
            self._wakeup.set()  # the first event starts the interval clock, a full batch goes

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; True once delivered (or refused), False on timeout."""
        if self._task is None:
            return True
        self._flush_requested = True
        self._wakeup.set()
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            # Also return if the flusher task ended (cancelled): nothing would ever be sent.
            await asyncio.wait({idle, self._task}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            return self._idle.is_set() and not len(self._buffer)
        finally:
            idle.cancel()
            self._flush_requested = False

    async def close(self, timeout: float = 10.0) -> bool:
        """Flush (for up to `timeout` seconds), stop the flusher, close the HTTP session."""
        if self._closed:
            return True
        delivered = await self.flush(timeout)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        lost = len(self._buffer) + self._in_flight
        if lost:
            log.warning("llm-metrics client closed with %d events not delivered", lost)
        return delivered

    async def __aenter__(self) -> "AsyncMetricsClient":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the flusher task ----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch_size = self.batch_size
        oldest_at = None
        while True:
            if not len(self._buffer):
                oldest_at = None
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if oldest_at is None:
                oldest_at = loop.time()
            wait = self.flush_interval - (loop.time() - oldest_at)
            if not self._flush_requested and len(self._buffer) < self.batch_size and wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            batch = self._buffer.take(batch_size)
            self._in_flight = len(batch)
            oldest_at = loop.time() if len(self._buffer) else None
            try:
                batch_size = await self._deliver(batch, batch_size)
            except Exception:  # a bug must not stop the flusher for the rest of the program
                log.exception("llm-metrics: lost a batch of %d events", len(batch))
                self.stats.dropped += len(batch)
            finally:
                self._in_flight = 0

    async def _deliver(self, batch: list[dict], batch_size: int) -> int:
        """Send until the batch is delivered or refused; returns the batch size to use next."""
        attempt = 0
        batch = serialisable(batch, self.stats)
        try:
            while batch:
                result = await self._post(batch)
                if isinstance(result, Sent):
                    return delivered(self.stats, batch, batch_size, self.batch_size)
                if isinstance(result, Drop):
                    batch, batch_size, back = after_drop(result, batch, batch_size, self.stats)
                    if back:
                        self._buffer.put_back(back)
                    continue
                delay = retry_delay(self.stats, self.backoff, attempt, result)
                attempt += 1
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._buffer.put_back(batch)  # closing: counted as not delivered
            raise
        return batch_size

    async def _post(self, batch: list[dict]) -> Sent | Retry | Drop:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={HEADER: self._secret})
        try:
            async with self._session.post(self.url, data=encode(batch),
                                          headers={"content-type": "application/json"}) as reply:
                return outcome(batch, reply.status, await reply.read(), reply.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Retry(f"cannot reach {self.url}: {exc!r}")
