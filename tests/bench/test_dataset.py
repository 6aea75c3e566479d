"""The benchmark traffic: the shape the performance issue asks for, written by the real store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter

from bench import dataset


def test_traffic_has_the_asked_for_shape():
    events = list(dataset.wire_events(12_000, 1_200))  # more sessions than one BLOCK
    assert len(events) == 12_000
    kinds = Counter(e["type"] for e in events)
    assert kinds["LLM_REQUEST_STARTED"] == 6_000
    assert 0.02 < kinds["LLM_REQUEST_FAILED"] / 6_000 < 0.08
    completed = [e for e in events if e["type"] == "LLM_REQUEST_COMPLETED"]
    assert 0.07 < sum(e["has_tool_calls"] for e in completed) / len(completed) < 0.13
    assert {e["model"] for e in events} == set(dataset.MODELS)
    assert len({e["session_id"] for e in events}) == 1_200
    # Each session belongs to one user; a user has several sessions (group_by=user_id figure).
    users = {e["session_id"]: e["user_id"] for e in events}
    assert len(set(users.values())) == 1_200 // dataset.SESSIONS_PER_USER
    assert all(e["user_id"] == users[e["session_id"]] for e in events)
    assert events == list(dataset.wire_events(12_000, 1_200))  # deterministic


def test_sessions_from_an_offset_do_not_overlap_the_first_ones():
    first = {e["session_id"] for e in dataset.wire_events(4_000, 1_500)}
    later = {e["session_id"] for e in dataset.wire_events(400, 40, first_session=1_500)}
    assert len(later) == 40 and not first & later


def test_the_log_is_written_through_the_store(tmp_path):
    path = tmp_path / "log.db"
    asyncio.run(dataset.write_log(path, 4_400, 1_100))
    asyncio.run(dataset.write_log(path, 200, 20, first_session=1_100))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*), max(position) FROM events").fetchone() == (4_600, 4_600)
        assert conn.execute("SELECT count(*) FROM request_slots").fetchone() == (4_600,)
    finally:
        conn.close()
