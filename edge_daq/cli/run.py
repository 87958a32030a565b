"""``edge-daq run``: the daemon in the foreground, as systemd runs it.

Only the command line lives here; start, signals, systemd notification, reload and drain are in
:mod:`edge_daq.service.lifecycle`. Exit status 2 means the configuration was refused at start, or the daemon
could not be built from it (the unit does not restart on it); 1 means the daemon could not start its HTTP
endpoint; 0 is a clean stop.
"""

from __future__ import annotations

from pathlib import Path


def run_daemon(config_path: Path, *, log_level: str | None = None, log_json: bool | None = None) -> int:
    from edge_daq.service.lifecycle import run_daemon as run

    return run(config_path, log_level=log_level, log_json=log_json)
