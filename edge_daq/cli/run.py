"""``edge-daq run``: the daemon in the foreground, as systemd runs it."""

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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    report = await Daemon(config).run(stop)
    if not report.complete:
        structlog.get_logger("edge_daq").warning("records_not_delivered", undelivered=report.undelivered)
    return 0
