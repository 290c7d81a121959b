"""Web edges shared by every part: the middlewares every request passes (security headers, the one error
policy, CSRF, the input checks), error pages, templates, and the access and server logs."""
from __future__ import annotations

import gc
import json
import logging
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import aiohttp
import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from multidict import istr

from .appkeys import SETTINGS
from .errors import (BadRequest, CrossSiteRequest, DatabaseUnavailable, GatewayTimeout, NotFound, UpstreamError,
                     VisitgateError)
from .settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render_error(request: web.Request, status: int, reason: str, title: str, detail: str = "") -> web.Response:
    """A plain page that names what went wrong and its reason code, at the given status."""
    response = aiohttp_jinja2.render_template(
        "error.html", request, {"title": title, "reason": reason, "detail": detail}, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def loggable_path(request: web.BaseRequest) -> str:
    """The path as logs may hold it: the route's pattern (`/provider/{handle}`), never the handle in it.

    Provider pages carry their session's bearer handle in the path (the EHR's iframe has no cookies), so
    the raw path is a credential. A path no route matched keeps only its first segment.
    """
    match_info = _match_info(request)
    resource = getattr(getattr(match_info, "route", None), "resource", None)
    if resource is not None:
        return str(resource.canonical)
    first, _, rest = request.path.lstrip("/").partition("/")
    return f"/{first[:40]}" + ("/…" if rest else "")


def _match_info(request: web.BaseRequest) -> object | None:
    """The request's route match, or None for a request that never reached the application."""
    try:
        return getattr(request, "match_info", None)
    except AssertionError:
        # aiohttp's parser refused the request (bad request line, bad header): its stand-in request has no
        # match, and aiohttp asserts that it has one when asked.
        return None


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Route markers: attributes set on a route's handler by the decorators below and read from the matched
# route, so the policy for a route is written where the route's handler is.
_CSRF_EXEMPT = "_visitgate_csrf_exempt"
_SERVES_JSON = "_visitgate_serves_json"

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


def csrf_exempt(handler: HandlerT) -> HandlerT:
    """Let a route take state-changing requests from other sites (a webhook that proves itself otherwise)."""
    setattr(handler, _CSRF_EXEMPT, True)
    return handler


def serves_json(handler: HandlerT) -> HandlerT:
    """Mark a route whose callers read JSON: its errors are answered as JSON rather than as a page."""
    setattr(handler, _SERVES_JSON, True)
    return handler


def _route_marked(request: web.Request, marker: str) -> bool:
    match_info = getattr(request, "match_info", None)
    return bool(getattr(getattr(match_info, "handler", None), marker, False))


def wants_json(request: web.Request) -> bool:
    """Whether an error on this request is answered as JSON: a JSON route, a websocket's handshake, or a
    caller that asks for JSON and not for a page."""
    if _route_marked(request, _SERVES_JSON):
        return True
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: web.Request, status: int, reason: str, title: str, detail: str = "") -> web.Response:
    """The answer to a refused or failed request: JSON (`error`, `message`, `detail`) or a page, as the
    route serves."""
    if wants_json(request):
        response = web.json_response({"error": reason, "message": title, "detail": detail}, status=status)
        response.headers["Cache-Control"] = "no-store"
        return response
    return render_error(request, status, reason, title, detail)


class _AlreadyAnswered(web.StreamResponse):
    """What the error middleware returns when the response had already begun (an upgraded websocket, a
    streamed body): aiohttp then writes nothing more, and closes the connection."""

    def __init__(self) -> None:
        super().__init__(status=101)
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> None:
        """Nothing to send: the socket already carries another protocol or another body."""
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing to finish."""
        return None


def _response_begun(request: web.Request) -> bool:
    # The writer counts what reached the socket: after a websocket's handshake (or a streamed response's
    # headers) an HTTP error page would land inside the other protocol.
    return request.writer.output_size > 0


def _raised_in_asyncpg(exc: BaseException) -> bool:
    """Whether the exception was raised inside asyncpg (an OSError or timeout of the database's socket,
    rather than of an outbound HTTP call)."""
    return any(frame.f_globals.get("__name__", "").startswith("asyncpg.")
               for frame, _line in traceback.walk_tb(exc.__traceback__))


def _database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                        asyncpg.exceptions.InsufficientResourcesError, asyncpg.InterfaceError)):
        return True
    return isinstance(exc, (OSError, TimeoutError)) and _raised_in_asyncpg(exc)


def _error_answer(request: web.Request, exc: Exception) -> web.StreamResponse | None:
    """The answer to an exception a handler (or a check before it) raised, or None when it is to go on up
    as it is (an HTTP exception that is not an error, or one that is already JSON)."""
    if isinstance(exc, VisitgateError):
        error = exc
        if isinstance(exc, DatabaseUnavailable):
            log.warning("database unavailable on %s %s", request.method, loggable_path(request))
        else:
            log.info("refused %s %s: %s", request.method, loggable_path(request), exc.reason)
    elif isinstance(exc, web.HTTPException):
        if _response_begun(request):
            return _AlreadyAnswered()
        if exc.status < 400 or exc.content_type == "application/json":
            return None
        return error_response(request, exc.status, HTTP_REASONS.get(exc.status, f"http_{exc.status}"),
                              exc.reason)
    elif isinstance(exc, asyncpg.DataError):
        # A value the database will not store (a NUL, a number out of range) that got past the edge.
        log.warning("the database refused a value on %s %s (%s)", request.method, loggable_path(request),
                    type(exc).__name__)
        error = BadRequest(reason="invalid_input")
    elif _database_unavailable(exc):
        log.warning("database unavailable on %s %s (%s)", request.method, loggable_path(request),
                    type(exc).__name__)
        error = DatabaseUnavailable("Try again in a minute.")
    elif isinstance(exc, aiohttp.ClientError):
        log.warning("an outbound call failed on %s %s (%s)", request.method, loggable_path(request),
                    type(exc).__name__)
        error = UpstreamError(reason="upstream_unavailable")
    elif isinstance(exc, TimeoutError):
        log.warning("an outbound call timed out on %s %s", request.method, loggable_path(request))
        error = GatewayTimeout()
    else:
        log.exception("unexpected error on %s %s", request.method, loggable_path(request), exc_info=exc)
        error = VisitgateError()
    if _response_begun(request):
        return _AlreadyAnswered()
    return error_response(request, error.status, error.reason, error.title, error.detail)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become answers: our exception tree, aiohttp's HTTP errors, the database being
    away, outbound calls failing; anything else is logged and answered 500. JSON or a page by what the route
    serves, and nothing at all into a response that has already begun."""
    try:
        return await handler(request)
    except Exception as exc:
        answer = _error_answer(request, exc)
        if answer is None:
            raise
        return answer


# aiohttp's own HTTP errors (no route, wrong method, body too large, a folder of static files), by a
# reason that says so.
HTTP_REASONS = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a state-changing request that did not come from one of our own pages, on every route that
    did not opt out (`csrf_exempt`)."""
    _refuse_cross_site(request)
    return await handler(request)


def _refuse_cross_site(request: web.Request) -> None:
    """The CSRF check: raise CrossSiteRequest for a state-changing request from another site."""
    if request.method in STATE_CHANGING and getattr(request.match_info, "http_exception", None) is None \
            and not _route_marked(request, _CSRF_EXEMPT) and not from_our_pages(request):
        raise CrossSiteRequest("Go back to the page you came from, reload it and try again.")


# C0 controls but tab, newline and return, DEL, C1 controls, and lone surrogates (what the HTTP parser
# makes of bytes that are not UTF-8): no value of ours holds them, and PostgreSQL refuses NUL outright.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_NAME_MAX = 255  # bytes in one file name, as the file system allows
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _clean(*values: str) -> bool:
    return all(_clean_text(value) for value in values)


def _clean_text(value: str) -> bool:
    # Every character _FORBIDDEN names is unprintable, so a printable text (nearly every one) needs no search.
    return value.isprintable() or _FORBIDDEN.search(value) is None


@web.middleware
async def input_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check what a request carries before any handler reads it: headers, cookies, path, query and body.

    Whatever fails here is the sender's fault and gets a 4xx with a reason code, never a 500.
    """
    _check_input(request)
    if request.method in STATE_CHANGING and request.can_read_body:
        await _check_body(request)
    return await handler(request)


def _check_input(request: web.Request) -> None:
    """The input check of everything but the body: cookies, headers, path, the route's parts and query."""
    headers = request.headers
    if hdrs.COOKIE in headers and not _cookies_clean(request):
        raise BadRequest("A cookie could not be read. Clear this site's cookies.", reason="invalid_cookie")
    # All values in one look (the Cookie's among them, clean by now): a header that is not is then found by
    # name. Joined with a space, which is allowed, so the joined text is clean exactly when each value is.
    if not _clean_text(" ".join(headers.values())) \
            and not all(_clean(value) for name, value in headers.items() if name != "Cookie"):
        raise BadRequest("A header holds bytes that are not text.", reason="invalid_header")
    match_info = request.match_info
    if not _clean_text(" ".join((request.path, *match_info.values()))):
        raise BadRequest("The address holds characters it cannot hold.", reason="invalid_characters")
    route = getattr(match_info, "route", None)
    if isinstance(getattr(route, "resource", None), web.StaticResource):
        name = match_info.get("filename", "")
        if len(name.encode()) > 4 * _NAME_MAX or any(len(part.encode()) > _NAME_MAX for part in name.split("/")):
            raise NotFound()
    # No query string, no query to look at (the parsed query is only made when there is one).
    if request.rel_url.raw_query_string and not all(_clean(name, value) for name, value in request.query.items()):
        raise BadRequest("The address holds characters it cannot hold.", reason="invalid_characters")


def _cookies_clean(request: web.Request) -> bool:
    if not all(_clean(value) for value in request.headers.getall("Cookie", ())):
        return False
    try:
        cookies = request.cookies
    except Exception:  # the cookie parser's refusal is the sender's fault, whatever its kind
        return False
    # The parser undoes a quoted value's octal escapes (a NUL can hide there): look at what came out.
    return all(_clean(name, value) for name, value in cookies.items())


async def _check_body(request: web.Request) -> None:
    """Parse a form or JSON body once, here, so a handler only ever sees one that parsed and is clean."""
    content_type = request.content_type
    if content_type in _FORM_TYPES:
        try:
            form = await request.post()  # cached: the handler's own request.post() gets the same
        except web.HTTPException:
            raise  # too large (413): aiohttp says so itself
        except LookupError:
            raise BadRequest("The form's character set is unknown.", reason="unsupported_charset") from None
        except Exception:  # bad encoding, compression or multipart framing: the sender's, whatever the kind
            raise BadRequest("The form could not be read.", reason="malformed_body") from None
        for name, value in form.items():
            text = value if isinstance(value, str) else str(getattr(value, "filename", ""))
            if not _clean(name, text):
                raise BadRequest("The form holds characters it cannot hold.", reason="invalid_characters")
    elif content_type == "application/json" or content_type.endswith("+json"):
        try:
            raw = await request.read()
            text = raw.decode("utf-8")
            document = json.loads(text)
        except web.HTTPException:
            raise
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past what we parse
            raise BadRequest("The JSON body could not be read.", reason="malformed_json") from None
        except Exception:  # compression or transfer errors reading the body
            raise BadRequest("The body could not be read.", reason="malformed_body") from None
        # Without a backslash every string of the document stands in the text as it is, so one look at the text
        # says what the walk would (a webhook's bodies are mostly long base64 strings: ~25% of its time).
        if ("\\" in text or _holds_forbidden(raw, text)) and not _json_clean(document):
            raise BadRequest("The JSON body holds characters it cannot hold.", reason="invalid_characters")
        request[JSON_BODY] = document


# The ASCII characters a value may hold: tab, newline, return and the printable ones.
_CLEAN_ASCII = b"\t\n\r" + bytes(range(0x20, 0x7F))


def _holds_forbidden(raw: bytes, text: str) -> bool:
    """Whether a body's text (decoded from raw) holds a character _FORBIDDEN names."""
    if text.isascii():
        # What is left once every allowed byte is taken out (a C loop, several times the regex's speed).
        return bool(raw.translate(None, _CLEAN_ASCII))
    return _FORBIDDEN.search(text) is not None


JSON_BODY = web.RequestKey("visitgate_json_body", object)  # a JSON body as the input check parsed it


def json_body(request: web.Request) -> object:
    """The request's JSON body as the input check parsed it (parsed once per request), or MISSING."""
    return request.get(JSON_BODY, MISSING)


MISSING = object()  # no JSON body was parsed (not JSON, or no body)


def _json_clean(document: object) -> bool:
    """Whether every string (keys too) of a parsed JSON document is clean; iterative, so depth costs no stack."""
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not _clean(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


HSTS = "max-age=31536000; includeSubDomains"


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers every response carries: no referrers (URLs may hold handles), no sniffing, framing by EHRs
    only, and HSTS when we are served over https. Raised responses (redirects) carry them too."""
    edge_headers = security_headers(request.app[SETTINGS])
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(exc.headers, edge_headers)
        raise
    _secure(response.headers, edge_headers)
    return response


def security_headers(settings: Settings) -> tuple[tuple[istr, str], ...]:
    """The headers every response carries, as the settings make them (a response's own value of one wins)."""
    ancestors = " ".join(("'self'", *settings.frame_ancestors))
    headers = [(istr("Referrer-Policy"), "no-referrer"), (istr("X-Content-Type-Options"), "nosniff"),
               (istr("Content-Security-Policy"),
                f"default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                f"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                f"frame-ancestors {ancestors}")]
    if settings.public_url.startswith("https://"):
        headers.append((istr("Strict-Transport-Security"), HSTS))
    return tuple(headers)


def _secure(headers: MutableMapping[str, str], edge_headers: tuple[tuple[istr, str], ...]) -> None:
    for name, value in edge_headers:
        headers.setdefault(name, value)


def edge_middleware(settings: Settings) -> Middleware:
    """The whole edge in one middleware, for the gateway's settings: security headers, the error policy,
    the CSRF check and the input check, in that order from the outside in.

    The same as security_headers_middleware, error_middleware, csrf_middleware and input_middleware stacked
    in that order, and made of the same checks, but one layer: each middleware aiohttp stacks costs a call
    and a coroutine more on every request, and the headers are built once here rather than per request.
    """
    edge_headers = security_headers(settings)

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            try:
                _refuse_cross_site(request)
                _check_input(request)
                if request.method in STATE_CHANGING and request.can_read_body:
                    await _check_body(request)
                response = await handler(request)
            except Exception as exc:
                answer = _error_answer(request, exc)
                if answer is None:
                    raise
                response = answer
        except web.HTTPException as exc:
            _secure(exc.headers, edge_headers)
            raise
        _secure(response.headers, edge_headers)
        return response

    return edge


def add_templates(app: web.Application, package: str) -> None:
    """Let a part's templates/ folder be found by name, after the shell's."""
    env = aiohttp_jinja2.get_env(app)
    loader = env.loader
    assert isinstance(loader, jinja2.ChoiceLoader)
    loader.loaders = [*loader.loaders, jinja2.PackageLoader(package)]


ACCESS_LOG = logging.getLogger("visitgate.access")


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """What aiohttp's connection handler logs through: its own errors as they are, but a request its HTTP
    parser refused as one DEBUG line naming the kind of fault, with no traceback.

    aiohttp logs a refused request with its exception, whose text quotes the raw request line: the query
    string with a live launch state or join token, and one ERROR with a long traceback per stray request.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Pass a record on, or reduce a parser refusal to one line."""
        exc_info = kwargs.get("exc_info")
        if exc_info is True:
            exc_info = sys.exc_info()
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        refusal = _parser_refusal(exc if isinstance(exc, BaseException) else None)
        if refusal is not None:
            self.logger.debug("the HTTP parser refused a request (%s, %s)", type(refusal).__name__, refusal.code)
            return
        super().log(level, msg, *args, **kwargs)


def _parser_refusal(exc: BaseException | None) -> HttpProcessingError | None:
    """The parser's refusal behind an exception, if any: a body that cannot be decoded is found again when
    aiohttp drains it after our 400, as a payload error caused by the parser's."""
    for _ in range(8):  # a bounded walk down the chain of causes
        if exc is None or isinstance(exc, HttpProcessingError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def runner_options() -> dict[str, object]:
    """Keyword arguments for AppRunner/run_app: our access log, which never writes query strings, and the
    server log that keeps aiohttp's parser refusals to the access log's one line."""
    return {"access_log_class": AccessLogger, "access_log": ACCESS_LOG,
            "logger": ServerLog(logging.getLogger("aiohttp.server"), {})}


class AccessLogger(AbstractAccessLogger):
    """Logs method, route, status and time: never the query string (codes, states and tokens live there)
    nor a handle in the path."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write one access line (a request the HTTP parser refused is `- (malformed) 400`)."""
        if _match_info(request) is None:
            self.logger.info("- (malformed) %s %.1fms", response.status, time * 1000)
            return
        self.logger.info("%s %s %s %.1fms", request.method, loggable_path(request), response.status, time * 1000)

    @property
    def enabled(self) -> bool:
        """Only when someone listens."""
        return self.logger.isEnabledFor(logging.INFO)


async def freeze_startup_heap(_app: web.Application) -> None:
    """Put what start-up made out of the cycle collector's sight (on_startup of a served process)."""
    # A full collection walks every tracked object: ~20 ms here for the ~56k that imports, templates and the
    # app leave behind, and each one stalled live presence delivery for as long. They live as long as the
    # process, so the collector never needs to look at them again. Only for `visitgate serve`, not in the
    # app factory: a test process builds many apps, and frozen cycles are never freed.
    gc.collect()
    gc.freeze()


def from_our_pages(request: web.Request) -> bool:
    """Whether a state-changing request came from one of our own pages (the CSRF check).

    fetch() sends our Origin. Our pages send no referrer (Referrer-Policy: no-referrer), and browsers then
    send `Origin: null` with a form's POST, so a null (or absent) Origin defers to Sec-Fetch-Site, which
    pages cannot forge.
    """
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        return origin.lower() == request.app[SETTINGS].public_url.lower()
    return request.headers.get("Sec-Fetch-Site") == "same-origin"
