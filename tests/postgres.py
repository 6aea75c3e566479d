"""PostgreSQL for tests: the server named by `LLM_METRICS_TEST_PG_DSN`, one schema per test.

Tests that need PostgreSQL use `fresh_schema()` (async) or `schema_for_processes()` (sync, for
server processes); when the server is unreachable they are skipped with the reason, so
`make test` still passes on a machine without PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

DSN = os.environ.get("LLM_METRICS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def dsn_with_schema(schema: str, dsn: str = DSN) -> str:
    """The URL a replica is given: `dsn` with `search_path` set to `schema`."""
    parts = urlsplit(dsn)
    query = "&".join(filter(None, [parts.query, urlencode({"search_path": schema})]))
    return urlunsplit(parts._replace(query=query))


async def connect() -> asyncpg.Connection:
    """A connection to the test server, or skip the test saying why there is none."""
    try:
        return await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {DSN} (set LLM_METRICS_TEST_PG_DSN): "
                    f"{type(exc).__name__}: {exc}")


async def _drop(schema: str) -> None:
    admin = await connect()
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await admin.close()


def _new_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def fresh_schema(prefix: str = "t"):
    """Yield the name of a schema nobody uses yet; drop it (and the log in it) afterwards.

    The schema itself is created by the store under test (`PostgresStore.open`).
    """
    await (await connect()).close()
    schema = _new_name(prefix)
    try:
        yield schema
    finally:
        await _drop(schema)


@contextlib.contextmanager
def schema_for_processes(prefix: str = "e2e"):
    """`fresh_schema` for synchronous tests that start server processes: yields its URL."""
    async def check() -> None:
        await (await connect()).close()

    asyncio.run(check())
    schema = _new_name(prefix)
    try:
        yield dsn_with_schema(schema)
    finally:
        asyncio.run(_drop(schema))


def unreachable() -> str | None:
    """Why the test server cannot be used, or None when it can (for tests that adapt)."""
    async def probe() -> None:
        await (await asyncpg.connect(DSN, timeout=5)).close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"PostgreSQL is not reachable at {DSN}: {type(exc).__name__}: {exc}"
    return None
