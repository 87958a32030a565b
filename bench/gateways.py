"""Many gateways, one database: N real `edge-daq run` daemons, each with its own spool and HTTP port, poll the
fleet simulator (bench/fleet.py) and write to one VictoriaMetrics through the cluster-style path prefix of its
InfluxDB endpoint (``url: http://vm/influx``: the single-node server's ``/influx/write``; a cluster's vminsert
takes ``/insert/0/influx`` the same way). Deduplication is on (``-dedup.minScrapeInterval=1ms``): a record the
spool replays after a crash has the same time and collapses onto the first copy.

Mid-run one daemon is SIGKILLed and started again on the same spool, then the database is stopped for a while
and started again. At the end the simulators stop (acquisition stops with them), every output drains, and each
gateway's records polled (its /status, summed over instruments) are compared with the records VictoriaMetrics
holds for it (/api/v1/export, one sample per record: an instrument's polls have distinct times, at least an
interval apart). For the killed gateway, "polled" is what it counted at its last /status before the SIGKILL
(read ``KILL_AFTER`` seconds before it: with ``fsync_interval: 0`` those records are on disk by then) plus what
it counted after the restart; the database may hold a few more than that (polled between that read and the
kill), and records polled in the very last moment before a crash, not yet on disk, are the one loss the design
allows (``fsync_interval``).

    .venv/bin/python -m bench.gateways                # the issue's 20 daemons x 50 instruments, database down 60 s
    .venv/bin/python -m bench.gateways --gateways 4 --instruments 5 --outage 5   # a short run
    .venv/bin/python -m bench.gateways --quick        # 3 x 4, the smoke test (tests/integration/test_many_gateways.py
                                                      # runs the same scenario with its own settings)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import instrument_points, stop_processes
from bench.fleet import start_simulators
from tests.daemon_process import DaemonProcess
from tests.servers import VictoriaMetricsServer, free_port, free_ports

RIG = "fleet"
COUNTED_FIELD = "t00"  # every record carries it: one VictoriaMetrics sample per record
KILL_AFTER = 0.5
STARTING_AT_ONCE = 4  # 20 daemons importing at once on 2 cores would outlast DaemonProcess's 30 s start timeout


@dataclass(frozen=True, slots=True)
class Settings:
    gateways: int = 20
    instruments: int = 50
    points: int = 30
    interval: float = 1.0
    run: float = 20.0
    """Seconds of acquisition before the kill, between the restart and the outage, and after the outage."""
    outage: float = 60.0
    """Seconds the database is down."""
    endpoints_per_gateway: int = 2
    max_backoff: float = 5.0
    fsync_interval: float = 0.0
    """0: records reach the disk as they come, so that a SIGKILL loses (almost) nothing."""


@dataclass(slots=True)
class GatewayCount:
    gateway: str
    polled: int
    stored: int = 0
    killed: bool = False
    failed_in_outage: bool = False
    """Its output was failing at the end of the outage (the outage was felt)."""

    @property
    def lost(self) -> int:
        """Records polled that the database lacks."""
        return max(0, self.polled - self.stored)


def write_gateway(folder: Path, name: str, *, http_port: int, url: str, ports: list[int], settings: Settings) -> Path:
    folder.mkdir(parents=True)
    points = instrument_points()[: settings.points]
    instruments = [
        {"name": f"i{k:03d}", "driver": "modbus-tcp", "host": "127.0.0.1", "port": ports[k % len(ports)],
         "unit": k // len(ports) + 1, "interval": settings.interval, "timeout": 1.0, "points": points}
        for k in range(settings.instruments)
    ]  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / f"{RIG}.yaml").write_text(yaml.safe_dump({"rig": RIG, "instruments": instruments}))
    gateway = folder / "edge-daq.yaml"
    influx = {"url": url, "api": "v1", "database": "fleet", "create_database": False, "batch_size": 5000,
              "flush_interval": 0.5, "max_backoff": settings.max_backoff}  # fmt: skip
    document = {
        "gateway": name,
        "rigs": "rigs.d/",
        "state_dir": str(folder / "state"),
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"level": "warning"},
        "buffer": {
            "spool_dir": str(folder / "spool"),
            "spool_max_bytes": "256MiB",
            "fsync_interval": settings.fsync_interval,
        },
        "outputs": {"influxdb": influx},
    }
    gateway.write_text(yaml.safe_dump(document, sort_keys=False))
    return gateway


async def status(daemon: DaemonProcess) -> dict[str, Any]:
    code, document = await daemon.get("/status")
    assert code == 200, (code, document)
    assert isinstance(document, dict), document
    return document


def polled(document: dict[str, Any]) -> int:
    return sum(instrument["records"] for instrument in document["instruments"])


async def drained(daemons: list[DaemonProcess], within: float) -> list[dict[str, Any]]:
    """Each daemon's /status once acquisition has stopped (every instrument's last poll failed) and its
    output has nothing left to deliver."""
    deadline = time.monotonic() + within
    while True:
        documents = [await status(daemon) for daemon in daemons]
        if all(
            all(i["consecutive_failures"] > 0 for i in document["instruments"])
            and all(output["backlog"] == 0 and not output["failing"] for output in document["outputs"])
            for document in documents
        ):
            return documents
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained after {within} s: {json.dumps(documents)[:3000]}")
        await asyncio.sleep(0.5)


async def stored(vm: VictoriaMetricsServer, gateway: str) -> int:
    """Samples of the counted field of ``gateway`` in the database: one per record."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{vm.url}/internal/force_flush") as response:
            response.raise_for_status()
        match = f'{{__name__=~".*_{COUNTED_FIELD}",gateway="{gateway}"}}'
        async with session.get(f"{vm.url}/api/v1/export", params={"match[]": match}) as response:
            response.raise_for_status()
            text = await response.text()
    return sum(len(json.loads(line)["values"]) for line in text.splitlines() if line.strip())


def set_listen(gateway: Path, port: int) -> None:
    document = yaml.safe_load(gateway.read_text())
    document["http"]["listen"] = f"127.0.0.1:{port}"
    gateway.write_text(yaml.safe_dump(document, sort_keys=False))


async def start_daemon(
    stack: contextlib.AsyncExitStack, gateway: Path, http_ports: list[int], index: int
) -> DaemonProcess:
    """Starts the daemon of ``gateway``; if another process took its HTTP port meanwhile (a client's ephemeral
    port: free ports come from the same range), on a new one written into its file and ``http_ports``."""
    for attempt in range(3):
        try:
            return await stack.enter_async_context(DaemonProcess(gateway, http_ports[index]))
        except AssertionError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
        http_ports[index] = port = free_port()
        await asyncio.to_thread(set_listen, gateway, port)
    raise AssertionError("unreachable")


async def settled_counts(vm: VictoriaMetricsServer, gateways: list[str], expected: list[int]) -> list[int]:
    """What the database holds per gateway, read until it holds the expected counts or stops changing."""
    previous: list[int] = []
    for _ in range(40):
        counts = [await stored(vm, gateway) for gateway in gateways]
        if counts == previous or all(c >= e for c, e in zip(counts, expected, strict=True)):
            return counts
        previous = counts
        await asyncio.sleep(0.5)
    return previous


async def run_fleet(root: Path, settings: Settings, log: Any = print) -> list[GatewayCount]:
    """The whole scenario; returns each gateway's counts (the first gateway is the one killed)."""
    vm = VictoriaMetricsServer(root / "vm")
    await asyncio.to_thread(vm.start)
    units = -(-settings.instruments // settings.endpoints_per_gateway)
    simulators, ports = start_simulators(settings.gateways * settings.endpoints_per_gateway, units)
    names = [f"gw-{index:02d}" for index in range(settings.gateways)]
    http_ports = free_ports(settings.gateways)
    try:
        files = [
            write_gateway(root / name, name, http_port=http_ports[index], url=f"{vm.url}/influx",
                          ports=ports[index * settings.endpoints_per_gateway:][: settings.endpoints_per_gateway],
                          settings=settings)
            for index, name in enumerate(names)
        ]  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            started = time.monotonic()
            starting = asyncio.Semaphore(STARTING_AT_ONCE)

            async def start(index: int) -> DaemonProcess:
                async with starting:
                    return await start_daemon(stack, files[index], http_ports, index)

            daemons = list(await asyncio.gather(*(start(index) for index in range(len(files)))))
            log(f"{len(daemons)} daemons answering after {time.monotonic() - started:.1f} s")
            await asyncio.sleep(settings.run)

            victim = daemons[0]
            polled_before = polled(await status(victim))
            await asyncio.sleep(KILL_AFTER)
            await victim.kill()
            log(f"{names[0]} SIGKILLed; {polled_before} records polled at its last /status, {KILL_AFTER} s before")
            daemons[0] = await start_daemon(stack, files[0], http_ports, 0)
            log(f"{names[0]} restarted on its spool")
            await asyncio.sleep(settings.run)

            await asyncio.to_thread(vm.stop)
            log(f"database stopped for {settings.outage:g} s")
            await asyncio.sleep(settings.outage)
            in_outage = [await status(daemon) for daemon in daemons]
            await asyncio.to_thread(vm.start)
            log("database started again")
            await asyncio.sleep(settings.run)

            await asyncio.to_thread(stop_processes, simulators)
            simulators = []
            documents = await drained(daemons, within=60 + 10 * settings.gateways)
            counts = [GatewayCount(name, polled(document)) for name, document in zip(names, documents, strict=True)]
            counts[0].killed = True
            for count, document in zip(counts, in_outage, strict=True):
                count.failed_in_outage = all(output["failing"] for output in document["outputs"])
            counts[0].polled += polled_before
            for count, held in zip(counts, await settled_counts(vm, names, [c.polled for c in counts]), strict=True):
                count.stored = held
        return counts
    finally:
        stop_processes(simulators)
        await asyncio.to_thread(vm.stop)


def table(counts: list[GatewayCount]) -> str:
    lines = [
        "| gateway | records polled | in VictoriaMetrics | lost | output failing in the outage | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for count in counts:
        note = f"SIGKILLed, restarted ({count.stored - count.polled:+d} polled after its last /status)"
        failing = "yes" if count.failed_in_outage else "no"
        lines.append(
            f"| {count.gateway} | {count.polled} | {count.stored} | {count.lost} | {failing} "
            f"| {note if count.killed else ''} |"
        )
    lines.append(
        f"| all {len(counts)} | {sum(c.polled for c in counts)} | {sum(c.stored for c in counts)} "
        f"| {sum(c.lost for c in counts)} | {sum(c.failed_in_outage for c in counts)} of {len(counts)} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.gateways", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=defaults.gateways)
    parser.add_argument("--instruments", type=int, default=defaults.instruments, help="per gateway")
    parser.add_argument("--points", type=int, default=defaults.points, help="per instrument (at most 30)")
    parser.add_argument("--interval", type=float, default=defaults.interval, help="seconds between polls")
    parser.add_argument("--run", type=float, default=defaults.run, help="seconds of acquisition per phase")
    parser.add_argument("--outage", type=float, default=defaults.outage, help="seconds the database is down")
    parser.add_argument("--quick", action="store_true", help="3 daemons x 4 instruments, a 3 s outage")
    args = parser.parse_args(argv)
    if args.quick:
        args.gateways, args.instruments, args.points, args.interval, args.run, args.outage = 3, 4, 4, 0.2, 2.0, 3.0
    settings = Settings(gateways=args.gateways, instruments=args.instruments, points=args.points,
                        interval=args.interval, run=args.run, outage=args.outage)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edge-daq-gateways-") as folder:
        counts = asyncio.run(run_fleet(Path(folder), settings))
    print(table(counts))
    lost = sum(count.lost for count in counts)
    print(f"{lost} records lost of {sum(c.polled for c in counts)} polled")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
