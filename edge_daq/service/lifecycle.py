"""The daemon's life as systemd sees it: start, signals, readiness, watchdog, reload and drain, in one place.

``edge-daq run`` (:mod:`edge_daq.cli.run`) parses its arguments and calls :func:`run_daemon`; everything after
that lives here:

- start: the configuration is loaded (refused: exit status 2, the unit does not restart on it), the daemon is
  built (cannot be: 2 as well), the HTTP endpoint binds (cannot: 1), then ``READY=1`` once acquisition runs;
- signals: SIGTERM and SIGINT send ``STOPPING=1`` and start the drain (:meth:`Daemon.run` stops polling and
  gives the outputs a bounded time); the run then ends with 0. SIGHUP asks for a reload;
- reload: ``RELOADING=1``, the files are read again off the event loop; an invalid set is refused
  (``reload_rejected``) and one that fails while switching over is ``reload_failed``; either way the running
  configuration is kept, the reload counters say what happened and ``READY=1`` comes back;
- watchdog: ``WATCHDOG=1`` while acquisition makes progress.

The HTTP endpoint, the watchdog and the reload handler run under the daemon's
:class:`~edge_daq.service.supervisor.Supervisor` like its other components: one failing is restarted.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from edge_daq.config.loader import LoadedConfig, internal_error, load_config
from edge_daq.daemon import Daemon
from edge_daq.errors import ConfigError
from edge_daq.logs import configure_logging
from edge_daq.loop import install_event_loop_policy
from edge_daq.service.notify import Notifier

if TYPE_CHECKING:
    from aiohttp import web

    from edge_daq.service.http import HttpEndpoint
    from edge_daq.service.page_model import PageFeed

EXIT_CLEAN, EXIT_CANNOT_LISTEN, EXIT_CONFIG_REFUSED = 0, 1, 2
LOGGED_ISSUES = 100
"""The most problems of a rejected reload written into its log line (``problems`` counts them all)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = structlog.get_logger("edge_daq")


def run_daemon(config_path: Path, *, log_level: str | None = None, log_json: bool | None = None) -> int:
    """Load, start, serve until a stop signal, drain: the exit status of ``edge-daq run``."""
    try:
        config = load_config(config_path)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        print(f"edge-daq: not started: {len(error.issues)} configuration problem(s)", file=sys.stderr)
        return EXIT_CONFIG_REFUSED
    configure_logging(log_level or config.gateway.log.level, json=log_json)
    install_event_loop_policy()
    return asyncio.run(serve(config))


class Signals:
    """SIGTERM/SIGINT set ``stop`` (after ``STOPPING=1``); SIGHUP sets ``reload``. Removed again on exit."""

    def __init__(self, notifier: Notifier) -> None:
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self._notifier = notifier
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_stop(self) -> None:
        if not self.stop.is_set():
            self._notifier.stopping("draining")
        self.stop.set()

    def __enter__(self) -> Signals:
        self._loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            self._loop.add_signal_handler(signum, self._on_stop)
        self._loop.add_signal_handler(signal.SIGHUP, self.reload.set)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)


async def serve(config: LoadedConfig) -> int:
    """Run the daemon built from ``config`` until a stop signal, then drain; the exit status."""
    from edge_daq.service.notify import AcquisitionProgress, StatusLine, watchdog_loop
    from edge_daq.service.supervisor import describe
    from edge_daq.writes.http import routes as http_write_routes

    notifier = Notifier()
    # Signals first: a SIGTERM during start-up is a stop, never the default (an exit without a drain).
    with Signals(notifier) as signals:
        try:
            daemon = Daemon(config)
        except Exception as error:  # a configuration the daemon cannot run at all: not restarted by systemd either
            log.error("daemon_not_started", error=describe(error))
            return EXIT_CONFIG_REFUSED
        supervise = daemon.supervisor.supervise
        token = await page_token(config)
        endpoint, feed = http_endpoint(
            daemon,
            listen=config.gateway.http.listen,
            token=token,
            post_routes=await http_write_routes(config.gateway.http.writes, daemon.writes),
        )
        status_line = StatusLine(daemon.stats, backlog=daemon.backlog)
        with notifier:
            try:
                await endpoint.__aenter__()
            except OSError as error:
                log.error("http_listen_failed", error=str(error))
                return EXIT_CANNOT_LISTEN
            try:
                async with asyncio.TaskGroup() as group:
                    http = group.create_task(supervise("http", endpoint.serve_forever, kind="http"), name="http")
                    page = group.create_task(supervise("status page", feed.run, kind="page"), name="status page")
                    run = group.create_task(daemon.run(signals.stop), name="daemon")
                    await daemon.running.wait()
                    notifier.ready(status_line())
                    progress = AcquisitionProgress(lambda: daemon.schedulers)
                    watchdog = group.create_task(
                        supervise(
                            "watchdog", lambda: watchdog_loop(notifier, progress, status=status_line), kind="watchdog"
                        ),
                        name="watchdog",
                    )
                    reloads = group.create_task(
                        supervise(
                            "reloads",
                            lambda: reload_on_request(daemon, config.path, signals.reload, notifier, status_line),
                            kind="reloads",
                        ),
                        name="reloads",
                    )
                    report = await run  # returns after the drain that a stop signal started
                    watchdog.cancel()
                    reloads.cancel()
                    http.cancel()
                    page.cancel()
            finally:
                await endpoint.__aexit__(None, None, None)
    if not report.complete:
        log.warning("records_not_delivered", undelivered=report.undelivered)
    return EXIT_CLEAN


async def page_token(config: LoadedConfig) -> str | None:
    """The status page's action token (``http.token`` or ``http.token_file``); unreadable: read-only, logged."""
    from edge_daq.errors import SinkError
    from edge_daq.sinks.secrets import read_secret

    http = config.gateway.http
    try:
        return await read_secret(http.token, http.token_file, what="http.token_file")
    except SinkError as error:
        log.error("page_token_unreadable", error=str(error), page="read-only")
        return None


def http_endpoint(
    daemon: Daemon,
    *,
    listen: str,
    token: str | None,
    post_routes: Mapping[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] | None = None,
) -> tuple[HttpEndpoint, PageFeed]:
    """The daemon's HTTP endpoint with its status page, and the page's feed (to run beside the daemon);
    ``post_routes``: ``POST /write`` when writing over HTTP is enabled."""
    from edge_daq.service.http import HealthCheck, HttpEndpoint
    from edge_daq.service.metrics import PipelineView, StressView, build_registry
    from edge_daq.service.page import StatusPage
    from edge_daq.service.page_model import PageFeed, PageModel

    view = PipelineView(
        stats=daemon.stats,
        ring=daemon.ring,
        backlog=daemon.backlog,
        oldest_age=daemon.oldest_age,
        gateway=daemon.config.gateway.gateway,
        components=daemon.supervisor.all_components,
        events_not_published=daemon.events_not_published,
        output_details=daemon.output_details,
        writes=daemon.writes_status,
        stress=lambda: [
            StressView(
                rig=name,
                expected=engine.running and not engine.paused and not engine.in_readout,
                holding=engine.stress_state.reason is None,
                stress_seconds=engine.stress_state.stress_s,
            )
            for name, engine in daemon.reliability.rigs.items()  # a reload replaces the engine: the current one
        ],
    )
    health = HealthCheck(view, running=daemon.running.is_set)
    feed = PageFeed(
        daemon.ring,
        configured=lambda: {(rig.rig, i.name) for rig in daemon.config.rigs for i in rig.instruments},
    )
    model = PageModel(
        view=view,
        feed=feed,
        health=health,
        config=lambda: daemon.config,
        rigs=lambda: daemon.reliability.rigs,  # a reload replaces the engine: always the current one
        control=token is not None,
    )
    page = StatusPage(model, control=lambda request: daemon.reliability.handle(request), token=token)
    endpoint = HttpEndpoint(
        listen=listen,
        registry=build_registry(view),
        health=health,
        status=view.snapshot,
        page=page,
        post_routes=post_routes,
    )
    view.http = endpoint.stats
    return endpoint, feed


async def reload_on_request(
    daemon: Daemon,
    config_path: Path,
    requested: asyncio.Event,
    notifier: Notifier,
    status_line: Callable[[], str],
) -> None:
    """SIGHUP: re-read the gateway and rig files; an invalid set is refused and the running config kept.

    No reload ends the daemon: a configuration that cannot be loaded, for whatever reason, is a rejected
    reload (``reload_rejected``, with every issue); a reload that fails while switching over is logged once
    as ``reload_failed`` with its reason, and the daemon goes on with what it runs.
    """
    while True:
        await requested.wait()
        requested.clear()
        notifier.reloading("reloading configuration")
        try:
            # Parsing a large config takes a while: keep the event loop (and acquisition) turning meanwhile.
            new_config = await asyncio.to_thread(load_config, config_path)
        except Exception as error:  # load_config raises only ConfigError; anything else is a bug, refused alike
            issues = error.issues if isinstance(error, ConfigError) else [internal_error(config_path, error)]
            daemon.stats.reloads.rejected += 1
            daemon.stats.reloads.last_error = str(issues[0]) if issues else "rejected"
            log.error(
                "reload_rejected",
                problems=len(issues),
                issues=[str(issue) for issue in issues[:LOGGED_ISSUES]],  # one log line stays readable
                keeping=daemon.config.hash[:12],
            )
            notifier.ready(f"reload rejected: {len(issues)} problem(s); {status_line()}")
            continue
        try:
            await daemon.reload(new_config)
        except Exception as error:
            daemon.stats.reloads.failed += 1
            daemon.stats.reloads.last_error = f"{type(error).__name__}: {error}"[:500]
            # The message only: a reload error names a part of the daemon, never a secret (outputs hold those
            # as SecretStr); the traceback would be a dozen non-JSON lines.
            log.error(
                "reload_failed",
                reason=f"{type(error).__name__}: {error}"[:500],
                running=daemon.config.hash[:12],
            )
            notifier.ready(f"reload failed: {type(error).__name__}; {status_line()}")
            continue
        daemon.stats.reloads.applied += 1
        notifier.ready(status_line())
