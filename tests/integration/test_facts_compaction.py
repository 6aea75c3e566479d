"""`Engine.compact`, the facts file rewrite after an erasure: the deleted strings leave the
file, the kept rows stay, and reads running meanwhile all answer, from the old file or the
new one, never from a closed one."""

from __future__ import annotations

import asyncio

from projections.engine import Engine


async def test_compaction_drops_deleted_bytes_and_reads_go_on(tmp_path):
    path = tmp_path / "facts.duckdb"
    engine = Engine.open(path)
    try:
        await engine.write(lambda cur: cur.execute(
            "CREATE TABLE t AS SELECT 'GONE-' || i AS s FROM range(50000) r(i) "
            "UNION ALL SELECT 'kept-' || i FROM range(50000) r(i)"))
        await engine.write(lambda cur: cur.execute("CHECKPOINT"))
        await engine.write(lambda cur: cur.execute("DELETE FROM t WHERE s LIKE 'GONE-%'"))
        await engine.write(lambda cur: cur.execute("CHECKPOINT"))
        assert b"GONE-" in path.read_bytes()  # what DuckDB leaves: the reason for compact

        async def reads():
            answers = []
            for _ in range(40):
                answers.append((await engine.read("SELECT count(*) FROM t"))[0][0])
                await asyncio.sleep(0)
            return answers

        readers = [asyncio.ensure_future(reads()) for _ in range(6)]
        await asyncio.sleep(0.01)
        await engine.compact()
        results = await asyncio.gather(*readers)
        assert all(n == 50000 for answers in results for n in answers)
        assert b"GONE-" not in path.read_bytes()
        assert not (tmp_path / "facts.duckdb.compact").exists()
        await engine.write(lambda cur: cur.execute("INSERT INTO t VALUES ('after')"))
        assert (await engine.read("SELECT count(*) FROM t"))[0][0] == 50001
    finally:
        engine.close()
    reopened = Engine.open(path)
    try:
        assert reopened.read_sync("SELECT count(*) FROM t")[0][0] == 50001
    finally:
        reopened.close()
