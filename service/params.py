"""Query parameters: parsed once, rejected with a 400 that names the parameter."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from events import codec
from service.problems import ApiError

MAX_SQL_INT = 2**63 - 1


def int_param(request: web.Request, name: str, default: int | None, low: int,
              high: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    # Positions and offsets end up in SQL: past a 64-bit integer the driver raises (a 500).
    high = MAX_SQL_INT if high is None else high
    if value is None or value < low or value > high:
        bounds = f"from {low} to {high}"
        raise ApiError(400, f"query parameter {name!r} must be an integer {bounds}, got {raw!r}")
    return value


def time_param(name: str, raw: str | None) -> int | None:
    """An RFC 3339 time (`2026-11-27T10:00:00Z`), or a date (`2026-11-27`: UTC midnight), as
    microseconds since the epoch."""
    if raw is None or raw == "":
        return None
    if len(raw) == 10 and raw[4] == "-" and raw[7] == "-":
        raw += "T00:00:00+00:00"
    try:
        # A `+` in a query string arrives as a space when the client did not encode it.
        value = datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ApiError(400, f"query parameter {name!r} must be an RFC 3339 time with an offset "
                            f"(2026-11-27T10:00:00Z) or a date (2026-11-27), got {raw!r}")
    return codec.timestamp_to_us(value)


def choice_param(request: web.Request, name: str, choices, default: str | None) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ApiError(400, f"query parameter {name!r} must be one of "
                            f"{', '.join(choices)}, got {raw!r}")
    return raw


def bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false, got {raw!r}")


def str_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return None if raw is None or raw == "" else raw
