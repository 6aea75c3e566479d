"""`python -m service serve | replay | migrate`, plus the client commands of `service.cli`
(`stats | export | import | tail`); also installed as `llm-metrics`."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import time
from pathlib import Path

from service import cli
from service.config import DEFAULT_SECRET, Config, ConfigError, add_arguments, from_args

# The server's modules (aiohttp, the store, the projections) are imported by the commands that
# need them, so the client commands of `service.cli` start in a fraction of the time.

log = logging.getLogger("service")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# How long a thread may hold the GIL while others wait (Python's default is 5 ms). The facts'
# writer and readers run Python between DuckDB calls; the shorter turn lets the event loop in
# sooner: `/health` p99 under batch ingest and queries 28-32 ms at 5 ms, 20-23 ms at 0.5 ms
# (`python -m bench --only health_under_load`, three runs each alternating, 2026-12-02 16:40,
# ingest rate the same, 6.3-6.9k events/s).
GIL_SWITCH_INTERVAL_S = 0.0005

# SQLite maps its shared-memory file when it opens a WAL database; on a disk with no room left
# that is a SIGBUS that kills the process, not an error it could report.
MIN_FREE_BYTES = 1024**2


def full_disk(config: Config) -> str | None:
    """Why the disk holding the SQLite log is too full to open it safely, or None."""
    if config.uses_postgres:
        return None
    folder = Path(config.db).resolve().parent
    while not folder.exists():
        folder = folder.parent
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return (f"only {free:,} bytes are free on the disk holding {config.db}; free at least "
            f"{MIN_FREE_BYTES // 1024**2} MiB first (nothing in the log is lost)")


def serve(config: Config) -> int:
    from events.store import StoreError
    from projections.prices import PriceError
    from projections.replay import UndecodableLog
    from service.app import create_app, freeze_heap
    from service.auth import AccessLogger, is_default_secret
    from service.errors import quiet_parser_errors
    from service.serving import serve_until_signalled

    if is_default_secret(config.secret):
        if not _is_loopback(config.host):
            log.error(
                "refusing to listen on %s with the default secret: set LLM_METRICS_SECRET "
                "(or --secret) to a long random value, e.g. `export LLM_METRICS_SECRET=$(openssl "
                "rand -hex 32)`", config.host)
            return 2
        log.warning("LLM_METRICS_SECRET is the default %r: fine on a laptop, set your own "
                    "before anyone else can reach this port", DEFAULT_SECRET)
    quiet_parser_errors()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = create_app(config)
    app.on_startup.append(freeze_heap)  # after create_app's contexts: once the models are built
    try:
        asyncio.run(serve_until_signalled(
            app,
            config.host,
            config.port,
            on_listening=lambda: log.info("serving on http://%s:%d", config.host, config.port),
            shutdown_timeout=5.0,
            access_log=log if config.access_log else None,
            access_log_class=AccessLogger,
            # A client that goes away cancels its handler, and so its question to the engine
            # (projections.engine interrupts it): abandoned questions stop using the cores.
            handler_cancellation=True,
            # Slow clients: aiohttp closes a connection that has not sent a complete request
            # (headers included) within keepalive_timeout of connecting or of its last answer.
            keepalive_timeout=config.header_timeout,
            max_line_size=config.max_header_size,
            max_field_size=config.max_header_size,
            max_headers=config.max_headers,
        ))
    except (UndecodableLog, StoreError, PriceError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def _replay(config: Config, skip_undecodable: bool) -> int:
    from projections import query
    from projections.replay import UndecodableLog
    from service.app import load_read_models, open_store
    from service.progress import Progress

    store = await open_store(config)
    try:
        last = await store.last_position()
        progress = Progress(last, "replay")
        try:
            facts, report = await load_read_models(
                store, config, rebuild=True, skip_undecodable=skip_undecodable,
                on_progress=progress.update,
            )
        except UndecodableLog as exc:
            progress.done()
            print(f"error: {exc}", file=sys.stderr)
            return 1
        progress.done()
        try:
            totals = (await query.ask(facts, query.Question(
                measures=("total_requests",)))).rows[0]["total_requests"]
            sessions, in_flight, stale = await query.pending_counts(facts, query.Scope())
        finally:
            facts.engine.close()
        print(
            f"replayed {report.events:,} events up to position {facts.position} in "
            f"{report.seconds:.2f} s ({report.rate:,.0f} events/s): {sessions:,} sessions, "
            f"{totals:,} finished and {in_flight + stale:,} pending requests; facts in "
            f"{config.facts_path}"
        )
        if report.skipped:
            shown = ", ".join(map(str, report.skipped[:50]))
            more = " ..." if len(report.skipped) > 50 else ""
            print(f"skipped {len(report.skipped)} undecodable events at positions {shown}{more}")
        return 0
    finally:
        await store.close()


async def _migrate(config: Config) -> int:
    from service.app import open_store

    store = await open_store(config)
    await store.close()
    print(f"{config.db}: migrations up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-metrics", description="LLM Metrics: record LLM requests, serve their metrics.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_p = commands.add_parser("serve", help="run the HTTP service")
    replay_p = commands.add_parser(
        "replay", help="rebuild the request facts (the read side) from the whole log "
                       "(run it with the service stopped)")
    replay_p.add_argument("--skip-undecodable", action="store_true",
                          help="skip events that cannot be decoded and list their positions")
    migrate_p = commands.add_parser("migrate", help="apply pending database migrations")
    for p in (serve_p, replay_p, migrate_p):
        add_arguments(p)
    cli.add_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.command in cli.COMMANDS:
        return cli.run(args, config)
    problem = full_disk(config)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    if args.command == "serve":
        return serve(config)
    from events.store import StoreError

    try:
        if args.command == "replay":
            return asyncio.run(_replay(config, args.skip_undecodable))
        return asyncio.run(_migrate(config))
    except StoreError as exc:  # the log is in use by a server, unreachable, ...
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
