"""The status page at ``/``: static HTML, CSS and JavaScript from the package (no build step, no CDN), and
the JSON it polls (``/api/page``, ``/api/trends``).

Read-only unless the gateway file sets ``http.token`` (or ``http.token_file``): then ``POST
/api/rigs/<rig>/test/<pause|resume>`` with ``Authorization: Bearer <token>`` pauses or resumes a test, like
``edge-daq test pause``. A request without the right token changes nothing; refusals are counted and logged
at most once per ``LOG_QUIET`` seconds, never with the token. Every response of the endpoint carries a
restrictive Content-Security-Policy (:func:`security_headers`): the page loads only its own files and talks
only to the daemon that served it.

The page polls rather than holding a stream open: a reload of the daemon (SIGHUP) keeps the endpoint, and
the next poll shows the new configuration; a restart is one failed poll, shown as "no connection".
"""

from __future__ import annotations

import hmac
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

if TYPE_CHECKING:
    from edge_daq.service.page_model import PageModel

log = structlog.get_logger("edge_daq.page")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
ACTIONS = ("pause", "resume")
LOG_QUIET = 60.0
MAX_NAME = 200

Control = Callable[[Mapping[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
"""Handles one control request as the control socket does (``ReliabilityEngine.handle``)."""


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The headers on every response, errors (404, 405) included."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        error.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def _read_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("edge_daq.service") / "static"
    return {route: ((folder / name).read_bytes(), kind) for route, (name, kind) in STATIC_FILES.items()}


class StatusPage:
    """The page's routes; ``token`` None: read-only."""

    def __init__(self, model: PageModel, *, control: Control, token: str | None) -> None:
        self.model = model
        self.control = control
        self._token = token.encode() if token else None
        self._files = _read_static()  # a few KiB, read once at start-up (not on every request)
        self.refused = 0
        self.actions = 0
        self._logged_at: float | None = None

    def add_routes(self, app: web.Application) -> None:
        for route in self._files:
            app.router.add_get(route, self._static)
        app.router.add_get("/api/page", self._page)
        app.router.add_get("/api/trends", self._trends)
        app.router.add_post("/api/rigs/{rig}/test/{action}", self._test_action)

    async def _static(self, request: web.Request) -> web.Response:
        body, kind = self._files[request.path]
        # Revalidated on every load: an upgraded daemon serves its new page at once.
        return web.Response(body=body, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    def _json(self, body: bytes) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store"})

    async def _page(self, request: web.Request) -> web.Response:
        return self._json(self.model.cached("page", request.query.get("rig")))

    async def _trends(self, request: web.Request) -> web.Response:
        return self._json(self.model.cached("trends", request.query.get("rig")))

    async def _test_action(self, request: web.Request) -> web.Response:
        if self._token is None:
            return self._refuse(403, "the status page is read-only: set http.token in the gateway file")
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(offered, self._token):
            return self._refuse(401, "a valid token is needed (Authorization: Bearer ...)")
        rig, action = request.match_info["rig"][:MAX_NAME], request.match_info["action"]
        if action not in ACTIONS:
            return self._refuse(404, f"unknown action {action[:MAX_NAME]!r}: pause or resume")
        answer = self.control({"rig": rig, "command": "test", "action": action})
        reply = await answer if inspect.isawaitable(answer) else answer
        if reply.get("ok"):
            self.actions += 1
            log.info("page_action", rig=rig, action=action)
        return web.json_response(reply, status=200 if reply.get("ok") else 409)

    def _refuse(self, status: int, error: str) -> web.Response:
        self.refused += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= LOG_QUIET:
            self._logged_at = now
            log.warning("page_action_refused", status=status, reason=error, refused=self.refused)
        return web.json_response({"ok": False, "error": error}, status=status)
