"""The figures of docs/fleet.md's sizing table, from one real `edge-daq run` polling the fleet simulator
(bench/fleet.py's, 30 points an instrument) into VictoriaMetrics through ``/influx``, with a spool:

- field values per CPU-second of the daemon process (user + system, /proc) over a steady window;
- bytes per value on the wire: VictoriaMetrics' HTTP listener bytes read (gzipped line protocol, HTTP headers
  included) over the values it inserted (``vm_tcplistener_read_bytes_total``, ``vm_rows_inserted_total``);
- bytes per value in the spool: its growth while the database is stopped, over the values acquired meanwhile;
- bytes per value on VictoriaMetrics' disk after a flush (``vm_data_size_bytes`` over ``vm_rows``; a short run
  compresses worse than a long one, so this is an upper bound).

    .venv/bin/python -m bench.sizing                      # 200 instruments x 30 points at 1 s, 20 s windows
    .venv/bin/python -m bench.sizing --instruments 50 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import stop_processes
from bench.fleet import start_simulators
from bench.gateways import Settings, status, write_gateway
from tests.daemon_process import DaemonProcess
from tests.servers import VictoriaMetricsServer, free_port

ENDPOINTS = 10


async def metric_sums(url: str, names: set[str], labels: dict[str, str] | None = None) -> dict[str, float]:
    """Each named metric summed over its series (those with ``labels``, if given)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    sums = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and all(sample.labels.get(k, "").startswith(v) for k, v in (labels or {}).items()):
                sums[sample.name] += sample.value
    return sums


async def drained(daemon: DaemonProcess, within: float) -> None:
    """The outage's backlog is delivered: nothing older than a few seconds waits (live records always do)."""
    deadline = time.monotonic() + within
    while any(
        output["failing"] or (output["oldest_age_seconds"] or 0.0) > 3.0 for output in (await status(daemon))["outputs"]
    ):
        assert time.monotonic() < deadline, f"the backlog did not drain in {within} s"
        await asyncio.sleep(0.5)


def values(document: dict[str, Any]) -> int:
    return 30 * sum(int(instrument["records"]) for instrument in document["instruments"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(root: Path, instruments: int, seconds: float) -> dict[str, float]:
    settings = Settings(gateways=1, instruments=instruments, points=30, interval=1.0, endpoints_per_gateway=ENDPOINTS,
                        fsync_interval=0.1)  # fmt: skip  # edge-daq's default
    vm = VictoriaMetricsServer(root / "vm")
    await asyncio.to_thread(vm.start)
    simulators, ports = start_simulators(ENDPOINTS, -(-instruments // ENDPOINTS))
    http_port = free_port()
    gateway = write_gateway(root / "gw", "gw-size", http_port=http_port, url=f"{vm.url}/influx", ports=ports,
                            settings=settings)  # fmt: skip
    try:
        async with DaemonProcess(gateway, http_port) as daemon:
            assert daemon._process is not None
            pid = daemon._process.pid
            await asyncio.sleep(3.0)  # past the start and the first polls
            wire = {"vm_tcplistener_read_bytes_total", "vm_rows_inserted_total"}
            start_values, start_cpu, start_wire = values(await status(daemon)), cpu_seconds(pid), None
            start_wire = await metric_sums(f"{vm.url}/metrics", wire)
            started = time.monotonic()
            await asyncio.sleep(seconds)
            end_values, end_cpu = values(await status(daemon)), cpu_seconds(pid)
            elapsed = time.monotonic() - started
            end_wire = await metric_sums(f"{vm.url}/metrics", wire)
            rows = end_wire["vm_rows_inserted_total"] - start_wire["vm_rows_inserted_total"]
            wire_bytes = end_wire["vm_tcplistener_read_bytes_total"] - start_wire["vm_tcplistener_read_bytes_total"]

            spool = {"edge_daq_spool_bytes"}
            await asyncio.to_thread(vm.stop)
            outage_values, outage_spool = (
                values(await status(daemon)),
                await metric_sums(daemon.url + "/metrics", spool),
            )
            await asyncio.sleep(seconds)
            held_values = values(await status(daemon)) - outage_values
            held_bytes = (await metric_sums(daemon.url + "/metrics", spool))["edge_daq_spool_bytes"]
            held_bytes -= outage_spool["edge_daq_spool_bytes"]
            await asyncio.to_thread(vm.start)
            await drained(daemon, within=120.0)
        async with aiohttp.ClientSession() as session, session.get(f"{vm.url}/internal/force_flush") as response:
            response.raise_for_status()
        await asyncio.sleep(2.0)
        disk = await metric_sums(f"{vm.url}/metrics", {"vm_data_size_bytes", "vm_rows"}, {"type": "storage"})
    finally:
        stop_processes(simulators)
        await asyncio.to_thread(vm.stop)
    acquired = end_values - start_values
    return {
        "instruments": instruments,
        "values/s acquired": acquired / elapsed,
        "daemon CPU share of a core": (end_cpu - start_cpu) / elapsed,
        "values per CPU-second": acquired / max(end_cpu - start_cpu, 1e-9),
        "wire bytes per value (gzip, with HTTP)": wire_bytes / max(rows, 1),
        "spool bytes per value": held_bytes / max(held_values, 1),
        "VictoriaMetrics disk bytes per value": disk["vm_data_size_bytes"] / max(disk["vm_rows"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instruments", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="the steady window, and the outage")
    parser.add_argument("--quick", action="store_true", help="20 instruments, 3 s windows: the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.instruments, args.seconds = 20, 3.0
    with tempfile.TemporaryDirectory(prefix="edge-daq-sizing-") as folder:
        figures = asyncio.run(measure(Path(folder), args.instruments, args.seconds))
    print("| figure | value |\n|---|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value:,.3g} |" if value < 100 else f"| {name} | {value:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
