"""Configuration: every setting is an environment variable and a CLI flag of the same name.

The table `SETTINGS` is the single source: the CLI, `--help` and the README's configuration
table (checked by `tests/unit/test_docs.py`) all come from it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

DEFAULT_SECRET = "secret"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8001
    db: str = "data/events.db"
    secret: str = DEFAULT_SECRET
    snapshot: str = ""
    snapshot_every: int = 100_000
    max_body: int = 10 * 1024**2
    max_pending: int = 200_000
    access_log: bool = False

    @property
    def snapshot_path(self) -> str:
        return self.snapshot or f"{self.db}.snapshot"


class Setting(NamedTuple):
    field: str
    env: str
    parse: Callable[[str], object]
    help: str

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


SETTINGS = [
    Setting("host", "LLM_METRICS_HOST", str, "address to listen on"),
    Setting("port", "LLM_METRICS_PORT", int, "port to listen on"),
    Setting("db", "LLM_METRICS_DB", str, "SQLite file of the event log (its folder is created if missing)"),
    Setting("secret", "LLM_METRICS_SECRET", str,
            "value of the `x-internal-auth` header every route but /health requires"),
    Setting("snapshot", "LLM_METRICS_SNAPSHOT", str, "snapshot file of the read models (default: the DB path + `.snapshot`)"),
    Setting("snapshot_every", "LLM_METRICS_SNAPSHOT_EVERY", int,
            "write a snapshot after this many new events (0: only at shutdown)"),
    Setting("max_body", "LLM_METRICS_MAX_BODY", _size,
            "largest accepted request body, in bytes (`10MiB` style suffixes work)"),
    Setting("max_pending", "LLM_METRICS_MAX_PENDING", int,
            "events waiting for the writer before ingest answers 503 (backpressure)"),
    Setting("access_log", "LLM_METRICS_ACCESS_LOG", _flag,
            "log every HTTP request (off by default: it costs about 10% of throughput)"),
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
                raise ConfigError(f"{s.env}={environ[s.env]!r} is invalid: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting; unset flags fall back to the environment, then the default."""
    for s in SETTINGS:
        flag = "--" + s.field.replace("_", "-")
        parser.add_argument(
            flag, dest=s.field, type=s.parse, default=None,
            help=f"{s.help} [env {s.env}, default {s.default!r}]",
        )


def from_args(args: argparse.Namespace) -> Config:
    return from_env(**{s.field: getattr(args, s.field, None) for s in SETTINGS})
