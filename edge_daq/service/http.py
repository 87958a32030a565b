"""The daemon's HTTP endpoint: /healthz, /metrics (Prometheus), /status (JSON for ``edge-daq status``) and
the status page at / (:mod:`edge_daq.service.page`).

It listens on ``http.listen`` of the gateway file, loopback by default: the numbers are not secret, but a
gateway sits on the lab network and nothing here needs to be reachable from it unless the site says so.

Bounded, since a scanner or a broken client must not exhaust the daemon: a connection idle for
``IDLE_TIMEOUT`` (before its first request too) is closed; at most ``MAX_CONNECTIONS`` are open at once, and
a new one beyond that closes the oldest idle one (so /healthz is still answered during a flood of idle
connections) or, if every connection is busy, is refused with a 503. Request lines and headers are limited
in size by aiohttp (8 KiB each). aiohttp's error log goes through structlog: a malformed request is counted
and logged as one JSON line at most once per ``ERROR_LOG_QUIET`` seconds, never with a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from edge_daq.service import split_listen
from edge_daq.service.metrics import HttpStats, PipelineView
from edge_daq.service.page import StatusPage, security_headers

OUTPUT_FAILING_LIMIT = 300.0
"""Seconds an output may fail before /healthz reports the daemon unhealthy: a short outage is buffered."""
IDLE_TIMEOUT = 15.0
"""Seconds a connection may stay open without a request in progress (Prometheus scrapes every 15 s or more
often keep their connection alive; a slower client just reconnects)."""
MAX_CONNECTIONS = 256
ERROR_LOG_QUIET = 60.0
"""Seconds after a logged bad request during which further ones are only counted."""
_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_ERROR_CHARS = 200

log = structlog.get_logger("edge_daq.http")

COMPONENT_FAILING_LIMIT = 120.0
"""Seconds a supervised component may keep failing (restarted with backoff) before /healthz says unhealthy."""

Health = Callable[[], tuple[bool, str]]
"""Returns (healthy, reason)."""


class HealthCheck:
    """The daemon is healthy while the pipeline runs, an instrument is up (or none is configured, or none
    has been polled yet), no output has been failing for longer than ``output_failing_limit`` and no supervised
    component has kept failing for longer than ``component_failing_limit``. A component restarting within that
    time is named in the reason."""

    def __init__(
        self,
        view: PipelineView,
        *,
        running: Callable[[], bool],
        output_failing_limit: float = OUTPUT_FAILING_LIMIT,
        component_failing_limit: float = COMPONENT_FAILING_LIMIT,
    ) -> None:
        self.view = view
        self.running = running
        self.output_failing_limit = output_failing_limit
        self.component_failing_limit = component_failing_limit

    def __call__(self) -> tuple[bool, str]:
        if not self.running():
            return False, "the pipeline is not running"
        instruments = self.view.stats.instruments
        up = sum(1 for instrument in instruments if instrument.up)
        # Every instrument is polled as soon as its link starts: before that, "0 up" means "starting".
        if instruments and not up and any(instrument.polls for instrument in instruments):
            return False, f"no instrument is up (0/{len(instruments)})"
        for output in self.view.stats.outputs:
            failing_for = self.view.failing_for(output)
            if failing_for is not None and failing_for > self.output_failing_limit:
                return False, f"output {output.output} failing for {failing_for:.0f} s: {output.last_error}"
        reason = f"{up}/{len(instruments)} instruments up"
        for component in self.view.live_components():
            failing_for = self.view.component_failing_for(component)
            if failing_for is None:
                continue
            summary = f"{component.name} failing for {failing_for:.0f} s ({component.restarts} restarts): "
            if failing_for > self.component_failing_limit:
                return False, f"component {summary}{component.last_error}"
            reason += f"; restarting {summary}{component.last_error}"
        return True, reason


class _ErrorLog(logging.Handler):
    """aiohttp's server error log (a traceback per malformed request) as counted, rate-limited structlog lines:
    each kind at most once per ``quiet`` seconds, with how many went unlogged since."""

    def __init__(self, stats: HttpStats, quiet: float) -> None:
        super().__init__(logging.DEBUG)
        self.stats = stats
        self.quiet = quiet
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()[:_ERROR_CHARS]
        if record.exc_info is None:
            if record.levelno >= logging.WARNING:
                self._log("http_server_message", message=message)
            return
        error = record.exc_info[1]
        summary = " ".join(f"{type(error).__name__}: {error}".split())[:_ERROR_CHARS]  # aiohttp's span lines
        if isinstance(error, HttpProcessingError):  # what aiohttp raises for a request it cannot parse
            self.stats.bad_requests += 1
            self._log("http_bad_request", error=summary, bad_requests=self.stats.bad_requests)
        else:  # one of our handlers raised (a bug): the client got a 500
            self.stats.handler_errors += 1
            self._log("http_handler_failed", message=message, error=summary)

    def _log(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        logged_at = self._logged_at.get(event)
        if logged_at is not None and now - logged_at < self.quiet:
            self._unlogged[event] = self._unlogged.get(event, 0) + 1
            return
        self._logged_at[event] = now
        log.warning(event, **fields, unlogged_since_last=self._unlogged.pop(event, 0))


class HttpEndpoint:
    """``async with HttpEndpoint(listen=..., registry=..., health=..., status=...) as endpoint:`` serves
    until the block ends. ``listen`` is ``host:port`` as in the gateway file; port 0 picks a free port,
    then read :attr:`port`."""

    def __init__(
        self,
        *,
        listen: str,
        registry: CollectorRegistry,
        health: Health,
        status: Callable[[], Mapping[str, Any]],
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        error_log_quiet: float = ERROR_LOG_QUIET,
        page: StatusPage | None = None,
        post_routes: Mapping[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] | None = None,
    ) -> None:
        """``post_routes``: more endpoints, by path (``POST /write`` when writing over HTTP is enabled)."""
        self.listen = listen
        self.post_routes = dict(post_routes or {})
        self.host, self._requested_port = split_listen(listen)
        self.registry = registry
        self.health = health
        self.status = status
        self.page = page
        self.port = self._requested_port
        self.max_connections = max_connections
        self.stats = HttpStats(open_connections=self._open_connections)
        self.idle_timeout = idle_timeout
        self._busy: set[object] = set()  # the connections (aiohttp protocols) with a request in progress
        self._server: asyncio.Server | None = None
        self._error_log = logging.Logger("edge_daq.http.aiohttp")  # not registered: each endpoint counts its own
        self._error_log.addHandler(_ErrorLog(self.stats, error_log_quiet))
        self._error_log.propagate = False
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _make_runner(self) -> web.AppRunner:
        app = web.Application(middlewares=[self._track_busy, security_headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        if self.page is not None:
            self.page.add_routes(app)
        for path, handler in self.post_routes.items():
            app.router.add_post(path, handler)
        # No access log: Prometheus scrapes every 15 s and journald would keep every line.
        return web.AppRunner(app, access_log=None, logger=self._error_log, keepalive_timeout=self.idle_timeout)

    def _open_connections(self) -> int:
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def __aenter__(self) -> Self:
        self._runner = runner = self._make_runner()  # a new one each time: a restart starts from scratch
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            # Our own listener instead of a TCPSite: it decides, connection by connection, whether there is room.
            self._server = await loop.create_server(
                self._accept, self.host, self._requested_port, reuse_address=True, backlog=128
            )
        except OSError as error:
            self._runner = None
            await runner.cleanup()
            hint = " (another edge-daq running? change http.listen)" if error.errno == errno.EADDRINUSE else ""
            raise OSError(
                error.errno, f"cannot listen on {self.listen} for /healthz and /metrics: {error.strerror}{hint}"
            ) from error
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is not None:
            server.close()
        if runner is not None:
            await runner.cleanup()

    async def serve_forever(self) -> None:
        """Serve until cancelled (listening first unless already), then close; raises if the listener fails."""
        try:
            if self._server is None:
                await self.__aenter__()
            assert self._server is not None
            await self._server.serve_forever()
        finally:
            await self.__aexit__(None, None, None)

    def _accept(self) -> asyncio.BaseProtocol:
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return _Refuse()  # closing
        # Closed ones (no transport) stay listed until their task ends: they hold no socket any more. (A
        # connection accepted in the same burst as this one is not listed yet: the limit may be passed by
        # one burst, at most the listen backlog, for a moment.)
        connections = [handler for handler in server.connections if handler.transport is not None]
        if len(connections) >= self.max_connections:
            idle = next((handler for handler in connections if handler not in self._busy), None)
            if idle is None:
                self.stats.connections_refused += 1
                return _Refuse()
            idle.force_close()  # the oldest idle one: a flood of idle connections cannot lock /healthz out
            self.stats.connections_closed_idle += 1
        return server()

    @web.middleware
    async def _track_busy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol = request.protocol
        self._busy.add(protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(protocol)

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, reason = self.health()
        body = {"status": "ok" if healthy else "unhealthy", "reason": reason, "time": time.time()}
        return web.json_response(body, status=200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Prometheus asks for OpenMetrics when it can; curl gets the classic text format.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _status(self, request: web.Request) -> web.Response:
        healthy, reason = self.health()
        return web.json_response({**self.status(), "health": {"healthy": healthy, "reason": reason}})


class _Refuse(asyncio.Protocol):
    """A connection beyond the limit while every open one is busy: a 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSED)
        transport.close()
