"""SIGTERM while the output is dead: the daemon exits in time, the backlog stays on disk, and the next start
delivers it (a real daemon process, a simulator on a real port, a real InfluxDB for the second start)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from edge_daq.daemon import DEFAULT_DRAIN_TIMEOUT
from simulators import serve
from tests.servers import InfluxDBv1Server, free_port


def write_gateway(path: Path, *, influx_url: str, spool: Path, http_port: int) -> None:
    path.write_text(
        f"gateway: gw-drain\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        f"buffer: {{spool_dir: {spool}, spool_max_bytes: 64MiB}}\n"
        f"outputs:\n  influxdb: {{url: {influx_url}, api: v1, database: drained, flush_interval: 100ms}}\n"
    )


async def acquired(http_port: int, records: int, within: float = 30.0) -> None:
    """Wait until the daemon's instruments have acquired ``records`` records in all (read from /status)."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{http_port}/status") as response:
                    status = await response.json()
                if sum(item.get("records", 0) for item in status.get("instruments", [])) >= records:
                    return
            await asyncio.sleep(0.1)


async def start_daemon(gateway: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_daq",
        "run",
        "-c",
        str(gateway),
        "--log-json",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"},
    )


def events(log: bytes, name: str) -> list[dict[str, object]]:
    return [entry for line in log.decode().splitlines() if (entry := json.loads(line)).get("event") == name]


async def test_sigterm_with_a_dead_output_exits_in_time_and_keeps_the_backlog(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    gateway = tmp_path / "edge-daq.yaml"
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serve("watlow-f4", seed=4) as chamber:
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "oven.yaml").write_text(
            "rig: oven\ninstruments:\n"
            f"  - {{name: chamber, profile: watlow-f4, host: 127.0.0.1, port: {chamber.port}, interval: 50ms}}\n"
        )
        http_port = free_port()
        write_gateway(gateway, influx_url=dead_url, spool=spool, http_port=http_port)
        daemon = await start_daemon(gateway)
        # Acquired, not merely started: a loaded machine once gave 12 records in a fixed 3 s.
        await acquired(http_port, 40)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, log = await asyncio.wait_for(daemon.communicate(), 60)
        elapsed = time.monotonic() - started
        # Taken once the daemon has exited: a poll already on the wire when SIGTERM arrived is part of the
        # backlog, and every record of the next start is later than this.
        stopped_at = time.time_ns()

        assert daemon.returncode == 0, log.decode()[-2000:]
        # Well inside the unit's TimeoutStopSec (45 s): the ring is spooled, the dead output gets its drain time.
        assert elapsed < 2 * DEFAULT_DRAIN_TIMEOUT + 5
        (stop_report,) = events(log, "daemon_stopped")
        undelivered = stop_report["undelivered"]
        assert isinstance(undelivered, dict)
        backlog = undelivered["influxdb"]
        assert isinstance(backlog, int)
        assert backlog > 20
        assert sum(path.stat().st_size for path in spool.glob("*") if path.is_file()) > 0

        # The next start, with the database back, delivers the backlog from disk.
        write_gateway(gateway, influx_url=influxdb_v1.url, spool=spool, http_port=free_port())
        daemon = await start_daemon(gateway)
        delivered = 0
        try:
            async with asyncio.timeout(30):
                while True:
                    await asyncio.sleep(0.3)
                    if "drained" not in await influxdb_v1.databases():
                        continue
                    delivered = 0
                    for measurement in ("chamber", "edge_daq_status"):
                        rows = await influxdb_v1.select(
                            f'SELECT * FROM "{measurement}" WHERE time <= {stopped_at}', database="drained"
                        )
                        delivered += len(rows)
                    if delivered >= backlog:
                        break
        except TimeoutError:
            pytest.fail(f"{delivered} of the {backlog} backlog records delivered within 30 s of the next start")
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.communicate(), 60)
    assert delivered == backlog
