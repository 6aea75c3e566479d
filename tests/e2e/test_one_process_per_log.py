"""One process at a time opens a SQLite log: a second server, `replay` or `migrate` on the same
file refuses to start with one line naming the holder's pid; the lock dies with its holder
(`kill -9` included), so the next start needs no cleanup."""

from __future__ import annotations

import pytest

from events.sqlite_store import LogInUse, SQLiteStore
from tests import factories as f
from tests.server import ServerProcess, run_cli

pytestmark = pytest.mark.slow


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


def test_a_second_server_replay_or_migrate_refuses_until_the_holder_dies(tmp_path):
    db = tmp_path / "events.db"
    first = ServerProcess(db).start()
    try:
        assert first.request("POST", "/events", [f.started("s", "r1")])[0] == 201
        holder = f"process {first.proc.pid} "

        second = ServerProcess(db)
        with pytest.raises(RuntimeError, match="exited with 1"):
            second.start(timeout=30)
        errors = error_lines(second.log())
        assert len(errors) == 1 and holder in errors[0] and "in use" in errors[0], second.log()

        env = {"LLM_METRICS_DB": str(db)}
        for command in ("replay", "migrate"):
            done = run_cli(command, env=env)
            assert done.returncode == 1, (command, done.stdout, done.stderr)
            errors = error_lines(done.stderr)
            assert len(errors) == 1 and holder in errors[0], (command, done.stderr)

        # The holder was not disturbed by any of them.
        assert first.request("POST", "/events", [f.started("s", "r2")])[0] == 201
        assert first.request("GET", "/health")[1]["position"] == 2
    finally:
        first.kill()  # SIGKILL: no chance to release anything itself

    with ServerProcess(db) as again:
        assert again.request("GET", "/health")[1]["position"] == 2
    done = run_cli("replay", env={"LLM_METRICS_DB": str(db)})
    assert done.returncode == 0, done.stderr


async def test_the_store_refuses_a_second_open_in_the_same_process_until_closed(tmp_path):
    path = tmp_path / "events.db"
    store = await SQLiteStore.open(path)
    with pytest.raises(LogInUse, match="in use by process"):
        await SQLiteStore.open(path)
    await store.close()
    again = await SQLiteStore.open(path)
    await again.close()
