"""The price table: USD per million tokens per model, in dated periods, with long-context tiers.

A model is found by exact name, then by its longest matching glob pattern. Its prices are a
list of periods, oldest first; a request is priced by the last period whose `from` is at or
before its event time, and by the first period when it is older than all of them. Within a
period, a request whose `prompt_tokens` exceed `above.prompt_tokens` is priced, whole, at the
`above` prices. `cached_input` and `cache_write` default to `input` (in a tier: to the tier's
`input`).

The file format (flat entries are one period since always):

    {"models": {
      "claude-sonnet-4-5": {"patterns": ["claude-sonnet-4-5-*"], "prices": [
         {"from": "2025-09-29", "input": 3.0, "output": 15.0, "cached_input": 0.3,
          "cache_write": 3.75, "above": {"prompt_tokens": 200000, "input": 6.0, ...}}]},
      "my-finetune": {"input": 1.0, "output": 2.0}}}

Keys starting with `_` are comments and are ignored (model names excepted); a top-level `digest` (as `GET /prices`
serves the table) is ignored too, so a served table can be sent back as it is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from decimal import Decimal
from importlib import resources
from typing import Any, NamedTuple

import msgspec

from events.codec import timestamp_to_us, us_to_timestamp

PICO = 10**12
MAX_PRICE = 1_000_000.0  # USD per million tokens: far above any list price, far below overflow
MAX_NAME = 256
MAX_PROBLEMS = 100
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")


class PricePeriod(msgspec.Struct, frozen=True, kw_only=True):
    """One model's prices from `from_us` on, in USD per million tokens.

    `from_us` is None for the first period of a model: it also prices every request older than
    the next period's `from` (a period's end is the next one's `from_us`). When
    `above_prompt_tokens` is set, a request with more prompt tokens than that is priced whole at
    the `above_*` prices; a request with exactly that many is not.
    """

    from_us: int | None
    input: float
    output: float
    cached_input: float
    cache_write: float
    above_prompt_tokens: int | None = None
    above_input: float | None = None
    above_output: float | None = None
    above_cached_input: float | None = None
    above_cache_write: float | None = None


# The table as `GET /prices` serves it and as it is saved: every default filled in.
class Tier(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    input: float
    output: float
    cached_input: float
    cache_write: float


class Period(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"from_": "from"}):
    from_: str | None = None
    input: float
    output: float
    cached_input: float
    cache_write: float
    above: Tier | None = None


class ModelPrices(msgspec.Struct, kw_only=True):
    patterns: list[str]
    prices: list[Period]


class PricesDocument(msgspec.Struct, kw_only=True):
    """The price table in force (`GET /prices`); `digest` changes when any price does."""

    digest: str
    models: dict[str, ModelPrices]


class PriceSaved(msgspec.Struct):
    """The answer to `PUT /prices` and `DELETE /prices`: the table now in force."""

    digest: str
    models: int


class Problem(NamedTuple):
    path: str
    message: str


class PriceError(ValueError):
    """A price table that cannot be used. `problems` names each bad field by its JSON path
    (`$.models["x"].prices[0].above.input`), the first one also in the message."""

    def __init__(self, problems: list[Problem], source: str = "price table"):
        self.problems = problems[:MAX_PROBLEMS]
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid {source}: {first.path}: {first.message}{more}")


def pico_per_token(usd_per_million: float) -> int:
    """USD per million tokens as integer pico-dollars per token (exact to 1e-6 USD/M)."""
    return int((Decimal(str(usd_per_million)) * 10**6).to_integral_value())


class PriceTable:
    """Prices per model. Build with `PriceTable.from_json(data)`."""

    def __init__(self, models: dict[str, ModelPrices]):
        self._models = models
        self._periods = {name: [_period(p, i) for i, p in enumerate(entry.prices)]
                         for name, entry in models.items()}
        # Most specific first: the longest pattern is the most specific.
        self._patterns = sorted(((pattern, name) for name, entry in models.items()
                                 for pattern in entry.patterns), key=lambda p: -len(p[0]))
        self._names: dict[str, str | None] = {}
        canonical = msgspec.json.encode(models, order="sorted")
        self.digest = hashlib.blake2b(canonical, digest_size=8).hexdigest()

    @classmethod
    def from_json(cls, data: bytes, source: str = "price table") -> "PriceTable":
        """Parse and validate a table; raises `PriceError` naming every bad field."""
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise PriceError([Problem("$", f"not valid JSON: {exc}")], source) from None
        problems: list[Problem] = []
        models = _parse_file(raw, problems)
        if problems:
            raise PriceError(problems, source)
        return cls(models)

    def __len__(self) -> int:
        return len(self._models)

    def name_of(self, model: str) -> str | None:
        """The table entry that prices `model` (exact name, else longest pattern), or None."""
        try:
            return self._names[model]
        except KeyError:
            pass
        name = model if model in self._models else next(
            (entry for pattern, entry in self._patterns if fnmatch.fnmatchcase(model, pattern)),
            None)
        if len(self._names) > 100_000:  # model names come from events: keep the memo bounded
            self._names.clear()
        self._names[model] = name
        return name

    def periods(self, model: str) -> list[PricePeriod]:
        """`model`'s price periods, oldest first (empty when the table does not price it)."""
        name = self.name_of(model)
        return [] if name is None else self._periods[name]

    def document(self) -> PricesDocument:
        return PricesDocument(digest=self.digest, models=self._models)

    def to_json(self) -> bytes:
        """The table as `GET /prices` serves it: every default filled in, plus its digest.
        `from_json` reads it back to the same table (same digest)."""
        return msgspec.json.encode(self.document())


def _period(p: Period, index: int) -> PricePeriod:
    tier = p.above
    return PricePeriod(
        from_us=None if index == 0 else _parse_from(p.from_),
        input=p.input, output=p.output, cached_input=p.cached_input, cache_write=p.cache_write,
        above_prompt_tokens=None if tier is None else tier.prompt_tokens,
        above_input=None if tier is None else tier.input,
        above_output=None if tier is None else tier.output,
        above_cached_input=None if tier is None else tier.cached_input,
        above_cache_write=None if tier is None else tier.cache_write)


def default_prices() -> PriceTable:
    """The table shipped in `projections/prices.json`."""
    return PriceTable.from_json(resources.files("projections").joinpath("prices.json").read_bytes(),
                                "shipped price table")


# Validation: the decoded JSON is walked by hand so that every problem names its exact path.

def _parse_file(raw: Any, problems: list[Problem]) -> dict[str, ModelPrices]:
    if not isinstance(raw, dict):
        problems.append(Problem("$", "must be an object with `models`"))
        return {}
    _unknown_keys(raw, ("models", "digest"), "$", problems, "unknown field (expected `models`)")
    models = raw.get("models")
    if not isinstance(models, dict):
        problems.append(Problem("$.models", "required: an object of model name -> prices"))
        return {}
    parsed: dict[str, ModelPrices] = {}
    owner: dict[str, str] = {}
    for name, entry in models.items():
        path = f"$.models[{json.dumps(name, ensure_ascii=False)}]"
        if not 0 < len(name) <= MAX_NAME:
            problems.append(Problem(path, f"a model name has 1 to {MAX_NAME} characters"))
            continue
        model = _parse_model(entry, path, problems)
        if model is None:
            continue
        for i, pattern in enumerate(model.patterns):
            if pattern in owner and owner[pattern] != name:
                problems.append(Problem(f"{path}.patterns[{i}]",
                                        f"{pattern!r} is also a pattern of {owner[pattern]!r}"))
            owner.setdefault(pattern, name)
        parsed[name] = model
    return parsed


def _unknown_keys(raw: dict, allowed: tuple[str, ...], path: str, problems: list[Problem],
                  message: str = "unknown field") -> None:
    problems.extend(Problem(f"{path}.{key}", message) for key in raw
                    if key not in allowed and not key.startswith("_"))


def _parse_model(entry: Any, path: str, problems: list[Problem]) -> ModelPrices | None:
    if not isinstance(entry, dict):
        problems.append(Problem(path, "must be an object: {\"input\", \"output\"} or "
                                      "{\"prices\": [...]}"))
        return None
    before = len(problems)
    patterns = _parse_patterns(entry.get("patterns", []), f"{path}.patterns", problems)
    if "prices" in entry:
        _unknown_keys(entry, ("patterns", "prices"), path, problems,
                      "unknown field here (with `prices`, prices go in its periods)")
        periods = _parse_periods(entry["prices"], f"{path}.prices", problems)
    else:
        flat = {k: v for k, v in entry.items() if k != "patterns"}
        if "from" in flat:
            problems.append(Problem(f"{path}.from", "`from` belongs in a period of `prices`"))
            flat.pop("from")
        period = _parse_period(flat, path, problems, first=True)
        periods = [] if period is None else [period]
    if len(problems) > before:
        return None
    return ModelPrices(patterns=patterns, prices=periods)


def _parse_patterns(raw: Any, path: str, problems: list[Problem]) -> list[str]:
    if not isinstance(raw, list):
        problems.append(Problem(path, "must be a list of glob patterns"))
        return []
    for i, pattern in enumerate(raw):
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_NAME:
            problems.append(Problem(f"{path}[{i}]", f"a pattern is a string of 1 to {MAX_NAME} "
                                                    "characters"))
    return [p for p in raw if isinstance(p, str)]


def _parse_periods(raw: Any, path: str, problems: list[Problem]) -> list[Period]:
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(path, "must be a non-empty list of periods, oldest first"))
        return []
    periods: list[Period] = []
    previous_us: int | None = None
    for i, item in enumerate(raw):
        here = f"{path}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(here, "a period is an object with `input` and `output`"))
            continue
        period = _parse_period(item, here, problems, first=i == 0)
        if period is None:
            continue
        if period.from_ is not None:
            from_us = _parse_from(period.from_)
            if previous_us is not None and from_us <= previous_us:
                problems.append(Problem(f"{here}.from", f"must be later than {path}[{i - 1}].from "
                                                        "(periods are listed oldest first)"))
            previous_us = from_us
        periods.append(period)
    return periods


def _parse_period(raw: dict, path: str, problems: list[Problem], first: bool) -> Period | None:
    before = len(problems)
    _unknown_keys(raw, _PRICE_FIELDS + ("from", "above"), path, problems)
    prices = _parse_prices(raw, path, problems)
    from_text = None
    if "from" in raw:
        from_text = _normalise_from(raw["from"], f"{path}.from", problems)
    elif not first:
        problems.append(Problem(f"{path}.from", "required in every period but the first"))
    tier = None
    if "above" in raw:
        tier = _parse_tier(raw["above"], f"{path}.above", problems)
    if len(problems) > before or prices is None:
        return None
    return Period(**prices, from_=from_text, above=tier)


def _parse_tier(raw: Any, path: str, problems: list[Problem]) -> Tier | None:
    if not isinstance(raw, dict):
        problems.append(Problem(path, "must be an object with `prompt_tokens`, `input` and "
                                      "`output`"))
        return None
    before = len(problems)
    _unknown_keys(raw, _PRICE_FIELDS + ("prompt_tokens",), path, problems)
    threshold = raw.get("prompt_tokens")
    if "prompt_tokens" not in raw:
        problems.append(Problem(f"{path}.prompt_tokens", "required: the prompt size above which "
                                                         "these prices apply"))
    elif type(threshold) is not int or threshold < 0:
        problems.append(Problem(f"{path}.prompt_tokens", "must be an integer >= 0"))
    prices = _parse_prices(raw, path, problems)
    if len(problems) > before or prices is None:
        return None
    return Tier(prompt_tokens=threshold, **prices)


def _parse_prices(raw: dict, path: str, problems: list[Problem]) -> dict[str, float] | None:
    """input and output (required), cached_input and cache_write (default: input)."""
    values: dict[str, float] = {}
    for field in _PRICE_FIELDS:
        if field not in raw:
            if field in ("input", "output"):
                problems.append(Problem(f"{path}.{field}", "required (USD per million tokens)"))
            continue
        value = raw[field]
        if (type(value) not in (int, float) or not math.isfinite(value)
                or not 0 <= value <= MAX_PRICE):
            problems.append(Problem(f"{path}.{field}", "must be a number of USD per million "
                                                        f"tokens, from 0 to {MAX_PRICE:.0f}"))
            continue
        values[field] = float(value)
    if "input" not in values or "output" not in values:
        return None
    values.setdefault("cached_input", values["input"])
    values.setdefault("cache_write", values["input"])
    return values


def _normalise_from(raw: Any, path: str, problems: list[Problem]) -> str | None:
    """A date (UTC midnight) or an RFC 3339 time with offset, written back in one form."""
    if isinstance(raw, str):
        if _DATE.fullmatch(raw):
            try:
                datetime.strptime(raw, "%Y-%m-%d")
                return raw
            except ValueError:
                pass
        elif len(raw) > 10 and raw[10] in "Tt ":
            try:
                when = datetime.fromisoformat(raw)
            except ValueError:
                when = None
            if when is not None and when.tzinfo is not None:
                return _format_us(timestamp_to_us(when))
    problems.append(Problem(path, "must be a date (2025-09-29) or an RFC 3339 time with an "
                                  "offset (2025-09-29T17:00:00Z)"))
    return None


def _parse_from(text: str) -> int:
    if len(text) == 10:
        text += "T00:00:00+00:00"
    return timestamp_to_us(datetime.fromisoformat(text))


def _format_us(us: int) -> str:
    when = us_to_timestamp(us).astimezone(timezone.utc)
    if when.hour == when.minute == when.second == when.microsecond == 0:
        return when.strftime("%Y-%m-%d")
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"
