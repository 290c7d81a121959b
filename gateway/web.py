"""Web edges shared by every part: error pages, security headers, templates, the access log."""
from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .appkeys import SETTINGS
from .errors import VisitgateError

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
    match_info = getattr(request, "match_info", None)
    resource = getattr(getattr(match_info, "route", None), "resource", None)
    if resource is not None:
        return str(resource.canonical)
    first, _, rest = request.path.lstrip("/").partition("/")
    return f"/{first[:40]}" + ("/…" if rest else "")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate our exception tree into pages; anything unexpected is logged and shown as a 500 page."""
    try:
        return await handler(request)
    except VisitgateError as exc:
        log.info("refused %s %s: %s", request.method, loggable_path(request), exc.reason)
        return render_error(request, exc.status, exc.reason, exc.title, exc.detail)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return render_error(request, exc.status, f"http_{exc.status}", exc.reason)
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, loggable_path(request))
        return render_error(request, 500, "internal_error", "Something went wrong")


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers every response carries: no referrers (URLs may hold handles), no sniffing, framing by EHRs only."""
    response = await handler(request)
    ancestors = " ".join(("'self'", *request.app[SETTINGS].frame_ancestors))
    headers = response.headers
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Content-Security-Policy",
                       f"default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                       f"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                       f"frame-ancestors {ancestors}")
    return response


def add_templates(app: web.Application, package: str) -> None:
    """Let a part's templates/ folder be found by name, after the shell's."""
    env = aiohttp_jinja2.get_env(app)
    loader = env.loader
    assert isinstance(loader, jinja2.ChoiceLoader)
    loader.loaders = [*loader.loaders, jinja2.PackageLoader(package)]


ACCESS_LOG = logging.getLogger("visitgate.access")


def runner_options() -> dict[str, object]:
    """Keyword arguments for AppRunner/run_app: our access log, which never writes query strings."""
    return {"access_log_class": AccessLogger, "access_log": ACCESS_LOG}


class AccessLogger(AbstractAccessLogger):
    """Logs method, route, status and time: never the query string (codes, states and tokens live there)
    nor a handle in the path."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write one access line."""
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
