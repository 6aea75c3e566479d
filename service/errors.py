"""Every error leaves the service as JSON: `{"error": "...", "details": [...]}`."""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import (BadHttpMethod, BadStatusLine, HttpProcessingError,
                                     LineTooLong)
from aiohttp.web_protocol import RequestHandler

from events.store import Issue, StoreError, StoreUnavailable
from projections.engine import EngineError, FactsDamaged, QueryTimeout
from projections.query import QueryError
from service.problems import ApiError
from service.writer import Overloaded

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    details: list[Issue] = []


_encode = msgspec.json.Encoder().encode


def json_error(
    status: int, message: str, details: list[Issue] | None = None, headers: dict | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encode(ErrorBody(message, details or [])),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Translate exceptions into JSON responses; the service stays up whatever a handler raises."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message, exc.details)
    except QueryError as exc:
        return json_error(400, f"query parameter {exc.param!r}: {exc}",
                          [Issue(0, exc.param, str(exc))])
    except QueryTimeout as exc:
        return json_error(503, f"{exc} (LLM_METRICS_QUERY_TIMEOUT); narrow the question",
                          headers={"Retry-After": RETRY_AFTER_S})
    except FactsDamaged as exc:
        log.error("%s", exc)
        return json_error(503, "the request facts are damaged; restart the service to rebuild "
                               "them from the log (nothing in the log is lost)",
                          headers={"Retry-After": RETRY_AFTER_S})
    except EngineError as exc:
        log.error("facts engine error on %s %s: %s", request.method, request.path, exc)
        return json_error(500, "internal error in the read side (logged on the server)")
    except (StoreUnavailable, Overloaded) as exc:
        return json_error(503, f"cannot take events now: {exc}", headers={"Retry-After": RETRY_AFTER_S})
    except StoreError as exc:
        log.error("store error on %s %s: %s", request.method, request.path, exc)
        return json_error(500, str(exc))
    except web.RequestPayloadError as exc:
        # A body the HTTP layer could not read: `content-encoding: gzip` that is not gzip...
        cause = getattr(exc.__cause__, "message", None) or str(exc)
        return json_error(400, f"unreadable request body: {cause}")
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "request body is larger than the limit of "
                               f"{request.client_max_size} bytes (LLM_METRICS_MAX_BODY)")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such route: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, message, headers=allow)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error (logged on the server)")


# What the HTTP parser's refusals mean, in words that quote nothing of the request. aiohttp's
# own messages quote the offending line: an `x-internal-auth` header with a control character
# or over the size limit put the key in the log (with a traceback, at ERROR) and in the answer.
_PARSER_MESSAGES = {
    LineTooLong: "the request line or a header field is longer than LLM_METRICS_MAX_HEADER_SIZE",
    BadStatusLine: "the request line is not an HTTP request line",
}
# aiohttp messages that are fixed strings, so they quote nothing.
_FIXED_PARSER_MESSAGES = frozenset({"Too many headers received",
                                    "Missing 'Host' header in request."})
_aiohttp_handle_error = RequestHandler.handle_error


def _handle_parser_error(self, request, status=500, exc=None, message=None):
    if not isinstance(exc, HttpProcessingError):
        return _aiohttp_handle_error(self, request, status, exc, message)
    text = next((m for kind, m in _PARSER_MESSAGES.items() if isinstance(exc, kind)), None)
    if text is None:
        text = (exc.message if exc.message in _FIXED_PARSER_MESSAGES
                else "a header is malformed or holds a character HTTP forbids")
    # Not HTTP at all (TLS or a scanner on the port) is noise, as aiohttp itself judges it.
    level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
    log.log(level, "refused an unreadable HTTP request from %s (%s): %s", request.remote,
            type(exc).__name__, text)
    response = json_error(status, f"malformed HTTP request: {text} (not echoed)")
    response.force_close()
    return response


def quiet_parser_errors() -> None:
    """Answer and log the requests the HTTP parser refuses without quoting their bytes.

    aiohttp has no hook for parser errors (aio-libs/aiohttp#3287: they bypass middlewares),
    so this replaces `RequestHandler.handle_error` for them; every other error goes to
    aiohttp's own. Called by `serve`; tests/e2e/test_security.py reads the real process's log.
    """
    RequestHandler.handle_error = _handle_parser_error
