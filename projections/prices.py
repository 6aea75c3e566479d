"""The price table: USD per million tokens per model, matched by name, then by pattern.

Prices are kept as integer pico-dollars per token so that costs add up exactly, in any order
(1 USD per million tokens = 1,000,000 pico-dollars per token).
"""

from __future__ import annotations

import fnmatch
import hashlib
from decimal import Decimal
from importlib import resources
from typing import NamedTuple

import msgspec

PICO = 10**12


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    input: float
    output: float
    cached_input: float | None = None
    patterns: list[str] = []


class _File(msgspec.Struct):
    models: dict[str, _Entry]


class Price(NamedTuple):
    """Pico-dollars per token."""

    input: int
    output: int
    cached_input: int


def _pico_per_token(usd_per_million: float) -> int:
    return int((Decimal(str(usd_per_million)) * 10**6).to_integral_value())


class PriceError(ValueError):
    """A price table that cannot be used; the message says where."""


class PriceTable:
    """Look up the price of a model. Build with `PriceTable.from_json(data)`."""

    def __init__(self, exact: dict[str, Price], patterns: list[tuple[str, Price]], digest: str):
        self._exact = exact
        # Most specific first: the longest pattern is the most specific.
        self._patterns = sorted(patterns, key=lambda p: -len(p[0]))
        self._cache: dict[str, Price | None] = {}
        self.digest = digest

    @classmethod
    def from_json(cls, data: bytes) -> "PriceTable":
        try:
            parsed = msgspec.json.decode(data, type=_File)
        except msgspec.MsgspecError as exc:
            raise PriceError(f"invalid price table: {exc}") from None
        exact, patterns = {}, []
        for name, entry in parsed.models.items():
            for field in ("input", "output", "cached_input"):
                value = getattr(entry, field)
                if value is not None and value < 0:
                    raise PriceError(f"invalid price table: models.{name}.{field} is negative")
            cached = entry.input if entry.cached_input is None else entry.cached_input
            price = Price(_pico_per_token(entry.input), _pico_per_token(entry.output),
                          _pico_per_token(cached))
            exact[name] = price
            patterns.extend((pattern, price) for pattern in entry.patterns)
        return cls(exact, patterns, hashlib.blake2b(data, digest_size=8).hexdigest())

    def lookup(self, model: str) -> Price | None:
        """The price of `model`, or None when the table does not know it."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        price = self._exact.get(model)
        if price is None:
            for pattern, candidate in self._patterns:
                if fnmatch.fnmatchcase(model, pattern):
                    price = candidate
                    break
        self._cache[model] = price
        return price


def default_prices() -> PriceTable:
    """The table shipped in `projections/prices.json`."""
    return PriceTable.from_json(resources.files("projections").joinpath("prices.json").read_bytes())


def caller_cost_split(record, price: Price | None) -> tuple[int, int]:
    """A caller-given `cost_usd` in pico-dollars, split between prompt and completion in the
    proportion the table would have charged, or by token counts when it does not know the
    model."""
    prompt, completion, cached = record.prompt_tokens, record.completion_tokens, \
        record.cached_prompt_tokens
    total = round(record.cost_usd * PICO)
    if price is not None:
        share = (prompt - cached) * price.input + cached * price.cached_input
        whole = share + completion * price.output
    else:
        share = whole = 0
    if not whole:
        share, whole = prompt, prompt + completion
    prompt_part = total * share // whole if whole else 0
    return prompt_part, total - prompt_part
