"""The composition root: `create_app` builds everything, in the order open -> migrate -> replay."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from aiohttp import web

from events.sqlite_store import SQLiteStore
from events.store import EventStore
from projections.prices import PriceTable
from projections.replay import ReadModels, ReplayReport, SnapshotRefused, load_snapshot, replay, write_snapshot
from service import keys
from service.auth import KeyRing, auth_middleware
from service.config import Config
from service.errors import error_middleware
from service.limits import body_timeout_middleware, rate_limit_middleware
from service.otlp import new_span_counts
from service.price_book import PriceBook
from service.reads import stream_render
from service.routes import setup_routes
from service.stream import MetricsStream
from service.tailer import SharedStore, Tailer
from service.writer import Writer

log = logging.getLogger("service")

SNAPSHOT_CHECK_S = 5.0


async def open_store(config: Config) -> EventStore:
    """Open and migrate the store the configuration names."""
    if config.uses_postgres:
        # Imported here: asyncpg adds about 0.1 s to startup, which the SQLite path need not pay.
        from events.postgres_store import PostgresStore

        store = await PostgresStore.open(config.db)
    else:
        store = await SQLiteStore.open(config.db)
    applied = await store.migrate()
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    if config.db_max_size and isinstance(store, SQLiteStore):
        cap = await store.limit_size(config.db_max_size)
        log.info("event log capped at %d bytes (LLM_METRICS_DB_MAX_SIZE)", cap)
    return store


def load_prices(config: Config) -> PriceTable:
    """The price table in force at startup: the one saved by `PUT /prices`, else
    `LLM_METRICS_PRICES`, else the shipped one (`service.price_book`)."""
    return PriceBook.for_config(config).load()


async def load_read_models(store: EventStore, config: Config, *, use_snapshot: bool = True,
                           **replay_options) -> tuple[ReadModels, ReplayReport]:
    """Read models as of the end of the log: from the snapshot when valid, then the tail."""
    models = ReadModels(load_prices(config))
    with _gc_paused():
        if use_snapshot:
            try:
                position = await load_snapshot(config.snapshot_path, models, store)
                log.info("loaded snapshot at position %d", position)
            except SnapshotRefused as exc:
                level = logging.INFO if "no snapshot file" in str(exc) else logging.WARNING
                log.log(level, "snapshot %s not used: %s; replaying the whole log",
                        config.snapshot_path, exc)
        report = await replay(store, models, **replay_options)
    log.info("replayed %d events in %.3f s (%.0f events/s); at position %d",
             report.events, report.seconds, report.rate, models.position)
    return models, report


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off while read models are rebuilt in bulk.

    Rebuilding makes millions of long-lived objects, and each collection walks those made so
    far: it cost about a third of decoding a snapshot and 6% of a replay (`make bench`).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def freeze_heap(app: web.Application) -> None:
    """Move everything alive after startup (above all the rebuilt read models, millions of
    objects that live as long as the process) out of the cyclic collector's sight: otherwise
    each full collection walks all of it, a pause of a second or so for whichever request
    triggers it. For the server process only (`python -m service serve`): in a process that
    builds many apps, such as the tests, it would keep their garbage cycles forever."""
    gc.freeze()


def create_app(config: Config, store: EventStore | None = None) -> web.Application:
    """The aiohttp application. Pass `store` to use one you opened (it is then not closed)."""
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[error_middleware, auth_middleware(KeyRing.from_config(config)),
                     *([rate_limit_middleware(config.rate_limit, config.rate_burst)]
                       if config.rate_limit > 0 else []),
                     body_timeout_middleware(config.body_timeout)],
    )
    app[keys.CONFIG] = config
    app[keys.PRICE_BOOK] = PriceBook.for_config(config)
    app[keys.QUERY_LOCK] = asyncio.Lock()
    app[keys.OTLP_SPANS] = new_span_counts()
    setup_routes(app)

    async def store_ctx(app: web.Application):
        app[keys.STORE] = store if store is not None else await open_store(config)
        yield
        if store is None:
            await app[keys.STORE].close()

    async def models_ctx(app: web.Application):
        try:
            app[keys.MODELS], _ = await load_read_models(app[keys.STORE], config)
        except BaseException:
            # A failed startup does not unwind the contexts already entered (aiohttp), and the
            # open store's thread would keep the process from exiting with its error.
            if store is None:
                await app[keys.STORE].close()
            raise
        yield
        await _snapshot(app, "shutdown")

    async def writer_ctx(app: web.Application):
        stream = MetricsStream(app[keys.STORE], app[keys.MODELS], stream_render(app))
        app[keys.STREAM] = stream
        tailer = None
        if isinstance(app[keys.STORE], SharedStore):
            # Other replicas append to the same log: follow it (SQLite has one writer, no tailer).
            tailer = Tailer(app[keys.STORE], app[keys.MODELS], config.tail_poll,
                            on_apply=stream.notify)
            await tailer.start()
        writer = Writer(app[keys.STORE], app[keys.MODELS], config.max_pending,
                        on_commit=stream.notify, tailer=tailer)
        app[keys.WRITER] = writer
        writer.start()
        stream.start()
        snapshots = asyncio.create_task(_snapshot_loop(app), name="snapshots")
        yield
        snapshots.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshots
        await writer.close()
        if tailer is not None:
            await tailer.close()
        await stream.close()

    async def end_streams(app: web.Application) -> None:
        # On shutdown, before open requests are awaited: a live stream would otherwise hold
        # the server for the whole shutdown timeout.
        if keys.STREAM in app:
            await app[keys.STREAM].close()

    app.cleanup_ctx.extend([store_ctx, models_ctx, writer_ctx])
    app.on_shutdown.append(end_streams)
    return app


async def _snapshot(app: web.Application, why: str) -> None:
    config = app[keys.CONFIG]
    try:
        position = await write_snapshot(config.snapshot_path, app[keys.MODELS], app[keys.STORE])
        log.info("wrote snapshot at position %d (%s)", position, why)
    except Exception:
        log.exception("could not write the snapshot to %s", config.snapshot_path)


async def _snapshot_loop(app: web.Application) -> None:
    every = app[keys.CONFIG].snapshot_every
    if every <= 0:
        return
    last = app[keys.MODELS].position
    while True:
        await asyncio.sleep(SNAPSHOT_CHECK_S)
        if app[keys.MODELS].position - last >= every:
            await _snapshot(app, f"{every} new events")
            last = app[keys.MODELS].position
