"""The composition root: `create_app` builds everything, in the order open -> migrate -> replay."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Callable

from aiohttp import web

from events.sqlite_store import SQLiteStore
from events.store import EventStore
from projections import session_answers
from projections.prices import PriceTable
from projections.engine import Engine, EngineError, FactsDamaged, rebuild_marker
from projections.facts import Facts
from projections.replay import ReplayReport, catch_up
from service import keys
from service.alerts.manager import Alerts
from service.alerts.questions import observe
from service.auth import KeyRing, auth_middleware
from service.config import Config
from service.errors import error_middleware
from service.lifecycle import Lifecycle
from service.limits import body_timeout_middleware, rate_limit_middleware
from service.otlp import new_span_counts
from service.price_book import PriceBook
from service.reads import stream_render
from service.routes import setup_routes
from service.stream import MetricsStream
from service.tailer import Tailer
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
    if config.db_max_size and store.limits_size:
        cap = await store.limit_size(config.db_max_size)
        log.info("event log capped at %d bytes (LLM_METRICS_DB_MAX_SIZE)", cap)
    return store


def load_prices(config: Config) -> PriceTable:
    """The price table in force at startup: the one saved by `PUT /prices`, else
    `LLM_METRICS_PRICES`, else the shipped one (`service.price_book`)."""
    return PriceBook.for_config(config).load()


def open_facts_engine(config: Config, *, fresh: bool = False) -> tuple[Engine, str | None]:
    """The facts file, or a new one (then also why) when asked, when it cannot be opened, or
    when a read found it damaged (its rebuild marker). A replaced file is kept beside it with
    `.damaged` (or `.old`) appended, for a post-mortem; the facts are rebuilt from the log."""
    path = Path(config.facts_path)
    marker = rebuild_marker(path)
    why = "asked to" if fresh else None
    if marker.exists():
        why = "a read found the file damaged"
    if why is None:
        try:
            return Engine.open(path, memory_limit=config.facts_memory), None
        except EngineError as exc:
            why = f"the file cannot be opened ({exc})"
    suffix = ".old" if fresh else ".damaged"
    for old in (path, path.with_name(path.name + ".wal")):
        if old.exists():
            old.replace(old.with_name(old.name + suffix))
    marker.unlink(missing_ok=True)
    return Engine.open(path, memory_limit=config.facts_memory), why


async def load_read_models(store: EventStore, config: Config, *, rebuild: bool = False,
                           **replay_options) -> tuple[Facts, ReplayReport]:
    """The request facts as of the end of the log: the persisted ones plus the log after them
    (all of it with `rebuild`, or when they are missing or of another log)."""
    engine, damaged = open_facts_engine(config, fresh=rebuild)
    try:
        try:
            facts = await Facts.open(engine, load_prices(config))
            report = await catch_up(store, facts, rebuild=rebuild, **replay_options)
        except FactsDamaged:
            if damaged:
                raise  # a new file damaged at once: a disk problem, not ours to hide
            # Found while reading the file: it left its rebuild marker, so this opens anew.
            engine.close()
            engine, damaged = open_facts_engine(config)
            facts = await Facts.open(engine, load_prices(config))
            report = await catch_up(store, facts, **replay_options)
    except BaseException:
        engine.close()
        raise
    if damaged:
        report = report._replace(rebuilt=damaged)
    if report.rebuilt:
        log.warning("request facts %s rebuilt from the whole log: %s", config.facts_path,
                    report.rebuilt)
    log.info("applied %d events in %.3f s (%.0f events/s); at position %d",
             report.events, report.seconds, report.rate, facts.position)
    return facts, report


async def freeze_heap(app: web.Application) -> None:
    """Move everything alive after startup (modules, the app) out of the cyclic collector's
    sight, so that full collections walk only what requests make. For the server process only
    (`python -m service serve`): in a process that builds many apps, such as the tests, it
    would keep their garbage cycles forever."""
    gc.freeze()


def _each(*hooks: Callable[[int], None]) -> Callable[[int], None]:
    """One after-commit hook that calls every one of `hooks` (the stream, the alerts)."""
    def notify(position: int) -> None:
        for hook in hooks:
            hook(position)
    return notify


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
            answers = await session_answers.open_store(
                app[keys.MODELS], config.answers_path, int(config.stale_after * 1_000_000),
                config.top_models)
        except BaseException:
            # A failed startup does not unwind the contexts already entered (aiohttp), and the
            # open store's thread would keep the process from exiting with its error.
            if keys.MODELS in app:
                app[keys.MODELS].engine.close()
            if store is None:
                await app[keys.STORE].close()
            raise
        keeper = asyncio.get_running_loop().create_task(
            session_answers.keep(app[keys.MODELS], answers), name="session-answers")
        yield
        keeper.cancel()
        # Bounded: a shutdown must not wait on a round (seen to hang a test's teardown once,
        # cause not found; docs/read-side.md). Nothing is lost: the next start finds the
        # sessions changed after the watermark.
        await asyncio.wait([keeper], timeout=2)
        if not keeper.done():
            frames = "".join(f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                             for f in keeper.get_stack())
            log.warning("session answers: the keeper did not stop within 2 s; left at:%s",
                        frames)
        await answers.close()
        app[keys.MODELS].engine.close()

    async def alerts_ctx(app: web.Application):
        try:
            app[keys.ALERTS] = await Alerts.open(config.alerts_path, app[keys.MODELS], observe)
        except BaseException:
            app[keys.MODELS].engine.close()
            if store is None:
                await app[keys.STORE].close()
            raise
        app[keys.MODELS].erasure_hooks.append(app[keys.ALERTS].forget_erased)
        await app[keys.ALERTS].start()
        yield
        await app[keys.ALERTS].close()

    async def writer_ctx(app: web.Application):
        stream = MetricsStream(app[keys.STORE], app[keys.MODELS], stream_render(app))
        app[keys.STREAM] = stream
        notify = _each(stream.notify, app[keys.ALERTS].notify)
        tailer = None
        if app[keys.STORE].shared:
            # Other replicas append to the same log: follow it, own commits included.
            tailer = Tailer(app[keys.STORE], app[keys.MODELS], config.tail_poll,
                            on_apply=notify)
            await tailer.start()
        writer = Writer(app[keys.STORE], app[keys.MODELS], config.max_pending,
                        on_commit=notify, follower=tailer)
        app[keys.WRITER] = writer
        writer.start()
        stream.start()
        # Before the server listens: with a retention, every answer covers retained data only.
        lifecycle = Lifecycle(app[keys.STORE], app[keys.MODELS], writer, config.retention,
                              config.retention_sweep)
        app[keys.LIFECYCLE] = lifecycle
        await lifecycle.start()
        yield
        await lifecycle.close()
        await writer.close()
        if tailer is not None:
            await tailer.close()
        await stream.close()

    async def end_streams(app: web.Application) -> None:
        # On shutdown, before open requests are awaited: a live stream would otherwise hold
        # the server for the whole shutdown timeout.
        if keys.STREAM in app:
            await app[keys.STREAM].close()

    app.cleanup_ctx.extend([store_ctx, models_ctx, alerts_ctx, writer_ctx])
    app.on_shutdown.append(end_streams)
    return app
