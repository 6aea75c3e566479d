"""Live updates: `GET /events/metrics/stream` pushes metrics as Server-Sent Events after appends.

The writer calls `MetricsStream.notify` after each commit. One publisher task (not one per
subscriber) turns "the log moved" into one encoded update: the global metrics plus the metrics of
every session the new events touched, found by reading the new rows back from the store. Updates
are throttled to one per `MIN_INTERVAL_S` (longer when rendering is slow, so updates never take
more than about a tenth of the event loop), so a burst of ten thousand commits costs a handful
of updates, and each is encoded once and shared by every subscriber.

Each update names the position range it covers (`from_position` -> `position`). A subscriber too
slow to keep up gets a resync (`from_position: null`) instead of an ever-growing queue: it then
reloads what it shows through the REST endpoints. The first message of a stream is a resync too.

Authentication is the usual `x-internal-auth` header (browsers send it with a streaming
`fetch()`), so the secret never appears in a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable

import msgspec

from events.codec import UndecodableEvent, decode
from events.records import Erased
from events.store import EventStore
from projections.facts import Facts

log = logging.getLogger(__name__)

# At most one update per this many seconds: a dashboard cannot show more, and it bounds the work.
MIN_INTERVAL_S = 0.2
# Pause after an update, as a multiple of the time it took: at most ~1/10 of the loop's time.
LOOP_SHARE = 9
# New rows read back per update to find the touched sessions; past it, `sessions_complete` is
# false and subscribers reload the session list themselves.
MAX_ROWS_PER_UPDATE = 5_000
# Messages queued for one subscriber before it is considered lagging and resynced.
MAILBOX = 16
# A comment line this often keeps proxies from closing an idle stream and finds dead clients.
HEARTBEAT_S = 15.0
HEARTBEAT = b": keep-alive\n\n"

_encode = msgspec.json.Encoder().encode


class Update(msgspec.Struct, kw_only=True):
    """One stream message. `from_position` is null on a resync (reload everything)."""

    from_position: int | None
    position: int
    sessions_complete: bool
    global_metrics: object = msgspec.field(name="global")
    sessions: list[object]


def sse(data: bytes, event: str = "metrics") -> bytes:
    """One Server-Sent Events frame (the JSON has no newlines, so one `data:` line is enough)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


# What the stream shows, computed by the same code as the REST endpoints: given the touched
# session ids, (the `GET /events/metrics` body, the `GET /events/metrics/session/{id}` bodies).
Render = Callable[[list[str]], Awaitable[tuple[object, list[object]]]]


class MetricsStream:
    def __init__(self, store: EventStore, models: Facts, render: Render):
        self._store = store
        self._models = models
        self._render = render
        self._moved = asyncio.Event()
        self._subscribers: set[asyncio.Queue] = set()
        # New subscribers waiting for their first message.
        self._resyncs: set[asyncio.Queue] = set()
        self._published = models.position
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- the writer's side ---------------------------------------------------------------------

    def notify(self, position: int) -> None:
        """Called by the writer after each commit (on the event loop, must not block)."""
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_past(self, position: int, timeout: float) -> None:
        """Return once the log is past `position`, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._models.position <= position and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), remaining)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_loop(), name="metrics-stream")

    async def close(self) -> None:
        """End every open stream and the publisher (at shutdown, before handlers are awaited)."""
        self._closed = True
        self.notify(self._models.position)
        for mailbox in self._subscribers:
            _replace_all(mailbox, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- subscribers ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self):
        """A mailbox of encoded SSE frames; `None` in it means the service is shutting down."""
        mailbox: asyncio.Queue = asyncio.Queue(MAILBOX)
        # The first message is a resync, built by the publisher (rendering is a query).
        self._resyncs.add(mailbox)
        self.notify(self._models.position)
        self._subscribers.add(mailbox)
        try:
            yield mailbox
        finally:
            self._subscribers.discard(mailbox)
            self._resyncs.discard(mailbox)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _resync(self) -> bytes:
        global_metrics, _ = await self._render([])
        return sse(_encode(Update(from_position=None, position=self._models.position,
                                  sessions_complete=False, global_metrics=global_metrics,
                                  sessions=[])))

    async def _publish_loop(self) -> None:
        while not self._closed:
            moved = self._moved
            if self._models.position == self._published and not self._resyncs:
                await moved.wait()
            began = time.perf_counter()
            try:
                await self._publish()
            except Exception:  # a failed query must not end the stream for good
                log.exception("could not build a metrics update")
                self._published = self._models.position
            # Space the updates by a multiple of the time they took: a dashboard cannot show
            # more, and the queries never take more than about a tenth of the machine.
            await asyncio.sleep(max(MIN_INTERVAL_S, (time.perf_counter() - began) * LOOP_SHARE))

    async def _publish(self) -> None:
        if self._resyncs:
            frame = await self._resync()
            for mailbox in list(self._resyncs):
                _replace_all(mailbox, frame)
            self._resyncs.clear()
        if self._models.position == self._published:
            return
        if not self._subscribers:
            # Nobody listens: remember where we are and skip reading the log.
            self._published = self._models.position
            return
        frame = await self._next_update()
        resync = None
        for mailbox in list(self._subscribers):
            if mailbox.full():
                resync = resync or await self._resync()
                _replace_all(mailbox, resync)
            else:
                mailbox.put_nowait(frame)

    async def _next_update(self) -> bytes:
        start, end = self._published, self._models.position
        complete = end - start <= MAX_ROWS_PER_UPDATE
        touched: dict[str, None] = {}
        if complete:
            rows = await self._store.read(start, end - start)
            for _position, _event_id, payload, _recorded_at in rows:
                try:
                    record = decode(payload)
                except UndecodableEvent:
                    continue
                if type(record) is Erased:
                    # Data went away: every subscriber reloads what it shows.
                    self._published = end
                    return await self._resync()
                touched[record.session_id] = None
        # Rendered after the await, so the metrics may already include events past `end`;
        # the next update lists the sessions those touched.
        global_metrics, sessions = await self._render(list(touched))
        self._published = end
        return sse(_encode(Update(from_position=start, position=end, sessions_complete=complete,
                                  global_metrics=global_metrics, sessions=sessions)))


def _replace_all(mailbox: asyncio.Queue, item) -> None:
    while not mailbox.empty():
        mailbox.get_nowait()
    mailbox.put_nowait(item)
