"""`DELETE /events/sessions/{session_id}`, `DELETE /events/users/{user_id}` (admin key):
parse, call `service.lifecycle`, encode."""

from __future__ import annotations

import msgspec
from aiohttp import web

from events.store import Issue
from service import keys
from service.handlers import json_response
from service.problems import ApiError

class Deleted(msgspec.Struct):
    """How many events an erasure removed from the log (0 for an unknown id)."""

    deleted_events: int


# Ingest refuses longer ids (events.schema.Id), so no stored request can have one.
_MAX_ID = 256


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not 1 <= len(value) <= _MAX_ID:
        raise ApiError(400, f"{name} must be 1..{_MAX_ID} characters, got {len(value)}",
                       [Issue(0, name, f"1..{_MAX_ID} characters")])
    return value


async def delete_session(request: web.Request) -> web.Response:
    """Erase every event of the session's requests for good; `{"deleted_events": n}`."""
    n = await request.app[keys.LIFECYCLE].erase_session(_id(request, "session_id"))
    return json_response(Deleted(n))


async def delete_user(request: web.Request) -> web.Response:
    """Erase every event of every request an event of which names the user."""
    n = await request.app[keys.LIFECYCLE].erase_user(_id(request, "user_id"))
    return json_response(Deleted(n))
