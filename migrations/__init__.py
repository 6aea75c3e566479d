"""Numbered SQL migrations, one folder per backend (`sqlite/`, `postgres/`).

A migration is `NNNN_name.sql`. Backends apply the pending ones in order at startup, each in
its own transaction, and record them in `schema_migrations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).parent


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def load(backend: str) -> list[Migration]:
    """The migrations of one backend, in version order."""
    found = []
    for path in sorted((HERE / backend).glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations are not numbered 1..n: {versions}")
    return found
