"""The daemon's HTTP endpoint: /healthz, /metrics (Prometheus) and /status (JSON for ``edge-daq status``).

It listens on ``http.listen`` of the gateway file, loopback by default: the numbers are not secret, but a
gateway sits on the lab network and nothing here needs to be reachable from it unless the site says so.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from edge_daq.service import split_listen
from edge_daq.service.metrics import PipelineView

OUTPUT_FAILING_LIMIT = 300.0
"""Seconds an output may fail before /healthz reports the daemon unhealthy: a short outage is buffered."""

Health = Callable[[], tuple[bool, str]]
"""Returns (healthy, reason)."""


class HealthCheck:
    """The daemon is healthy while the pipeline runs, an instrument is up (or none is configured, or none
    has been polled yet) and no output has been failing for longer than ``output_failing_limit``."""

    def __init__(
        self,
        view: PipelineView,
        *,
        running: Callable[[], bool],
        output_failing_limit: float = OUTPUT_FAILING_LIMIT,
    ) -> None:
        self.view = view
        self.running = running
        self.output_failing_limit = output_failing_limit

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
        return True, f"{up}/{len(instruments)} instruments up"


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
    ) -> None:
        self.listen = listen
        self.host, self._requested_port = split_listen(listen)
        self.registry = registry
        self.health = health
        self.status = status
        self.port = self._requested_port
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        # No access log: Prometheus scrapes every 15 s and journald would keep every line.
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            hint = " (another edge-daq running? change http.listen)" if error.errno == errno.EADDRINUSE else ""
            raise OSError(
                error.errno, f"cannot listen on {self.listen} for /healthz and /metrics: {error.strerror}{hint}"
            ) from error
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._runner.cleanup()

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
