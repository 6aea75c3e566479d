"""PostgreSQL for the `pg_*` benchmarks: the server, a fresh schema per run, replicas.

The server is `LLM_METRICS_BENCH_PG_DSN` (default: the tests' `LLM_METRICS_TEST_PG_DSN`, itself
defaulting to the local server on 127.0.0.1:5432, database `test`). Without a reachable server
the `pg_*` scripts raise `PostgresUnavailable` and measure nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import asyncpg

from bench.common import ServerProcess, scratch
from events.postgres_store import PostgresStore
from tests.postgres import DSN as TEST_DSN
from tests.postgres import dsn_with_schema

DSN = os.environ.get("LLM_METRICS_BENCH_PG_DSN", TEST_DSN)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server to measure against."""


async def _execute(sql: str) -> None:
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresUnavailable(f"PostgreSQL is not reachable at {DSN} (set "
                                  f"LLM_METRICS_BENCH_PG_DSN): {exc}") from exc
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_schema(prefix: str):
    """A new, empty schema for one run; yields (schema, URL of a log in it); dropped after."""
    schema = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema, dsn_with_schema(schema, DSN)
    finally:
        asyncio.run(_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def migrated(url: str) -> PostgresStore:
    """The service's own store on the log at `url`, migrated."""
    store = await PostgresStore.open(url)
    await store.migrate()
    return store


@contextlib.contextmanager
def replicas(url: str, count: int, **env: str):
    """`count` real service processes on the log at `url`; yields their ServerProcesses."""
    servers, files = [], []
    try:
        for n in range(count):
            facts = scratch() / f"pg-replica-{n}.facts.duckdb"
            # The first argument only names the process's log file; LLM_METRICS_DB wins.
            server = ServerProcess(scratch() / f"pg-replica-{n}.db", LLM_METRICS_DB=url,
                                   LLM_METRICS_FACTS=str(facts), **env)
            files += [facts, facts.with_name(facts.name + ".wal"), server.log_path]
            servers.append(server.start())
        yield servers
    finally:
        for server in servers:
            server.__exit__(None, None, None)
        for path in files:
            path.unlink(missing_ok=True)
