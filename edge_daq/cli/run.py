"""``edge-daq run``: the daemon in the foreground, as systemd runs it.

Exit status 2 means the configuration was refused at start (the unit does not restart on it); 1 means the
daemon could not start its HTTP endpoint; 0 is a clean stop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import structlog

from edge_daq.config.loader import LoadedConfig, load_config
from edge_daq.errors import ConfigError
from edge_daq.logs import configure_logging


def run_daemon(config_path: Path, *, log_level: str | None = None, log_json: bool | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        print(f"edge-daq: not started: {len(error.issues)} configuration problem(s)", file=sys.stderr)
        return 2
    configure_logging(log_level or config.gateway.log.level, json=log_json)
    return asyncio.run(_serve(config))


async def _serve(config: LoadedConfig) -> int:
    from edge_daq.daemon import Daemon
    from edge_daq.service.http import HealthCheck, HttpEndpoint
    from edge_daq.service.metrics import PipelineView, build_registry
    from edge_daq.service.notify import AcquisitionProgress, Notifier, StatusLine, watchdog_loop

    log = structlog.get_logger("edge_daq")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    notifier = Notifier()

    def on_stop() -> None:
        notifier.stopping("draining")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop)
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
                report = await run
                watchdog.cancel()
        finally:
            await endpoint.__aexit__(None, None, None)
    if not report.complete:
        log.warning("records_not_delivered", undelivered=report.undelivered)
    return 0
