"""Configuration: every setting is an environment variable and a CLI flag of the same name.

The table `SETTINGS` is the single source: the CLI, `--help` and the README's configuration
table (checked by `tests/unit/test_docs.py`) all come from it.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from typing import Callable, NamedTuple

DEFAULT_SECRET = "secret"
# A key given as `sha256:<64 hex digits>` is the SHA-256 of the real key: the config holds no secret.
HASHED_KEY_PREFIX = "sha256:"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8001
    db: str = "data/events.db"
    tail_poll: float = 0.5
    secret: str = field(default=DEFAULT_SECRET, repr=False)
    facts: str = ""
    facts_memory: str = "128MB"
    alerts: str = ""
    max_body: int = 10 * 1024**2
    max_pending: int = 200_000
    access_log: bool = False
    prom_public: bool = False
    ingest_keys: tuple[str, ...] = field(default=(), repr=False)
    read_keys: tuple[str, ...] = field(default=(), repr=False)
    max_events: int = 100_000
    max_header_size: int = 8190
    max_headers: int = 100
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    rate_limit: float = 0.0
    rate_burst: int = 0
    db_max_size: int = 0
    prices: str = ""
    stale_after: float = 600.0
    query_timeout: float = 30.0
    top_models: int = 100
    retention: float = 0.0
    retention_sweep: float = 3600.0

    @property
    def facts_path(self) -> str:
        return self.facts or self._beside_log(".facts.duckdb")

    @property
    def answers_path(self) -> str:
        """The session answers kept on disk (`projections.answer_store`), beside the facts."""
        return self._beside_log(".answers.db") if not self.facts else f"{self.facts}.answers.db"

    @property
    def alerts_path(self) -> str:
        # Alerts run on the replica they were created on (README, "Alerts").
        return self.alerts or self._beside_log(".alerts.db")

    @property
    def saved_prices_path(self) -> str:
        """Where `PUT /prices` keeps the table it set (README, "Cost")."""
        return self._beside_log(".prices.json")

    def _beside_log(self, suffix: str) -> str:
        """A file of this process's own next to the log; with PostgreSQL, each replica keeps
        its own, told apart on one host by the port."""
        if self.uses_postgres:
            return f"data/replica-{self.port}{suffix}"
        return f"{self.db}{suffix}"

    @property
    def uses_postgres(self) -> bool:
        """Whether `db` is a PostgreSQL URL (a log shared by replicas) rather than a file."""
        return self.db.startswith(("postgresql://", "postgres://"))


class Setting(NamedTuple):
    field: str
    env: str
    parse: Callable[[str], object]
    help: str
    # Secret settings never have their value echoed in an error message.
    secret: bool = False

    @property
    def default(self) -> object:
        return getattr(Config(), self.field)


def _size(text: str) -> int:
    """`10485760`, `10MiB`, `512KiB`, `1GiB`."""
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * factor)
    return int(lowered)


def _flag(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


_HASHED_KEY = re.compile(re.escape(HASHED_KEY_PREFIX) + r"[0-9a-fA-F]{64}")


def _keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys, each plain or `sha256:<64 hex digits>`; errors never quote a key."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for number, key in enumerate(keys, 1):
        if key.lower().startswith(HASHED_KEY_PREFIX) and not _HASHED_KEY.fullmatch(key):
            raise ValueError(f"key {number} starts with {HASHED_KEY_PREFIX!r} but is not followed "
                             "by exactly 64 hex digits")
    return keys


def _secret(text: str) -> str:
    """The admin secret: one key, plain or `sha256:<64 hex digits>`."""
    keys = _keys(text)
    if len(keys) != 1 or keys[0] != text.strip():
        raise ValueError("expected exactly one key (no commas, not empty)")
    return keys[0]


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a number of seconds > 0")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """`90d`, `12h`, `30m`, `45s`, `2w` or plain seconds, as seconds; `0`/`forever`: none."""
    lowered = text.strip().lower()
    if lowered in ("", "0", "forever", "none", "off"):
        return 0.0
    match = _DURATION.fullmatch(lowered)
    if match is None or float(match[1]) <= 0:
        raise ValueError("expected a duration such as 90d, 12h, 30m or 45s (or 0/forever)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


SETTINGS = [
    Setting("host", "LLM_METRICS_HOST", str, "address to listen on"),
    Setting("port", "LLM_METRICS_PORT", int, "port to listen on"),
    Setting("db", "LLM_METRICS_DB", str, "SQLite file of the event log (its folder is created if missing), or a `postgresql://` URL of a log shared by several replicas"),
    Setting("tail_poll", "LLM_METRICS_TAIL_POLL", _seconds,
            "PostgreSQL only: seconds between reads of the shared log when no NOTIFY arrived "
            "(the fallback if a wake-up is lost)"),
    Setting("secret", "LLM_METRICS_SECRET", _secret,
            "admin key: the `x-internal-auth` value allowed on every route (plain, or "
            "`sha256:<hex>` of the key)", secret=True),
    Setting("facts", "LLM_METRICS_FACTS", str,
            "DuckDB file of the request facts, the read side (default: the DB path + "
            "`.facts.duckdb`); rebuilt from the log when missing or of another version"),
    Setting("facts_memory", "LLM_METRICS_FACTS_MEMORY", str,
            "most memory the facts engine (DuckDB) may use for its cache and queries, e.g. "
            "`128MB`, `1GB`; past it, it reads from and spills to disk"),
    Setting("alerts", "LLM_METRICS_ALERTS", str,
            "SQLite file of the alert rules, their states and the webhook outbox (default: the "
            "DB path + `.alerts.db`)"),
    Setting("max_body", "LLM_METRICS_MAX_BODY", _size,
            "largest accepted request body, in bytes (`10MiB` style suffixes work)"),
    Setting("max_pending", "LLM_METRICS_MAX_PENDING", int,
            "events waiting for the writer before ingest answers 503 (backpressure)"),
    Setting("access_log", "LLM_METRICS_ACCESS_LOG", _flag,
            "log every HTTP request (off by default: it costs about 10% of throughput)"),
    Setting("prom_public", "LLM_METRICS_PROM_PUBLIC", _flag,
            "serve GET /metrics (Prometheus) without the x-internal-auth header"),
    Setting("ingest_keys", "LLM_METRICS_INGEST_KEYS", _keys,
            "comma-separated keys that may only post events (each plain or `sha256:<hex>`)",
            secret=True),
    Setting("read_keys", "LLM_METRICS_READ_KEYS", _keys,
            "comma-separated keys that may only read (GET) (each plain or `sha256:<hex>`)",
            secret=True),
    Setting("max_events", "LLM_METRICS_MAX_EVENTS", int,
            "most events in one request (413 above it)"),
    Setting("max_header_size", "LLM_METRICS_MAX_HEADER_SIZE", _size,
            "longest request line or header field, in bytes (400 above it)"),
    Setting("max_headers", "LLM_METRICS_MAX_HEADERS", int, "most header fields in one request"),
    Setting("header_timeout", "LLM_METRICS_HEADER_TIMEOUT", _seconds,
            "seconds a connection may take to send a request's headers, and may stay idle "
            "between requests, before it is closed (slow-client protection)"),
    Setting("body_timeout", "LLM_METRICS_BODY_TIMEOUT", _seconds,
            "seconds a client may take to send a request body (408 after it)"),
    Setting("rate_limit", "LLM_METRICS_RATE_LIMIT", float,
            "requests per second allowed per key, 429 above it (0: no limit)"),
    Setting("rate_burst", "LLM_METRICS_RATE_BURST", int,
            "requests a key may send at once above the rate (0: one second's worth)"),
    Setting("db_max_size", "LLM_METRICS_DB_MAX_SIZE", _size,
            "cap on the SQLite file's size (0: none); ingest answers 503 when it is reached, "
            "as on a full disk"),
    Setting("prices", "LLM_METRICS_PRICES", str,
            "price table (JSON, USD per million tokens); default: the one shipped in "
            "projections/prices.json. A table set by PUT /prices wins over it (DELETE /prices "
            "goes back to it)"),
    Setting("stale_after", "LLM_METRICS_STALE_AFTER", _seconds,
            "seconds of event time after which a started, unfinished request counts as stale"),
    Setting("query_timeout", "LLM_METRICS_QUERY_TIMEOUT", _seconds,
            "seconds a metrics question may run before it is stopped (503); a question whose "
            "client went away stops at once"),
    Setting("top_models", "LLM_METRICS_TOP_MODELS", int,
            "GET /metrics: series for this many models (most requests first); the rest add up "
            "in one `model=\"other\"` series"),
    Setting("retention", "LLM_METRICS_RETENTION", _duration,
            "erase every request older than this, by event time (`90d`, `12h`, `30m`; "
            "`0` or `forever`: keep everything); see Data lifecycle"),
    Setting("retention_sweep", "LLM_METRICS_RETENTION_SWEEP", _seconds,
            "seconds between two retention sweeps (one also runs at startup)"),
]


# Every Config field has exactly one setting (checked at import, so a new field cannot be missed).
assert [f.name for f in fields(Config)] == [s.field for s in SETTINGS]


class ConfigError(ValueError):
    """A setting that cannot be parsed; the message names the variable."""


def from_env(environ: dict[str, str] | None = None, **overrides: object) -> Config:
    """The configuration from the environment, with explicit overrides on top."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for s in SETTINGS:
        if s.env in environ:
            try:
                values[s.field] = s.parse(environ[s.env])
            except ValueError as exc:
                shown = "(value not shown)" if s.secret else repr(environ[s.env])
                raise ConfigError(f"{s.env}={shown} is invalid: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One `--flag` per setting (or per setting named in `only`); unset flags fall back to the
    environment, then the default."""
    for s in SETTINGS:
        if only is not None and s.field not in only:
            continue
        flag = "--" + s.field.replace("_", "-")
        parser.add_argument(
            flag, dest=s.field, type=_quiet(s.parse) if s.secret else s.parse, default=None,
            # argparse %-formats help texts: a literal `%` ("10% of throughput") must be doubled.
            help=f"{s.help} [env {s.env}, default {s.default!r}]".replace("%", "%%"),
        )


def _quiet(parse: Callable[[str], object]) -> Callable[[str], object]:
    """`parse`, but argparse's error says why without echoing the secret value."""
    def parse_quietly(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"(value not shown) is invalid: {exc}") from None
    return parse_quietly


def from_args(args: argparse.Namespace) -> Config:
    return from_env(**{s.field: getattr(args, s.field, None) for s in SETTINGS})
