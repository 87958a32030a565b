"""``edge-daq run``: the daemon in the foreground, as systemd runs it.

Exit status 2 means the configuration was refused at start (the unit does not restart on it); 1 means the
daemon could not start its HTTP endpoint; 0 is a clean stop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from edge_daq.config.loader import LoadedConfig, load_config
from edge_daq.daemon import Daemon
from edge_daq.errors import ConfigError
from edge_daq.logs import configure_logging
from edge_daq.loop import install_event_loop_policy
from edge_daq.service.notify import Notifier


def run_daemon(config_path: Path, *, log_level: str | None = None, log_json: bool | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        print(f"edge-daq: not started: {len(error.issues)} configuration problem(s)", file=sys.stderr)
        return 2
    configure_logging(log_level or config.gateway.log.level, json=log_json)
    install_event_loop_policy()
    return asyncio.run(_serve(config))


async def _serve(config: LoadedConfig) -> int:
    from edge_daq.service.http import HealthCheck, HttpEndpoint
    from edge_daq.service.metrics import PipelineView, build_registry
    from edge_daq.service.notify import AcquisitionProgress, StatusLine, watchdog_loop

    log = structlog.get_logger("edge_daq")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    notifier = Notifier()

    def on_stop() -> None:
        notifier.stopping("draining")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop)
    reload_requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    daemon = Daemon(config)
    view = PipelineView(
        stats=daemon.stats,
        ring=daemon.ring,
        backlog=daemon.backlog,
        oldest_age=daemon.oldest_age,
        gateway=config.gateway.gateway,
    )
    status_line = StatusLine(daemon.stats, backlog=daemon.backlog)
    endpoint = HttpEndpoint(
        listen=config.gateway.http.listen,
        registry=build_registry(view),
        health=HealthCheck(view, running=daemon.running.is_set),
        status=view.snapshot,
    )
    with notifier:
        try:
            await endpoint.__aenter__()
        except OSError as error:
            log.error("http_listen_failed", error=str(error))
            return 1
        try:
            async with asyncio.TaskGroup() as group:
                run = group.create_task(daemon.run(stop), name="daemon")
                await daemon.running.wait()
                notifier.ready(status_line())
                watchdog = group.create_task(
                    watchdog_loop(notifier, AcquisitionProgress(lambda: daemon.schedulers), status=status_line),
                    name="watchdog",
                )
                reloads = group.create_task(
                    _reload_on_request(daemon, config.path, reload_requested, notifier, status_line), name="reloads"
                )
                report = await run
                watchdog.cancel()
                reloads.cancel()
        finally:
            await endpoint.__aexit__(None, None, None)
    if not report.complete:
        log.warning("records_not_delivered", undelivered=report.undelivered)
    return 0


async def _reload_on_request(
    daemon: Daemon,
    config_path: Path,
    requested: asyncio.Event,
    notifier: Notifier,
    status_line: Callable[[], str],
) -> None:
    """SIGHUP: re-read the gateway and rig files; an invalid set is refused and the running config kept."""
    log = structlog.get_logger("edge_daq")
    while True:
        await requested.wait()
        requested.clear()
        notifier.reloading("reloading configuration")
        try:
            # Parsing a large config takes a while: keep the event loop (and acquisition) turning meanwhile.
            new_config = await asyncio.to_thread(load_config, config_path)
        except ConfigError as error:
            log.error(
                "reload_rejected",
                problems=len(error.issues),
                issues=[str(issue) for issue in error.issues],
                keeping=daemon.config.hash[:12],
            )
            notifier.ready(f"reload rejected: {len(error.issues)} problem(s); {status_line()}")
            continue
        try:
            await daemon.reload(new_config)
        finally:
            notifier.ready(status_line())
