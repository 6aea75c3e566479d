"""The terminal client: `python -m service stats | export | import | tail` (also `llm-metrics`).

These commands talk to a running service over HTTP, at the configured host and port with the
configured secret (the same settings `serve` reads), using only the standard library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Iterator

from llm_metrics_client._core import Backoff
from service.config import Config, add_arguments
from service.progress import Progress
from service.terminal import printable, printable_json

COMMANDS = ("stats", "export", "import", "tail")
# The settings a client command uses (the rest still come from the environment, unused);
# `--host` and `--port` are added here: for a client they say where the service is, not where
# to listen.
CLIENT_SETTINGS = ("secret",)
EXPORT_PAGE = 10_000
IMPORT_BATCH = 5_000
IMPORT_ATTEMPTS = 6
TAIL_WAIT_S = 25


class CliError(Exception):
    """Printed as `error: ...` with exit status `status`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def add_commands(commands) -> None:
    """Register the client subcommands on `python -m service`'s subparsers."""
    stats = commands.add_parser("stats", help="print the metrics of the running service (all "
                                              "sessions, or one) as a table, or as JSON")
    stats.add_argument("session_id", nargs="?", help="one session's metrics instead of the totals")
    stats.add_argument("--json", action="store_true", help="print the JSON the API returns")
    export = commands.add_parser("export", help="write stored events as NDJSON wire events "
                                                "(with their event ids) to stdout")
    export.add_argument("--from", dest="from_", metavar="TIME",
                        help="only events at or after this event time: RFC 3339 with an offset, "
                             "or a date (2026-11-27: that day's UTC midnight)")
    export.add_argument("--to", metavar="TIME", help="only events before this event time (same "
                                                     "forms as --from)")
    export.add_argument("--after", type=int, default=0, metavar="POSITION",
                        help="start after this log position (default 0: the beginning)")
    import_ = commands.add_parser("import", help="post a file of events, NDJSON or a JSON array "
                                                 "(idempotent: events already stored are counted "
                                                 "as duplicates)")
    import_.add_argument("file", help="NDJSON or JSON-array file, `-` for stdin")
    import_.add_argument("--batch", type=int, default=IMPORT_BATCH,
                         help=f"events per request (default {IMPORT_BATCH})")
    tail = commands.add_parser("tail", help="print the last events, then follow new ones")
    tail.add_argument("-n", "--lines", type=int, default=10,
                      help="events to show first (default 10)")
    tail.add_argument("--json", action="store_true", help="print NDJSON wire events")
    tail.add_argument("--no-follow", action="store_true", help="print the last events and stop")
    for p in (stats, export, import_, tail):
        p.add_argument("--host", default=None, help="the service's address (0.0.0.0 or :: "
                       f"mean this machine) [env LLM_METRICS_HOST, default {Config.host!r}]")
        p.add_argument("--port", type=int, default=None, help="the service's port "
                       f"[env LLM_METRICS_PORT, default {Config.port}]")
        add_arguments(p, only=CLIENT_SETTINGS)


def run(args: argparse.Namespace, config: Config) -> int:
    """Run one client subcommand; returns the exit status."""
    api = Api(config)
    try:
        if args.command == "stats":
            return stats(api, args.session_id, args.json)
        if args.command == "export":
            return export(api, args.from_, args.to, args.after)
        if args.command == "import":
            return import_file(api, args.file, args.batch)
        return tail(api, args.lines, args.json, follow=not args.no_follow)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


# ---- HTTP -----------------------------------------------------------------------------------

class Api:
    """Blocking calls to the service; every failure becomes a `CliError` that says what to do."""

    def __init__(self, config: Config, timeout: float = 60.0):
        host = config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # listening everywhere: reach it on this machine
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.base = f"http://{host}:{config.port}"
        self.secret = config.secret
        self.timeout = timeout

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str | None = None, timeout: float | None = None):
        """(status, body bytes, headers); raises CliError when the service is unreachable."""
        headers = {"x-internal-auth": self.secret}
        if content_type:
            headers["content-type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as reply:
                return reply.status, reply.read(), reply.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the service at {self.base} ({reason}); is it running "
                           "(`make run`), and are LLM_METRICS_HOST/PORT the ones it uses?", 2)

    def get(self, path: str, timeout: float | None = None):
        status, body, headers = self.call("GET", path, timeout=timeout)
        if status != 200:
            raise CliError(_error_text(status, body))
        return body, headers

    def get_json(self, path: str):
        return json.loads(self.get(path)[0])


def _error_text(status: int, body: bytes) -> str:
    """The service's error, escaped: it may quote an id that holds control characters."""
    try:
        error = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {printable(body[:300].decode(errors='replace'))}"
    if status == 401:
        return f"HTTP 401: {printable(error.get('error'))} (set LLM_METRICS_SECRET or --secret)"
    return f"HTTP {status}: {printable(error.get('error', error))}"


# ---- stats ----------------------------------------------------------------------------------

# Rows of the summary table, in order; fields the service does not return are left out.
SUMMARY = [
    ("total_sessions", "sessions"),
    ("total_requests", "requests"),
    ("successful_requests", "successful"),
    ("failed_requests", "failed"),
    ("error_rate", "error rate"),
    ("errors_by_type", "errors by type"),
    ("in_flight_requests", "in flight"),
    ("stale_requests", "stale"),
    ("total_prompt_tokens", "prompt tokens"),
    ("total_completion_tokens", "completion tokens"),
    ("total_tokens", "total tokens"),
    ("average_tokens_per_request", "tokens / request"),
    ("requests_with_tools", "with tool calls"),
    ("total_cost_usd", "cost (USD)"),
    ("prompt_cost_usd", "prompt cost (USD)"),
    ("completion_cost_usd", "completion cost (USD)"),
    ("total_duration_ms", "total duration (ms)"),
    ("average_duration_ms", "average duration (ms)"),
    ("duration_ms_percentiles", "duration p50/p90/p95/p99 (ms)"),
    ("time_to_first_token_ms_percentiles", "first token p50/p90/p95/p99 (ms)"),
    ("output_tokens_per_second", "output tokens / s"),
    ("first_seen", "first seen"),
    ("last_seen", "last seen"),
    ("models", "models"),
    ("unpriced_models", "unpriced models"),
]
MODEL_COLUMNS = [("total_requests", "requests"), ("failed_requests", "failed"),
                 ("total_tokens", "tokens"), ("total_cost_usd", "cost USD"),
                 ("average_duration_ms", "avg ms")]


def stats(api: Api, session_id: str | None, as_json: bool) -> int:
    if session_id is None:
        path = "/events/metrics"
    else:
        path = "/events/metrics/session/" + urllib.parse.quote(session_id, safe="")
    metrics = api.get_json(path)
    if as_json:
        print(printable_json(json.dumps(metrics, indent=2, ensure_ascii=False)))
        return 0
    title = f"session {printable(session_id)}" if session_id is not None else "all sessions"
    rows = [(label, _cell(name, metrics[name])) for name, label in SUMMARY
            if name in metrics and metrics[name] not in (None, [], {})]
    print(title)
    print(table(["metric", "value"], rows, right=[1]))
    by_model = metrics.get("by_model") or {}
    if by_model:
        print()
        cols = [(n, label) for n, label in MODEL_COLUMNS
                if any(n in m for m in by_model.values())]
        rows = [[model] + [_cell(n, m.get(n)) for n, _ in cols]
                for model, m in sorted(by_model.items(),
                                       key=lambda kv: -kv[1].get("total_requests", 0))]
        print(table(["model"] + [label for _, label in cols], rows,
                    right=list(range(1, len(cols) + 1))))
    return 0


def _cell(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "errors_by_type":
        return ", ".join(f"{k} {v:,}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]))
    if isinstance(value, dict):  # percentiles
        return " / ".join(_number(value.get(k)) for k in ("p50", "p90", "p95", "p99"))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if name == "error_rate":
        return f"{value:.2%}"
    if "cost" in name:
        return f"{value:,.4f}"
    return _number(value)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def table(headers: list[str], rows: list, right: list[int] = ()) -> str:
    """A plain aligned text table; columns listed in `right` are right-aligned (numbers)."""
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


# ---- export / import ------------------------------------------------------------------------

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def event_time(text: str) -> str:
    """A bare date (`2026-11-27`) is that day's midnight UTC; anything else goes as given (the
    service names what it cannot read)."""
    text = text.strip()
    return text + "T00:00:00Z" if DATE.fullmatch(text) else text


def export(api: Api, start: str | None, end: str | None, after: int) -> int:
    query = {"limit": str(EXPORT_PAGE)}
    if start:
        query["from"] = event_time(start)
    if end:
        query["to"] = event_time(end)
    out = sys.stdout.buffer
    started = time.perf_counter()
    progress = None
    count = 0
    first = after
    while True:
        body, headers = api.get("/events?" + urllib.parse.urlencode({**query, "after": after}))
        last, end_of_log = int(headers["x-last-position"]), int(headers["x-log-position"])
        if progress is None:
            progress = Progress(max(end_of_log - first, 0), "export")
        out.write(body)
        count += body.count(b"\n")
        if last == after:
            break
        after = last
        progress.update(after - first)
    out.flush()
    progress.done()
    seconds = time.perf_counter() - started
    print(f"exported {count:,} events (log positions {first + 1}..{after}) in {seconds:.2f} s",
          file=sys.stderr)
    return 0


def _ndjson_batches(lines: Iterator[bytes], size: int) -> Iterator[tuple[list[str], list[bytes]]]:
    """(where each event is in the file, the events) per batch of non-empty lines."""
    where: list[str] = []
    batch: list[bytes] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where.append(f"line {number}")
        batch.append(line.rstrip(b"\r\n"))
        if len(batch) >= size:
            yield where, batch
            where, batch = [], []
    if batch:
        yield where, batch


def _array_batches(events: list, size: int) -> Iterator[tuple[list[str], list[bytes]]]:
    for first in range(0, len(events), size):
        chunk = events[first:first + size]
        yield ([f"event {first + i + 1} of the array" for i in range(len(chunk))],
               [json.dumps(event, ensure_ascii=False).encode() for event in chunk])


def _is_json_array(stream) -> bool:
    """Whether the file starts with `[` (after blanks and a byte order mark), without consuming it."""
    return stream.peek(1 << 16).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def _read_array(stream, path: str) -> list:
    try:
        events = json.loads(stream.read())
    except ValueError as exc:
        raise CliError(f"{path} starts with `[` but is not a JSON array: {exc}")
    if not isinstance(events, list):
        raise CliError(f"{path} starts with `[` but is not a JSON array")
    return events


def import_file(api: Api, path: str, batch_size: int) -> int:
    if batch_size < 1:
        raise CliError("--batch must be at least 1")
    if path == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}")
    appended = duplicates = done = 0
    started = time.perf_counter()
    with stream:
        if _is_json_array(stream):
            events = _read_array(stream, "stdin" if path == "-" else path)
            total, batches = len(events), _array_batches(events, batch_size)
        else:
            total = 0 if path == "-" else _count_lines(path)
            batches = _ndjson_batches(stream, batch_size)
        progress = Progress(total, "import")
        for where, batch in batches:
            result = _post_batch(api, batch, where)
            appended += result["appended"]
            duplicates += result["duplicates"]
            done += len(batch)
            progress.update(done)
    progress.done()
    seconds = time.perf_counter() - started
    print(f"imported {done:,} events in {seconds:.2f} s: {appended:,} new, {duplicates:,} "
          "already stored", file=sys.stderr)
    return 0


def _post_batch(api: Api, batch: list[bytes], where: list[str]) -> dict:
    body = b"\n".join(batch) + b"\n"
    backoff = Backoff(base=0.5, cap=10.0)
    for attempt in range(IMPORT_ATTEMPTS):
        try:
            status, reply, headers = api.call("POST", "/events", body, "application/x-ndjson")
        except CliError:
            if attempt == IMPORT_ATTEMPTS - 1:
                raise
            time.sleep(backoff.delay(attempt))
            continue
        if status == 201:
            return json.loads(reply)
        if status in (429, 503) or status >= 500:
            retry_after = headers.get("Retry-After")
            time.sleep(backoff.delay(attempt, float(retry_after) if retry_after else None))
            continue
        raise CliError(_rejection(status, reply, where))
    raise CliError(f"the service kept refusing the batch starting at {where[0]} "
                   f"({status}); events before it are stored, run the import again to resume")


def _rejection(status: int, reply: bytes, where: list[str]) -> str:
    """Name the file's events at fault: the service counts events within the batch."""
    try:
        error = json.loads(reply)
    except ValueError:
        return f"HTTP {status} for the batch starting at {where[0]}"
    problems = [f"  {_where(where, d.get('index'))}: {printable(d.get('path'))}: "
                f"{printable(d.get('message'))}" for d in error.get("details", [])[:20]]
    message = f"HTTP {status}: {printable(error.get('error'))}"
    return "\n".join([message, "nothing of this batch was stored (earlier batches were); "
                                "problems:", *problems]) if problems else message


def _where(where: list[str], index) -> str:
    return where[index] if isinstance(index, int) and 0 <= index < len(where) else "the batch"


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


# ---- tail -----------------------------------------------------------------------------------

def tail(api: Api, lines: int, as_json: bool, follow: bool = True) -> int:
    _, headers = api.get("/events?limit=1&after=" + str(2**62))
    end = int(headers["x-log-position"])
    after = max(end - max(lines, 0), 0)
    if after < end:
        after = _print_events(api, after, end - after, as_json)
    while follow:
        body, headers = api.get(f"/events?after={after}&limit=1000&wait={TAIL_WAIT_S}",
                                timeout=TAIL_WAIT_S + 30)
        _show(body, as_json)
        after = int(headers["x-last-position"])
    return 0


def _print_events(api: Api, after: int, count: int, as_json: bool) -> int:
    body, headers = api.get(f"/events?after={after}&limit={min(count, 10_000)}")
    _show(body, as_json)
    return int(headers["x-last-position"])


def _show(body: bytes, as_json: bool) -> None:
    out = sys.stdout
    for raw in body.splitlines():
        if as_json:
            out.write(printable_json(raw.decode()) + "\n")
        else:
            out.write(describe(json.loads(raw)) + "\n")
    out.flush()


def describe(event: dict) -> str:
    """One readable line per event, its time with its offset, every value from the event escaped
    (see `service.terminal`)."""
    return printable("  ".join(_parts(event)))


def _parts(event: dict) -> list[str]:
    kind = event["type"].removeprefix("LLM_REQUEST_")
    when = event["timestamp"]
    try:
        when = datetime.fromisoformat(when).isoformat(sep=" ", timespec="milliseconds")
    except ValueError:
        pass
    parts = [when, f"{kind:<9}", f"{event['session_id']}/{event['request_id']}",
             event["model"] or "-"]
    if kind == "COMPLETED":
        parts.append(f"{_number(event['duration_ms'])} ms")
        parts.append(f"{event['prompt_tokens']}+{event['completion_tokens']} tokens")
        if event.get("has_tool_calls"):
            parts.append("tools")
        if event.get("cost_usd") is not None:
            parts.append(f"${event['cost_usd']:.4f}")
    elif kind == "FAILED":
        parts.append(event["error_type"])
        if event.get("error_message"):
            parts.append(repr(event["error_message"][:80]))
    return parts
