"""The composition root: `create_app` builds everything, in the order open -> migrate -> replay."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from events.sqlite_store import SQLiteStore
from events.store import EventStore
from projections.replay import ReadModels, ReplayReport, SnapshotRefused, load_snapshot, replay, write_snapshot
from service import keys
from service.auth import auth_middleware
from service.config import Config
from service.errors import error_middleware
from service.otlp import new_span_counts
from service.routes import setup_routes
from service.stream import MetricsStream
from service.writer import Writer

log = logging.getLogger("service")

SNAPSHOT_CHECK_S = 5.0


async def open_store(config: Config) -> EventStore:
    """Open and migrate the store the configuration names."""
    store = await SQLiteStore.open(config.db)
    applied = await store.migrate()
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return store


async def load_read_models(store: EventStore, config: Config, *, use_snapshot: bool = True,
                           **replay_options) -> tuple[ReadModels, ReplayReport]:
    """Read models as of the end of the log: from the snapshot when valid, then the tail."""
    models = ReadModels()
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


def create_app(config: Config, store: EventStore | None = None) -> web.Application:
    """The aiohttp application. Pass `store` to use one you opened (it is then not closed)."""
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[error_middleware, auth_middleware(config.secret)],
    )
    app[keys.CONFIG] = config
    app[keys.OTLP_SPANS] = new_span_counts()
    setup_routes(app)

    async def store_ctx(app: web.Application):
        app[keys.STORE] = store if store is not None else await open_store(config)
        yield
        if store is None:
            await app[keys.STORE].close()

    async def models_ctx(app: web.Application):
        app[keys.MODELS], _ = await load_read_models(app[keys.STORE], config)
        yield
        await _snapshot(app, "shutdown")

    async def writer_ctx(app: web.Application):
        stream = MetricsStream(app[keys.STORE], app[keys.MODELS])
        app[keys.STREAM] = stream
        writer = Writer(app[keys.STORE], app[keys.MODELS], config.max_pending,
                        on_commit=stream.notify)
        app[keys.WRITER] = writer
        writer.start()
        stream.start()
        snapshots = asyncio.create_task(_snapshot_loop(app), name="snapshots")
        yield
        snapshots.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshots
        await writer.close()
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
