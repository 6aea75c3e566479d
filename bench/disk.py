"""Disk: bytes per event of the SQLite file after loading the log through the real store,
against the bytes of the data itself (each event's payload and event id, no overhead).

    python -m bench.disk [--smoke]
"""

from __future__ import annotations

import sqlite3

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, ratio

TARGET_BYTES = 200


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    conn = sqlite3.connect(log)
    try:
        events, data = conn.execute(
            "SELECT count(*), sum(length(payload) + length(event_id)) FROM events").fetchone()
        pages, page_size = (conn.execute("PRAGMA page_count").fetchone()[0],
                            conn.execute("PRAGMA page_size").fetchone()[0])
        tables = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")) \
            if _has_dbstat(conn) else {}
    finally:
        conn.close()
    value = pages * page_size / events
    ceiling = data / events
    extra = {f"{name}_bytes_per_event": round(size / events, 1) for name, size in tables.items()
             if size / events >= 1}
    return [Figure(
        name="disk",
        workload=f"bytes per event in the DB file after loading {events:,} events",
        value=round(value, 1), unit="bytes/event", ceiling=round(ceiling, 1),
        ceiling_what="payload + event id bytes, no overhead",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_BYTES} bytes/event", met=value <= TARGET_BYTES, extra=extra,
    )]


def _has_dbstat(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except sqlite3.Error:
        return False


if __name__ == "__main__":
    main_for(run)
