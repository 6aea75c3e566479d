"""Alert rules: what one is, how it is validated, and the question it asks the query layer.

A rule watches one measure over one window, for the service as a whole or per group (a
dimension of the query layer), and is satisfied where `value <op> threshold`. Nothing here knows
HTTP: invalid input raises `RuleError` naming the field.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Callable, Literal

import msgspec
from yarl import URL

from events import codec
from projections.query import DIMENSIONS, MAX_FILTER_VALUES, MEASURES

# Sums: a group with no request in the window has 0 of them; every other measure is undefined.
ADDITIVE_MEASURES = frozenset({
    "total_requests", "successful_requests", "failed_requests", "total_prompt_tokens",
    "total_completion_tokens", "total_tokens", "cached_prompt_tokens",
    "cache_write_prompt_tokens", "reasoning_tokens", "requests_with_tools", "total_duration_ms",
    "total_cost_usd", "prompt_cost_usd", "completion_cost_usd",
})

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda value, threshold: value > threshold,
    ">=": lambda value, threshold: value >= threshold,
    "<": lambda value, threshold: value < threshold,
    "<=": lambda value, threshold: value <= threshold,
}

_MINUTE_US = 60 * 1_000_000
ROLLING_WINDOWS_US = {
    "5m": 5 * _MINUTE_US, "15m": 15 * _MINUTE_US, "1h": 60 * _MINUTE_US,
    "6h": 360 * _MINUTE_US, "1d": 1440 * _MINUTE_US, "7d": 7 * 1440 * _MINUTE_US,
    "30d": 30 * 1440 * _MINUTE_US,
}
CALENDAR_WINDOWS = ("day", "month")
WINDOWS = (*ROLLING_WINDOWS_US, *CALENDAR_WINDOWS)
FORMATS = ("json", "slack")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
MAX_VALUE = 256


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One alert rule, as posted (the secret included; `public()` leaves it out)."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    measure: Literal[MEASURES]
    op: Literal[tuple(OPS)]
    threshold: float
    window: Literal[WINDOWS]
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048, pattern="^https?://[^/?#]",
                                             description="an http:// or https:// URL")]
    group_by: Literal[DIMENSIONS] | None = None
    where: dict[str, list[Annotated[str, msgspec.Meta(max_length=MAX_VALUE)]]] = {}
    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    format: Literal[FORMATS] = "json"

    def public(self) -> dict:
        """The rule as the API shows it: everything but the secret, and whether there is one."""
        shown = msgspec.structs.asdict(self)
        shown["has_secret"] = shown.pop("secret") is not None
        return shown


class RuleError(ValueError):
    """An invalid rule; `field` is the JSON path of the offending field (`$.threshold`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


_decode_rule = msgspec.json.Decoder(Rule).decode
CHOICES = {"measure": MEASURES, "op": tuple(OPS), "window": WINDOWS, "group_by": DIMENSIONS,
           "format": FORMATS}
_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")


def parse_rule(body: bytes) -> Rule:
    """A validated rule from a JSON body, or `RuleError` naming the first bad field."""
    try:
        rule = _decode_rule(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _MSGSPEC_PATH.search(text)
        field = match.group(1) if match else _unknown_field(text)
        if field.startswith("$.where["):
            field = _bad_filter(body) or field
        message = _MSGSPEC_PATH.sub("", text)
        if field[2:] in CHOICES and message.startswith("Invalid enum value"):
            message += f"; use one of {', '.join(CHOICES[field[2:]])}"
        raise RuleError(field, message) from None
    except msgspec.DecodeError as exc:
        raise RuleError("$", f"the body is not a JSON object: {exc}") from None
    check_rule(rule)
    return rule


def _unknown_field(text: str) -> str:
    # msgspec reports an unknown or missing field at the object, naming it in the message.
    match = re.search(r"(?:unknown|required) field `([^`]+)`", text)
    return f"$.{match.group(1)}" if match else "$"


def _bad_filter(body: bytes) -> str | None:
    # msgspec's path stops at `$.where[...]`: find which dimension's value is not a list.
    where = msgspec.json.decode(body).get("where")
    for dimension, values in where.items():
        if not isinstance(values, list) or not all(isinstance(v, str) and len(v) <= MAX_VALUE
                                                   for v in values):
            return f"$.where.{dimension}"
    return None


def check_rule(rule: Rule) -> None:
    """The checks msgspec's types cannot express; raises `RuleError`."""
    if not math.isfinite(rule.threshold):
        raise RuleError("$.threshold", "must be a finite number")
    for dimension, values in rule.where.items():
        if dimension not in DIMENSIONS:
            raise RuleError(f"$.where.{dimension}", f"is not a dimension: use one of "
                                                    f"{', '.join(DIMENSIONS)}")
        if not 1 <= len(values) <= MAX_FILTER_VALUES:
            raise RuleError(f"$.where.{dimension}",
                            f"must list 1 to {MAX_FILTER_VALUES} values (any of them matches)")
    url = _parse_url(rule.webhook_url)
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise RuleError("$.webhook_url", "must be an absolute http:// or https:// URL")


def _parse_url(text: str) -> URL | None:
    try:
        return URL(text)
    except (ValueError, TypeError):
        return None


def window_range(window: str, newest_us: int) -> tuple[int, int]:
    """`[from_us, to_us)` of `window` relative to the newest event time: a rolling window ends
    just after that event (so it counts), a calendar one is the UTC day or month holding it."""
    if window in ROLLING_WINDOWS_US:
        to_us = newest_us + 1
        return to_us - ROLLING_WINDOWS_US[window], to_us
    newest = codec.us_to_timestamp(newest_us)
    if window == "day":
        start = datetime(newest.year, newest.month, newest.day, tzinfo=timezone.utc)
        end = start + timedelta(days=1)
    elif window == "month":
        start = datetime(newest.year, newest.month, 1, tzinfo=timezone.utc)
        end = datetime(newest.year + newest.month // 12, newest.month % 12 + 1, 1,
                       tzinfo=timezone.utc)
    else:
        raise ValueError(f"unknown window {window!r}")
    return codec.timestamp_to_us(start), codec.timestamp_to_us(end)


def is_satisfied(rule: Rule, value: float | None) -> bool:
    """Whether a group with this value fires; an undefined value (no data) never does."""
    return value is not None and OPS[rule.op](value, rule.threshold)


def absent_value(rule: Rule) -> float | None:
    """The value of a group the answer does not list: 0 for sums, undefined otherwise."""
    return 0 if rule.measure in ADDITIVE_MEASURES else None
