"""`python -m service stats | export | import | tail` against real server processes."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import completed, failed, seed_session, started
from tests.server import ROOT, ServerProcess, free_port, run_cli

pytestmark = pytest.mark.slow


def env_for(server: ServerProcess, **extra) -> dict:
    return {"LLM_METRICS_PORT": str(server.port), "LLM_METRICS_HOST": "127.0.0.1", **extra}


def post(server, events):
    status, body = server.request("POST", "/events", events)
    assert status == 201, body
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("cli") / "events.db") as server:
        post(server, seed_session("abc-123"))
        yield server


def test_stats_prints_a_table_of_the_totals(server):
    result = run_cli("stats", env=env_for(server))
    assert result.returncode == 0, result.stderr
    rows = {line.rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[1].strip()
            for line in result.stdout.splitlines()[3:] if "  " in line}
    assert result.stdout.startswith("all sessions\nmetric")
    assert rows["requests"] == "15"
    assert rows["failed"] == "1"
    assert rows["errors by type"] == "RateLimitError 1"
    assert rows["average duration (ms)"] == "3,214.29"
    assert rows["tokens / request"] == "1,485.71"


def test_stats_of_one_session_and_as_json(server):
    result = run_cli("stats", "abc-123", env=env_for(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("session abc-123\n")
    assert "with tool calls" in result.stdout and " 8\n" in result.stdout
    as_json = run_cli("stats", "abc-123", "--json", env=env_for(server))
    body = json.loads(as_json.stdout)
    assert body["session_id"] == "abc-123" and body["total_requests"] == 15


def test_stats_errors_say_what_is_wrong(server, tmp_path):
    missing = run_cli("stats", "no-such-session", env=env_for(server))
    assert missing.returncode == 1
    assert "404" in missing.stderr and "no-such-session" in missing.stderr
    wrong = run_cli("stats", env=env_for(server, LLM_METRICS_SECRET="nope"))
    assert wrong.returncode == 1 and "401" in wrong.stderr and "LLM_METRICS_SECRET" in wrong.stderr
    down = run_cli("stats", "--port", str(free_port()), env=env_for(server))
    assert down.returncode == 2 and "cannot reach the service" in down.stderr


def test_export_then_import_into_another_service_is_idempotent(server, tmp_path):
    exported = tmp_path / "events.ndjson"
    with open(exported, "wb") as out:
        result = subprocess.run([sys.executable, "-m", "service", "export"], cwd=ROOT,
                                env={**os.environ, **env_for(server)},
                                stdout=out, stderr=subprocess.PIPE, text=False, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = exported.read_bytes().splitlines()
    assert len(lines) == 30 and all(json.loads(x)["event_id"] for x in lines)
    assert b"exported 30 events" in result.stderr

    with ServerProcess(tmp_path / "copy.db") as copy:
        first = run_cli("import", str(exported), env=env_for(copy))
        assert first.returncode == 0, first.stderr
        assert "30 new, 0 already stored" in first.stderr
        again = run_cli("import", str(exported), env=env_for(copy))
        assert "0 new, 30 already stored" in again.stderr
        copied, original = (s.request("GET", "/events/metrics")[1] for s in (copy, server))
        assert copied == original


def test_export_time_window(server):
    result = run_cli("export", "--from", "2026-01-01T00:00:05Z", "--to", "2026-01-01T00:00:07Z",
                     env=env_for(server))
    times = [json.loads(x)["timestamp"] for x in result.stdout.splitlines()]
    assert times and all("00:00:05" <= t[11:19] < "00:00:07" for t in times)


def test_import_names_the_bad_line_and_keeps_earlier_batches(tmp_path):
    path = tmp_path / "bad.ndjson"
    good = [json.dumps(started("imp", f"r{i}")) for i in range(4)]
    bad = json.dumps({**completed("imp", "r9"), "prompt_tokens": -1})
    path.write_text("\n".join(good[:2] + ["", *good[2:], bad]) + "\n")
    with ServerProcess(tmp_path / "imp.db") as server:
        result = run_cli("import", str(path), "--batch", "3", env=env_for(server))
        assert result.returncode == 1
        assert "line 6: $.prompt_tokens" in result.stderr
        assert server.request("GET", "/events/metrics")[1]["total_sessions"] == 1
        assert server.request("GET", "/health")[1]["position"] == 3  # the first batch


def test_long_export_and_import_show_progress(tmp_path):
    events = []
    for i in range(30_000):
        events.append(started(f"p{i % 100}", f"r{i}", t=i % 3600))
        events.append(completed(f"p{i % 100}", f"r{i}", t=i % 3600 + 1))
    with ServerProcess(tmp_path / "big.db") as server:
        for i in range(0, len(events), 20_000):
            post(server, events[i:i + 20_000])
        exported = tmp_path / "big.ndjson"
        with open(exported, "wb") as out:
            result = subprocess.run([sys.executable, "-m", "service", "export"], cwd=ROOT,
                                    env={**os.environ, **env_for(server)},
                                    stdout=out, stderr=subprocess.PIPE, timeout=120)
        assert result.returncode == 0
        progress = [x for x in result.stderr.decode().splitlines() if x.startswith("export [")]
        assert progress and progress[-1].split()[-2] == "60,000/60,000"
    with ServerProcess(tmp_path / "big-copy.db") as copy:
        result = run_cli("import", str(exported), env=env_for(copy))
        assert result.returncode == 0, result.stderr
        assert any(x.startswith("import [") for x in result.stderr.splitlines())
        assert "60,000 new" in result.stderr
        assert copy.request("GET", "/health")[1]["position"] == 60_000


def test_tail_prints_the_last_events_then_follows(server):
    proc = subprocess.Popen([sys.executable, "-m", "service", "tail", "-n", "2"], cwd=ROOT,
                            env={**os.environ, **env_for(server)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = [proc.stdout.readline() for _ in range(2)]
        assert "STARTED" in first[0] and "abc-123/r14" in first[0]
        assert "FAILED" in first[1] and "RateLimitError" in first[1]
        began = time.monotonic()
        post(server, [completed("tailed", "r1", prompt_tokens=11, completion_tokens=4)])
        line = proc.stdout.readline()
        assert time.monotonic() - began < 5
        assert "COMPLETED" in line and "tailed/r1" in line and "11+4 tokens" in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_llm_metrics_console_script(server):
    script = shutil.which("llm-metrics", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("llm-metrics is not installed (pip install -e .)")
    result = subprocess.run([script, "stats", "abc-123", "--json"], capture_output=True, text=True,
                            env={**os.environ, **env_for(server)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_requests"] == 15


@pytest.mark.parametrize("command", ["serve", "replay", "stats", "export", "import", "tail"])
def test_every_command_has_help(command, capsys):
    from service.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "LLM_METRICS_PORT" in out
    if command in ("stats", "tail"):
        assert "--snapshot" not in out  # only the settings a client command uses


def test_import_takes_a_json_array_from_a_file_or_stdin(tmp_path):
    events = [e for i in range(5) for e in (started("arr", f"r{i}", event_id=f"s{i}"),
                                            completed("arr", f"r{i}", event_id=f"c{i}"))]
    path = tmp_path / "events.json"
    path.write_text("\ufeff\n  " + json.dumps(events, indent=2))  # a BOM and blanks first
    with ServerProcess(tmp_path / "arr.db") as server:
        result = run_cli("import", str(path), "--batch", "4", env=env_for(server))
        assert result.returncode == 0, result.stderr
        assert "10 new, 0 already stored" in result.stderr
        assert server.request("GET", "/events/metrics/session/arr")[1]["total_requests"] == 5
        piped = subprocess.run([sys.executable, "-m", "service", "import", "-"], cwd=ROOT,
                               input=json.dumps(events).encode(), capture_output=True,
                               env={**os.environ, **env_for(server)}, timeout=60)
        assert piped.returncode == 0, piped.stderr
        assert b"0 new, 10 already stored" in piped.stderr


def test_import_of_a_json_array_names_the_bad_event(tmp_path):
    events = [started("arr", "r0"), completed("arr", "r0"), started("arr", "r1"),
              {**completed("arr", "r1"), "prompt_tokens": -1}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(events))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(events)[:-3])
    with ServerProcess(tmp_path / "arr.db") as server:
        result = run_cli("import", str(path), "--batch", "3", env=env_for(server))
        assert result.returncode == 1
        assert "event 4 of the array: $.prompt_tokens" in result.stderr
        assert server.request("GET", "/health")[1]["position"] == 3
        result = run_cli("import", str(broken), env=env_for(server))
        assert result.returncode == 1 and "is not a JSON array" in result.stderr
        assert server.request("GET", "/health")[1]["position"] == 3


def test_import_names_the_right_line_past_blank_lines_within_a_batch(tmp_path):
    lines = [json.dumps(started("blank", "r0")), "", "", json.dumps(started("blank", "r1")),
             json.dumps({**completed("blank", "r1"), "completion_tokens": "many"})]
    path = tmp_path / "blank.ndjson"
    path.write_text("\n".join(lines) + "\n")
    with ServerProcess(tmp_path / "blank.db") as server:
        result = run_cli("import", str(path), env=env_for(server))
        assert result.returncode == 1
        assert "line 5: $.completion_tokens" in result.stderr, result.stderr


def test_export_takes_a_bare_date_as_utc_midnight(tmp_path):
    # Events either side of 2026-01-02T00:00:00Z, and one just before in +02:00 terms.
    events = [started("d", "before", t=86_400 - 1), started("d", "at", t=86_400),
              started("d", "after", t=2 * 86_400)]
    with ServerProcess(tmp_path / "date.db") as server:
        post(server, events)
        result = run_cli("export", "--from", "2026-01-02", "--to", "2026-01-03",
                         env=env_for(server))
        assert result.returncode == 0, result.stderr
        assert [json.loads(x)["request_id"] for x in result.stdout.splitlines()] == ["at"]


# What a hostile application could put in the ids and texts it sends.
HOSTILE_SESSION = "evil\x1b]0;owned\x07\x1b[2J"
HOSTILE_MODEL = "gpt\x9b31m-4\u202e"


def test_tail_and_stats_escape_control_characters(tmp_path):
    events = [started(HOSTILE_SESSION, "r\r1", HOSTILE_MODEL, user_id="u\x1b"),
              completed(HOSTILE_SESSION, "r\r1", HOSTILE_MODEL),
              started(HOSTILE_SESSION, "r2", HOSTILE_MODEL),
              failed(HOSTILE_SESSION, "r2", HOSTILE_MODEL, error_type="Boom\x1b[1A",
                     error_message="line\nbreak\x1b[K")]
    raw = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")  # everything unsafe but newline
    with ServerProcess(tmp_path / "hostile.db") as server:
        post(server, events)
        env = env_for(server)
        shown = run_cli("tail", "--no-follow", env=env)
        assert shown.returncode == 0, shown.stderr
        assert not raw.search(shown.stdout), repr(shown.stdout)
        assert len(shown.stdout.splitlines()) == 4
        assert "evil\\x1b]0;owned\\x07\\x1b[2J/r\\r1" in shown.stdout
        assert "gpt\\x9b31m-4\\u202e" in shown.stdout and "Boom\\x1b[1A" in shown.stdout
        # Times keep their offset.
        assert re.match(r"2026-01-01 00:00:00\.000\+00:00  STARTED ", shown.stdout)

        as_json = run_cli("tail", "--no-follow", "--json", env=env)
        assert not raw.search(as_json.stdout), repr(as_json.stdout)
        assert [json.loads(x)["session_id"] for x in as_json.stdout.splitlines()] == \
            [HOSTILE_SESSION] * 4  # the same values, only written with escapes

        for args in (["stats"], ["stats", HOSTILE_SESSION], ["stats", HOSTILE_SESSION, "--json"],
                     ["stats", HOSTILE_SESSION + "x"]):
            result = run_cli(*args, env=env)
            assert not raw.search(result.stdout + result.stderr), (args, result)
        table = run_cli("stats", HOSTILE_SESSION, env=env).stdout
        assert table.startswith("session evil\\x1b]0;owned\\x07\\x1b[2J\n")
        assert "gpt\\x9b31m-4\\u202e" in table and "Boom\\x1b[1A 1" in table
        missing = run_cli("stats", HOSTILE_SESSION + "x", env=env)
        assert missing.returncode == 1 and "\\x1b[2Jx" in missing.stderr


def test_client_commands_describe_host_and_port_as_the_services(capsys):
    from service.__main__ import main

    with pytest.raises(SystemExit):
        main(["tail", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--host HOST the service's address" in out and "listen" not in out
    assert "--port PORT the service's port" in out
