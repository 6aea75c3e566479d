"""Metrics read handlers: parse the question, pick the read models that answer it, encode.

Most questions are answered from the live read models in microseconds. A time window
(`from`/`to`), a point in the log (`as_of_position`/`as_of`) or a user-and-tag filter is
answered by folding the log into fresh read models (`projections.query.fold`), one such
question at a time, bounded by `LLM_METRICS_QUERY_MAX_EVENTS`.
"""

from __future__ import annotations

import time

from aiohttp import web

from projections import views
from projections.filters import EventFilter
from projections.query import QueryTooLarge, fold, position_at
from projections.replay import ReadModels
from projections.timeseries import BUCKETS, series, data_range
from service import keys
from service.errors import json_error
from service.handlers import json_response
from service.params import bool_param, choice_param, int_param, str_param, time_param
from service.problems import ApiError

# More points than this in one time series is a mistake (or a denial of service).
MAX_POINTS = 1500
DEFAULT_POINTS = 100


def cutoff_us(app: web.Application, models: ReadModels) -> int:
    """Requests started before this event time and still unfinished are stale."""
    stale_us = int(app[keys.CONFIG].stale_after * 1_000_000)
    return models.metrics.state.newest_event_us - stale_us


def _filter(request: web.Request, **fixed: str) -> EventFilter:
    fields = {name: str_param(request, name) for name in ("model", "user_id", "tag")}
    fields.update(fixed)
    from_us = time_param("from", request.query.get("from"))
    to_us = time_param("to", request.query.get("to"))
    if from_us is not None and to_us is not None and from_us >= to_us:
        raise ApiError(400, "query parameter 'from' must be before 'to'")
    return EventFilter(**fields, from_us=from_us, to_us=to_us)


async def _as_of(request: web.Request) -> int | None:
    position = int_param(request, "as_of_position", None, 0, None)
    recorded = time_param("as_of", request.query.get("as_of"))
    if position is not None and recorded is not None:
        raise ApiError(400, "give either 'as_of_position' or 'as_of', not both")
    if recorded is not None:
        return await position_at(request.app[keys.STORE], recorded)
    return position


async def _models_for(request: web.Request, where: EventFilter) -> tuple[ReadModels, bool]:
    """The read models that answer `where` (and any as-of), and whether they are already
    filtered (a folded answer) rather than the live, complete ones."""
    as_of = await _as_of(request)
    live = request.app[keys.MODELS]
    if as_of is None and where.in_memory:
        return live, False
    config = request.app[keys.CONFIG]
    folded_filter = None if where.in_memory else where
    async with request.app[keys.QUERY_LOCK]:
        try:
            models = await fold(request.app[keys.STORE], live.prices, until=as_of,
                                where=folded_filter, snapshot_path=config.snapshot_path,
                                max_events=config.query_max_events)
        except QueryTooLarge as exc:
            raise ApiError(400, f"{exc}; narrow the question (as_of_position, from/to)") from None
    return models, folded_filter is not None


async def get_global(request: web.Request) -> web.Response:
    """`GET /events/metrics[?model=&user_id=&tag=&from=&to=&as_of_position=&as_of=]`."""
    where = _filter(request)
    models, filtered = await _models_for(request, where)
    state = models.metrics.state
    return json_response(views.global_metrics(state, cutoff_us(request.app, models),
                                              models.prices, None if filtered else where))


async def get_session(request: web.Request) -> web.Response:
    """`GET /events/metrics/session/{session_id}[?model=&from=&to=&as_of_position=&as_of=]`."""
    session_id = request.match_info["session_id"]
    where = _filter(request, session_id=session_id)
    models, filtered = await _models_for(request, where)
    session = models.metrics.state.sessions.get(session_id)
    if session is None:
        return json_error(404, f"no events for session {session_id!r}"
                               f"{' in that window' if filtered else ''}")
    return json_response(views.session_metrics(models.metrics.state, session_id,
                                               cutoff_us(request.app, models), models.prices,
                                               None if filtered else where.model))


async def get_sessions(request: web.Request) -> web.Response:
    """`GET /events/metrics/sessions?limit=&cursor=&sort=&order=&model=&user_id=&has_failures=
    &since=`."""
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = int_param(request, "cursor", 0, 0, None)
    sort = choice_param(request, "sort", list(views.SORT_KEYS), "first_seen")
    order = choice_param(request, "order", ["asc", "desc"],
                         "asc" if sort == "first_seen" else "desc")
    where = views.SessionFilter(
        model=str_param(request, "model"),
        user_id=str_param(request, "user_id"),
        has_failures=bool_param(request, "has_failures"),
        since_us=time_param("since", request.query.get("since")),
    )
    models = request.app[keys.MODELS]
    return json_response(views.sessions_page(models.metrics.state, cursor, limit,
                                             cutoff_us(request.app, models), models.prices,
                                             sort, order == "desc", where))


async def get_models(request: web.Request) -> web.Response:
    """`GET /events/metrics/models[?from=&to=&as_of_position=&as_of=]`: every model."""
    models, _ = await _models_for(request, _filter(request))
    return json_response(views.ModelList([
        views.model_metrics(name, stats, models.prices)
        for name, stats in sorted(models.metrics.state.models.items())
    ]))


async def get_model(request: web.Request) -> web.Response:
    """`GET /events/metrics/models/{model}[?from=&to=&as_of_position=&as_of=]`."""
    name = request.match_info["model"]
    models, _ = await _models_for(request, _filter(request, model=name))
    stats = models.metrics.state.models.get(name)
    if stats is None:
        return json_error(404, f"no finished requests for model {name!r}")
    return json_response(views.model_metrics(name, stats, models.prices))


async def get_user(request: web.Request) -> web.Response:
    """`GET /events/metrics/users/{user_id}[?from=&to=&as_of_position=&as_of=]`."""
    user_id = request.match_info["user_id"]
    models, _ = await _models_for(request, _filter(request, user_id=user_id))
    by_model = models.metrics.state.users.get(user_id)
    if by_model is None:
        return json_error(404, f"no finished requests for user {user_id!r}")
    return json_response(views.user_metrics(user_id, by_model, models.prices))


async def get_timeseries(request: web.Request) -> web.Response:
    """`GET /events/metrics/timeseries?bucket=1m|5m|1h|1d&from=&to=[&model=][&session_id=]`."""
    bucket = choice_param(request, "bucket", list(BUCKETS), "1h")
    width = BUCKETS[bucket][0]
    from_us = time_param("from", request.query.get("from"))
    to_us = time_param("to", request.query.get("to"))
    model = str_param(request, "model")
    session_id = str_param(request, "session_id")
    models = request.app[keys.MODELS]
    if session_id is not None:
        async with request.app[keys.QUERY_LOCK]:
            try:
                models = await fold(request.app[keys.STORE], models.prices,
                                    where=EventFilter(session_id=session_id),
                                    max_events=request.app[keys.CONFIG].query_max_events)
            except QueryTooLarge as exc:
                raise ApiError(400, str(exc)) from None
    state = models.timeseries.state
    if to_us is None:
        known = data_range(state)
        to_us = known[1] if known else time.time_ns() // 1000
    if from_us is None:
        from_us = to_us - DEFAULT_POINTS * width
    if from_us >= to_us:
        raise ApiError(400, "query parameter 'from' must be before 'to'")
    points = -(-(to_us - (from_us - from_us % width)) // width)
    if points > MAX_POINTS:
        raise ApiError(400, f"{points} points of {bucket} between 'from' and 'to' is more than "
                            f"{MAX_POINTS}; use a larger 'bucket' or a shorter range")
    return json_response(series(state, models.prices, bucket, from_us, to_us, model))


def stream_render(app: web.Application):
    """What `GET /events/metrics/stream` pushes: the bodies of `GET /events/metrics` and of
    `GET /events/metrics/session/{id}` for the sessions an append touched."""
    def render(session_ids: list[str]) -> tuple[object, list[object]]:
        models = app[keys.MODELS]
        state = models.metrics.state
        cutoff = cutoff_us(app, models)
        return views.global_metrics(state, cutoff, models.prices), [
            views.session_metrics(state, sid, cutoff, models.prices)
            for sid in session_ids if sid in state.sessions]
    return render
