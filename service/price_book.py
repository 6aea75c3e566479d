"""Which price table is in force, and how one set by `PUT /prices` outlives a restart.

At startup the table saved by the last `PUT /prices` wins; without one, the file
`LLM_METRICS_PRICES` names; without that, the shipped table. `DELETE /prices` forgets the saved
table and goes back to the configured one. The saved table is a file next to the log
(`<LLM_METRICS_DB>.prices.json`; with PostgreSQL, per replica like the snapshot:
`data/replica-<port>.prices.json`), written atomically.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Protocol

from projections.prices import PriceError, PriceTable, Problem, default_prices
from service.config import Config

log = logging.getLogger(__name__)


class PricedReadSide(Protocol):
    """What the read side offers for prices: the table it prices with, and a way to reprice
    all of history with another."""

    prices: PriceTable

    async def set_prices(self, prices: PriceTable) -> None: ...


class PriceBook:
    """The configured and the saved price table; one change at a time."""

    def __init__(self, saved: Path, configured: str = ""):
        self.saved = saved
        self.configured = configured
        self._lock = asyncio.Lock()

    @classmethod
    def for_config(cls, config: Config) -> "PriceBook":
        return cls(Path(config.saved_prices_path), config.prices)

    def load(self) -> PriceTable:
        """The table in force at startup: the saved one, else the configured one."""
        try:
            data = self.saved.read_bytes()
        except FileNotFoundError:
            return self.configured_table()
        except OSError as exc:
            raise _unreadable(f"the saved price table {self.saved}", exc) from None
        table = PriceTable.from_json(
            data, f"saved price table {self.saved} (set by PUT /prices; DELETE /prices or "
                  "remove the file to go back to LLM_METRICS_PRICES)")
        log.info("prices: the table saved by PUT /prices in %s (digest %s) wins over %s; "
                 "DELETE /prices goes back to it", self.saved, table.digest,
                 f"LLM_METRICS_PRICES={self.configured}" if self.configured else "the shipped table")
        return table

    def configured_table(self) -> PriceTable:
        """The table `LLM_METRICS_PRICES` names, or the shipped one."""
        if not self.configured:
            return default_prices()
        try:
            data = Path(self.configured).read_bytes()
        except OSError as exc:
            raise _unreadable(f"LLM_METRICS_PRICES={self.configured!r}", exc) from None
        return PriceTable.from_json(data, f"price table LLM_METRICS_PRICES={self.configured!r}")

    async def put(self, table: PriceTable, read_side: PricedReadSide) -> None:
        """Save `table` durably, then price everything with it."""
        async with self._lock:
            await asyncio.to_thread(_write_atomically, self.saved, table.to_json())
            await read_side.set_prices(table)

    async def reset(self, read_side: PricedReadSide) -> PriceTable:
        """Forget the saved table and price everything with the configured one again."""
        async with self._lock:
            # Read first: a configured file that cannot be used leaves the saved table in force.
            table = await asyncio.to_thread(self.configured_table)
            await asyncio.to_thread(_remove, self.saved)
            await read_side.set_prices(table)
            return table


def _unreadable(what: str, exc: OSError) -> PriceError:
    return PriceError([Problem("$", f"cannot be read: {exc.strerror or exc}")], what)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # The rename (or removal) itself is durable only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
