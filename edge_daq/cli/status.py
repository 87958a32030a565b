"""``edge-daq status``: the running daemon's /status as readable tables.

Exit status: 0 healthy, 1 unhealthy (the reason is printed), 2 the gateway file cannot be read, 3 the
daemon cannot be reached (as in LSB ``status`` commands: "not running").
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_daq.service import split_listen
from edge_daq.stats import Histogram

DEFAULT_LISTEN = "127.0.0.1:9108"  # HttpConfig.listen's default

DEFAULT_GATEWAY_FILE = Path("/etc/edge-daq/edge-daq.yaml")
TIMEOUT = 5.0
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def status_url(*, url: str | None = None, config: Path | None = None) -> str:
    """The daemon's base URL: ``url`` if given, else the gateway file's ``http.listen``, else the default.

    Only ``http.listen`` is read, with plain YAML: the full load would need the service's environment
    (``${CREDENTIALS_DIRECTORY}``...), which a shell does not have.
    """
    if url:
        return url.rstrip("/")
    listen = DEFAULT_LISTEN
    path = config or (DEFAULT_GATEWAY_FILE if DEFAULT_GATEWAY_FILE.is_file() else None)
    if path is not None:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        http = document.get("http") if isinstance(document, dict) else None
        if isinstance(http, dict) and isinstance(http.get("listen"), str):
            listen = http["listen"]
    host, port = split_listen(listen)
    # A daemon listening on every address is reachable on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def status_command(*, url: str | None, config: Path | None, out: TextIO) -> int:
    """``edge-daq status [--url URL] [-c GATEWAY_FILE]``; 2 if the gateway file cannot be read."""
    try:
        base = status_url(url=url, config=config)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"edge-daq status: cannot read http.listen from {config}: {error}", file=out)
        return EXIT_USAGE
    return run_status(base, out)


def run_status(url: str, out: TextIO) -> int:
    """Fetch ``url``/status and print it; see the module for the exit status."""
    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    try:
        # No proxy: the daemon is on this machine (or the lab network), never behind $http_proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url.rstrip('/')}/status", timeout=TIMEOUT) as response:
            document: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        console.print(f"edge-daq status: cannot reach the daemon at {url}: {reason}")
        console.print("Is it running? `systemctl status edge-daq`, logs: `journalctl -u edge-daq`")
        return EXIT_UNREACHABLE
    render(document, console)
    return EXIT_HEALTHY if document.get("health", {}).get("healthy") else EXIT_UNHEALTHY


def render(document: dict[str, Any], console: Console) -> None:
    health = document.get("health", {})
    healthy = bool(health.get("healthy"))
    header = Text()
    header.append(f"edge-daq {document.get('version', '?')}")
    if document.get("gateway"):
        header.append(f" · gateway {document['gateway']}")
    header.append(f" · up {_duration(document.get('uptime_seconds'))} · ")
    header.append("healthy" if healthy else "UNHEALTHY", style="green" if healthy else "bold red")
    header.append(f": {health.get('reason', '')}")
    console.print(header)

    instruments = Table(title="Instruments", title_justify="left")
    for column in ("rig", "instrument", "link", "up"):
        instruments.add_column(column)
    for column in ("polls", "failures", "late", "skipped", "p99 latency"):
        instruments.add_column(column, justify="right")
    instruments.add_column("last error", overflow="fold")
    for row in document.get("instruments", []):
        instruments.add_row(
            row["rig"],
            row["instrument"],
            row["link"],
            Text("up", style="green") if row["up"] else Text("DOWN", style="bold red"),
            f"{row['polls']:,}",
            f"{row['failures']:,}",
            f"{row['late']:,}",
            f"{row['skipped']:,}",
            _p99(row.get("latency")),
            row.get("last_error") or "",
        )
    console.print(instruments)

    outputs = Table(title="Outputs", title_justify="left")
    outputs.add_column("output")
    for column in ("delivered", "rejected", "lost", "retries", "backlog", "oldest"):
        outputs.add_column(column, justify="right")
    outputs.add_column("failing since")
    for row in document.get("outputs", []):
        failing = (
            Text(f"{_local(row['failing_since'])} ({_duration(row['failing_for_seconds'])})", style="bold red")
            if row.get("failing")
            else Text("-")
        )
        outputs.add_row(
            row["output"],
            f"{row['delivered']:,}",
            f"{row['rejected']:,}",
            f"{row['lost']:,}",
            f"{row['retries']:,}",
            "-" if row.get("backlog") is None else f"{row['backlog']:,}",
            _duration(row.get("oldest_age_seconds")),
            failing,
        )
    console.print(outputs)

    ring = document.get("ring")
    if ring:
        fill = 100.0 * ring["records"] / ring["capacity"] if ring["capacity"] else 0.0
        records, capacity, dropped = ring["records"], ring["capacity"], ring["dropped"]
        console.print(f"Ring queue: {records:,} / {capacity:,} records ({fill:.1f} %), {dropped:,} dropped")


def _local(iso: str) -> str:
    # The technician reads the gateway's local time; /status carries UTC.
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _p99(histogram: dict[str, Any] | None) -> str:
    if not histogram or not histogram.get("count"):
        return "-"
    bounds = tuple(histogram["bounds"])
    value = Histogram(bounds=bounds, counts=list(histogram["counts"]), count=histogram["count"]).quantile(0.99)
    # The quantile is a bucket's upper bound: say so.
    return f"> {_seconds(bounds[-1])}" if value == float("inf") else f"≤ {_seconds(value)}"


def _seconds(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"
