"""Metrics read handlers: parse the question, ask the query layer once, encode.

Every rule (windows, as-of, staleness, limits) lives in `projections.query`; a `QueryError` it
raises becomes a 400 naming the parameter (`service.errors`).
"""

from __future__ import annotations

import csv
import io
import time

import msgspec
from aiohttp import web

from projections import query, session_answers
from projections.query import Question, Scope, SessionFilter
from service import keys
from service.errors import json_error
from service.handlers import json_response
from service.params import bool_param, choice_param, int_param, str_param, time_param
from service.problems import ApiError

FILTERS = ("model", "provider", "user_id", "session_id", "tag", "error_type", "finish_reason")


def _list(request: web.Request, name: str) -> tuple[str, ...]:
    """A parameter that may repeat and hold commas: `?a=x,y&a=z` -> ('x', 'y', 'z')."""
    return tuple(part for raw in request.query.getall(name, ()) for part in raw.split(",")
                 if part != "")


def _where(request: web.Request, **fixed: str) -> dict[str, tuple[str, ...]]:
    # Filter values are taken whole (a model name may hold a comma), each repeat one value.
    where = {name: tuple(v for v in request.query.getall(name, ()) if v != "")
             for name in FILTERS} if request.query_string else {}
    where = {name: values for name, values in where.items() if values}
    where.update({name: (value,) for name, value in fixed.items()})
    return where


async def _question(request: web.Request, **fixed: str) -> Question:
    """The slice every read accepts: filters, `from`/`to`, `as_of_position` or `as_of`."""
    if not request.query_string:  # most reads: ~7% of a session read's time went below
        return Question(where=_where(request, **fixed))
    position = int_param(request, "as_of_position", None, 0, None)
    recorded = time_param("as_of", request.query.get("as_of"))
    if position is not None and recorded is not None:
        raise ApiError(400, "give either 'as_of_position' or 'as_of', not both")
    if recorded is not None:
        position = await query.position_at(request.app[keys.STORE], recorded)
    return Question(
        where=_where(request, **fixed),
        from_us=time_param("from", request.query.get("from")),
        to_us=time_param("to", request.query.get("to")),
        as_of_position=position,
    )


async def _scope(request: web.Request, **fixed: str) -> Scope:
    config = request.app[keys.CONFIG]
    return Scope(question=await _question(request, **fixed),
                 stale_after_us=int(config.stale_after * 1_000_000), top_models=config.top_models)


def _timeout(request: web.Request) -> float:
    return request.app[keys.CONFIG].query_timeout


async def get_global(request: web.Request) -> web.Response:
    """`GET /events/metrics`: totals over every session, or the slice the filters pick."""
    facts = request.app[keys.MODELS]
    answers = await query.overview(facts, await _scope(request), timeout=_timeout(request))
    return json_response(query.global_metrics(answers[None]))


async def get_session(request: web.Request) -> web.Response:
    """`GET /events/metrics/session/{session_id}`."""
    session_id = request.match_info["session_id"]
    body = await session_answers.answer(request.app[keys.MODELS], session_id,
                                        await _scope(request), timeout=_timeout(request))
    if body is None:
        return json_error(404, f"no events for session {session_id!r} in that slice")
    return web.Response(body=body, content_type="application/json")


async def get_session_requests(request: web.Request) -> web.Response:
    """`GET /events/metrics/session/{session_id}/requests?limit=&cursor=`: newest first."""
    session_id = request.match_info["session_id"]
    page = await query.session_requests(
        request.app[keys.MODELS], session_id, int_param(request, "limit", 100, 1, 1000),
        request.query.get("cursor"), timeout=_timeout(request))
    if page is None:
        return json_error(404, f"no events for session {session_id!r}")
    return json_response(page)


async def get_sessions(request: web.Request) -> web.Response:
    """`GET /events/metrics/sessions?limit=&cursor=&sort=&order=&model=&user_id=&has_failures=
    &since=` (plus the slice parameters)."""
    sort = choice_param(request, "sort", query.SESSION_SORTS, "first_seen")
    order = choice_param(request, "order", ["asc", "desc"],
                         "asc" if sort == "first_seen" else "desc")
    where = SessionFilter(
        model=str_param(request, "model"),
        user_id=str_param(request, "user_id"),
        has_failures=bool_param(request, "has_failures"),
        since_us=time_param("since", request.query.get("since")),
    )
    scope = await _scope(request)
    # model and user_id pick sessions here, not requests: a session is shown whole.
    scope = msgspec.structs.replace(scope, question=Question(
        from_us=scope.question.from_us, to_us=scope.question.to_us,
        as_of_position=scope.question.as_of_position))
    page = await query.sessions_page(
        request.app[keys.MODELS], scope, where, sort, order == "desc",
        int_param(request, "limit", 100, 1, 1000), request.query.get("cursor"),
        timeout=_timeout(request))
    return json_response(page)


async def get_models(request: web.Request) -> web.Response:
    """`GET /events/metrics/models?limit=&cursor=`: the models of the slice, by name, a page at
    a time."""
    facts = request.app[keys.MODELS]
    scope = await _scope(request)
    page = await query.model_page(facts, scope, int_param(request, "limit", 100, 1, 1000),
                                  request.query.get("cursor"), timeout=_timeout(request))
    return json_response(page)


async def get_model(request: web.Request) -> web.Response:
    """`GET /events/metrics/models/{model}`."""
    name = request.match_info["model"]
    facts = request.app[keys.MODELS]
    answers = await query.overview(facts, await _scope(request), "model", [name],
                                   timeout=_timeout(request))
    if not answers.get(name, {}).get("total_requests"):
        return json_error(404, f"no finished requests for model {name!r}")
    return json_response(query.model_metrics(name, answers[name],
                                             name in await query.priced_models(facts)))


async def get_user(request: web.Request) -> web.Response:
    """`GET /events/metrics/users/{user_id}`."""
    user_id = request.match_info["user_id"]
    answers = await query.overview(request.app[keys.MODELS], await _scope(request), "user_id",
                                   [user_id], timeout=_timeout(request))
    if not answers.get(user_id, {}).get("total_requests"):
        return json_error(404, f"no finished requests for user {user_id!r}")
    return json_response(query.user_metrics(user_id, answers[user_id]))


def _listing(dimension: str):
    async def get_listing(request: web.Request) -> web.Response:
        base = await _question(request)
        q = Question(
            group_by=(dimension,), measures=query.LISTING_MEASURES, where=base.where,
            from_us=base.from_us, to_us=base.to_us, as_of_position=base.as_of_position,
            sort=choice_param(request, "sort", query.LISTING_MEASURES + (dimension,),
                              "total_requests"),
            order=choice_param(request, "order", ["asc", "desc"], "desc"),
            limit=int_param(request, "limit", 100, 1, query.MAX_LIMIT),
            cursor=request.query.get("cursor"))
        return _table(request, await query.ask(request.app[keys.MODELS], q,
                                               timeout=_timeout(request)))
    get_listing.__doc__ = f"`GET /events/metrics/{dimension.removesuffix('_id')}s`: each " \
                          f"{dimension} with its metrics, most requests first."
    return get_listing


get_users = _listing("user_id")
get_tags = _listing("tag")


async def get_query(request: web.Request) -> web.Response:
    """`GET /events/metrics/query?group_by=&measures=&...`: the metrics query API."""
    base = await _question(request)
    q = Question(
        group_by=_list(request, "group_by"),
        measures=_list(request, "measures") or ("total_requests",),
        where=base.where, from_us=base.from_us, to_us=base.to_us,
        as_of_position=base.as_of_position,
        bucket=str_param(request, "bucket"), sort=str_param(request, "sort"),
        order=request.query.get("order") or "desc",
        limit=int_param(request, "limit", 100, 1, query.MAX_LIMIT),
        cursor=request.query.get("cursor"))
    return _table(request, await query.ask(request.app[keys.MODELS], q,
                                           timeout=_timeout(request)))


def _table(request: web.Request, answer: query.views.QueryAnswer) -> web.Response:
    """JSON, or CSV when `format=csv` or `Accept: text/csv` asks for it (`next` in a header)."""
    wants_csv = (request.query.get("format") == "csv"
                 or "text/csv" in request.headers.get("accept", ""))
    if not wants_csv:
        return json_response(answer)
    out = io.StringIO()
    columns = list(answer.rows[0]) if answer.rows else []
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in answer.rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    headers = {"x-next-cursor": answer.next} if answer.next else None
    return web.Response(text=out.getvalue(), content_type="text/csv", headers=headers)


async def get_timeseries(request: web.Request) -> web.Response:
    """`GET /events/metrics/timeseries?bucket=1m|5m|1h|1d&from=&to=` (plus the slice)."""
    bucket = choice_param(request, "bucket", list(query.BUCKETS), "1h")
    facts = request.app[keys.MODELS]
    q = await _question(request)
    to_us, from_us = q.to_us, q.from_us
    if to_us is None:
        known = await query.data_range(facts)
        to_us = known[1] if known else time.time_ns() // 1000
    if from_us is None:
        from_us = to_us - DEFAULT_POINTS * query.BUCKETS[bucket]
    q = Question(where=q.where, from_us=from_us, to_us=to_us, as_of_position=q.as_of_position,
                 bucket=bucket)
    return json_response(await query.series(facts, q, timeout=_timeout(request)))


DEFAULT_POINTS = 100


def stream_render(app: web.Application):
    """What `GET /events/metrics/stream` pushes: the bodies of `GET /events/metrics` and of
    `GET /events/metrics/session/{id}` for the sessions an append touched."""
    async def render(session_ids: list[str]) -> tuple[object, list[object]]:
        facts = app[keys.MODELS]
        config = app[keys.CONFIG]
        scope = Scope(stale_after_us=int(config.stale_after * 1_000_000),
                      top_models=config.top_models)
        overall = await query.overview(facts, scope)
        sessions = await query.overview(facts, scope, "session_id", session_ids) \
            if session_ids else {}
        return query.global_metrics(overall[None]), [
            query.session_metrics(sid, sessions[sid]) for sid in session_ids if sid in sessions]
    return render
