"""Alert routes: parse, call the alerts, encode. Rules are validated in `service.alerts.rules`."""

from __future__ import annotations

from aiohttp import web

from events.store import Issue
from service import keys
from service.alerts.rules import RuleError, parse_rule
from service.handlers import json_response
from service.params import int_param
from service.problems import ApiError


async def post_rule(request: web.Request) -> web.Response:
    """`POST /alerts/rules`: a new rule; 400 naming the field, 409 when the name is taken."""
    try:
        rule = parse_rule(await request.read())
    except RuleError as exc:
        raise ApiError(400, f"invalid alert rule: {exc.field}: {exc.message}",
                       [Issue(0, exc.field, exc.message)]) from None
    if not await request.app[keys.ALERTS].create_rule(rule):
        raise ApiError(409, f"an alert rule named {rule.name!r} exists: delete it first to "
                            "replace it", [Issue(0, "$.name", "already taken")])
    return json_response(await request.app[keys.ALERTS].rule(rule.name), 201)


async def get_rules(request: web.Request) -> web.Response:
    return json_response(await request.app[keys.ALERTS].rules())


async def get_rule(request: web.Request) -> web.Response:
    """`GET /alerts/rules/{name}`: the rule and the state of each group it has seen firing."""
    view = await request.app[keys.ALERTS].rule(request.match_info["name"])
    if view is None:
        raise ApiError(404, f"no alert rule named {request.match_info['name']!r}")
    return json_response(view)


async def delete_rule(request: web.Request) -> web.Response:
    if not await request.app[keys.ALERTS].delete_rule(request.match_info["name"]):
        raise ApiError(404, f"no alert rule named {request.match_info['name']!r}")
    return web.Response(status=204)


async def get_alerts(request: web.Request) -> web.Response:
    """`GET /alerts`: every group now firing, with its value and since when."""
    return json_response(await request.app[keys.ALERTS].firing())


async def get_deliveries(request: web.Request) -> web.Response:
    """`GET /alerts/deliveries?limit=`: the delivery log, newest first."""
    limit = int_param(request, "limit", 100, 1, 1000)
    return json_response(await request.app[keys.ALERTS].deliveries(limit))

