"""Pipeline throughput: field values per second from Modbus TCP simulators through driver, scheduler, ring
queue and the InfluxDB v1 output into a real InfluxDB, against a raw baseline measured in the same run: the
same number of line-protocol lines, of the same shape, POSTed straight to the same InfluxDB.

The benchmark process (edge-daq's pipeline, or the raw client) is pinned to one core; influxd and the
simulators are pinned to the other, so the figure is what one core of edge-daq delivers. The two sides run in
alternating rounds (A B, B A, ...), each into databases of its own, and the figure is the ratio of the totals:
a machine that slows down during the run weighs on both alike. The pipeline's time runs from the daemon's
start until every record it polled is in InfluxDB (acquisition, then the drain of what is still buffered).

    .venv/bin/python -m bench.pipeline              # 4 rounds, the pipeline polling 8 s in each
    .venv/bin/python -m bench.pipeline --quick      # a few seconds: the smoke test
    .venv/bin/python -m bench.pipeline --reduce     # the same pipeline plus a deadband and an aggregating
                                                    # output (edge_daq.processing), against the plain one
    .venv/bin/python -m bench.pipeline --routing    # routing's cost: plain and routed output, alternating

With ``--routing`` the baseline is the pipeline itself: rounds alternate between the plain output and the same
output with an ``include:`` filter that takes every record (the whole per-record routing path, nothing
skipped), and the figure is routed over plain throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import Figure, emit, free_ports, pin, start_servers, stop_processes
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.record import Record, Series, to_line_protocol
from tests.servers import InfluxDBv1Server

# Each benchmark instrument reads one block of BANK_REGISTERS registers per poll: 70 scaled int16 and 15
# float32 (word-swapped), 85 field values in one request, so the simulators' cost per value stays small and
# the pipeline, not the simulated devices, is what saturates.
BANK_REGISTERS = 100
INT16_POINTS = 70
FLOAT32_POINTS = 15
PIPELINE_CORE = {0}
SERVER_CORE = {1}
BATCH_SIZE = 5000


@dataclass
class Phase:
    name: str
    values: int
    seconds: float
    cpu_seconds: float

    @property
    def values_per_second(self) -> float:
        return self.values / self.seconds


class BankResponder(asyncio.Protocol):
    """A Modbus TCP server that answers every FC03 read from one fixed register bank, and nothing else.

    It costs a few microseconds per request, so that the simulated devices (which share a core with influxd)
    never bound the pipeline; the full simulator (``simulators/modbus_server.py``) costs several times more
    per request and made the first version of this benchmark measure the simulators. Every unit id answers,
    with the same contents; the registers are ``address * 7 & 0x7FFF``.
    """

    BANK = struct.pack(f">{BANK_REGISTERS}H", *((address * 7) & 0x7FFF for address in range(BANK_REGISTERS)))

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        replies = []
        while len(buffer) >= 12:
            transaction, _, _, unit, function, address, count = struct.unpack_from(">HHHBBHH", buffer)
            buffer = buffer[12:]
            if function != 3 or address + count > BANK_REGISTERS:
                replies.append(struct.pack(">HHHBBB", transaction, 0, 3, unit, function | 0x80, 2))
                continue
            data_bytes = self.BANK[2 * address : 2 * (address + count)]
            replies.append(struct.pack(">HHHBBB", transaction, 0, 3 + len(data_bytes), unit, 3, len(data_bytes)))
            replies.append(data_bytes)
        self.buffer = buffer
        assert self.transport is not None
        self.transport.write(b"".join(replies))


async def serve_banks(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(BankResponder, "127.0.0.1", port) for port in ports]
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


@contextlib.contextmanager
def pinned_influx(root: Path) -> Iterator[InfluxDBv1Server]:
    """A real InfluxDB 1.x with its data in ``root``, every thread of it on the server core."""
    with InfluxDBv1Server(root / "influxdb") as influx:
        assert influx.pid is not None
        pin(influx.pid, SERVER_CORE)
        yield influx


def start_simulators(endpoints: int) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``endpoints`` bank responders on distinct free ports (every unit id answers), in processes pinned to the
    server core."""
    ports = free_ports(endpoints)
    return start_servers("bench.pipeline", "--serve-bank", ports, cores=SERVER_CORE), ports


REDUCING_OUTPUTS = (
    "  changes: {{type: influxdb, url: {url}, api: v1, database: {database}_changes, batch_size: {batch},"
    " deadband: {{abs: 0.05, heartbeat: 5m}}}}\n"
    "  minutes: {{type: influxdb, url: {url}, api: v1, database: {database}_minutes, batch_size: {batch},"
    " aggregate: {{every: 1m, stats: [mean, min, max, count, last]}}}}\n"
)
AGGREGATING = "minutes"  # its open window is never delivered at a stop: the drain leaves it to the next run


ROUTE_TAKING_ALL = ", include: {rig: [bench, 'bench-*']}, exclude: {tags: {lot: [scrap]}}"
"""An output filter that takes every record of the benchmark's rig: each record goes through the routed path."""


def write_config(
    folder: Path,
    influx_url: str,
    database: str,
    ports: list[int],
    units: int,
    spool_dir: Path | None = None,
    routing: str = "",
    *,
    reduce: bool = False,
) -> Path:
    """The benchmark's gateway and rig file in ``folder``; ``spool_dir`` turns the durable spool on; ``routing``
    is added to the output's settings; ``reduce`` adds a deadband output and an aggregating one
    (edge_daq.processing) beside the raw output."""
    points = [f"      - {{name: t{n:02d}, address: {n}, type: int16, scale: 0.1}}" for n in range(INT16_POINTS)]
    points += [
        f"      - {{name: f{n:02d}, address: {INT16_POINTS + 2 * n}, type: float32, byte_order: CDAB}}"
        for n in range(FLOAT32_POINTS)
    ]
    lines = ["rig: bench", "tags: {test: HTOL, lot: L2611-03}", "instruments:"]
    for port in ports:
        for unit in range(1, units + 1):
            lines.append(f"  - name: bank_{port}_{unit}")
            lines.append(f"    driver: modbus-tcp\n    host: 127.0.0.1\n    port: {port}\n    unit: {unit}")
            lines.append("    interval: 1ms\n    timeout: 1s\n    points:")
            lines.extend(points)
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "bench.yaml").write_text("\n".join(lines) + "\n")
    gateway = folder / "edge-daq.yaml"
    spool = "" if spool_dir is None else f", spool_dir: {spool_dir}, spool_max_bytes: 8GiB"
    gateway.write_text(
        f"gateway: gw-bench\nrigs: rigs.d/\nbuffer: {{memory_records: 200000{spool}}}\n"
        f"outputs:\n  influxdb: {{url: {influx_url}, api: v1, database: {database},"
        f" batch_size: {BATCH_SIZE}{routing}}}\n"
        + (REDUCING_OUTPUTS.format(url=influx_url, database=database, batch=BATCH_SIZE) if reduce else "")
    )
    return gateway


async def count_values(influx: InfluxDBv1Server, database: str) -> tuple[int, int]:
    """(records, field values) stored in the database."""
    records = values = 0
    result = await influx.query("SHOW MEASUREMENTS", database=database)
    for (measurement,) in result["series"][0]["values"]:
        counts = await influx.query(f'SELECT count(*) FROM "{measurement}"', database=database)
        row = counts["series"][0]["values"][0][1:]
        records += max(row)
        values += sum(row)
    return records, values


async def run_pipeline(gateway: Path, seconds: float) -> tuple[float, float, Record]:
    """Run the daemon for ``seconds``; the time until everything is delivered, its CPU time, a sample record."""
    daemon = Daemon(load_config(gateway), drain_timeout=60)
    sample: list[Record] = []
    reader = daemon.ring.reader("bench-sample")

    async def keep_one_sample() -> None:
        await reader.wait(1)
        batch = reader.read(1)
        sample.extend(batch.records)
        daemon.ring.remove_reader(reader)

    stop = asyncio.Event()
    cpu_start, start = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        run = group.create_task(daemon.run(stop))
        group.create_task(keep_one_sample())
        await asyncio.sleep(seconds)
        stop.set()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = run.result()
    if any(count for name, count in report.undelivered.items() if name != AGGREGATING):
        raise RuntimeError(f"the pipeline left records undelivered: {report.undelivered}")
    return elapsed, cpu, sample[0]


async def run_raw(influx: InfluxDBv1Server, database: str, sample: Record, lines: int) -> tuple[float, float]:
    """POST ``lines`` lines shaped like ``sample`` in batches of BATCH_SIZE; bodies prepared before timing."""
    base = time.time_ns()
    series = [Series(sample.measurement, {**sample.tags, "instrument": f"raw{i}"}) for i in range(32)]
    bodies = []
    for start in range(0, lines, BATCH_SIZE):
        batch = [
            Record(series[n % len(series)], sample.fields, base + n)
            for n in range(start, min(lines, start + BATCH_SIZE))
        ]
        bodies.append(gzip.compress(to_line_protocol(batch), compresslevel=1))
    url = f"{influx.url}/write"
    params = {"db": database, "precision": "ns"}
    async with aiohttp.ClientSession(headers={"Content-Encoding": "gzip"}) as session:
        cpu_start, started = time.process_time(), time.perf_counter()
        for body in bodies:
            async with session.post(url, params=params, data=body) as response:
                if response.status != 204:
                    raise RuntimeError(f"raw POST failed: {response.status} {await response.text()}")
        return time.perf_counter() - started, time.process_time() - cpu_start


async def pipeline_round(
    influx: InfluxDBv1Server,
    root: Path,
    ports: list[int],
    args: argparse.Namespace,
    database: str,
    *,
    spool: bool = False,
    routing: str = "",
    reduce: bool = False,
) -> tuple[Phase, Record]:
    """The pipeline polling for ``args.seconds`` into ``database``, until all is delivered; and a sample record."""
    (root / database).mkdir()
    spool_dir = root / database / "spool" if spool else None
    gateway = write_config(root / database, influx.url, database, ports, args.units, spool_dir, routing, reduce=reduce)
    elapsed, cpu, sample = await run_pipeline(gateway, args.seconds)
    records, values = await count_values(influx, database)
    label = "routed" if routing else "pipeline"
    print(f"  {label}: {records} records, {values} values in {elapsed:.2f} s", flush=True)
    return Phase(f"edge-daq {label}", values, elapsed, cpu), sample


async def routing_async(args: argparse.Namespace) -> tuple[list[Phase], list[Phase]]:
    """``args.rounds`` rounds of the routed and the plain pipeline, alternating (A B, B A, ...)."""
    pin(0, PIPELINE_CORE)
    with tempfile.TemporaryDirectory(prefix="edge-daq-bench-") as folder, pinned_influx(Path(folder)) as influx:
        root = Path(folder)
        simulators, ports = start_simulators(args.simulators)
        routed: list[Phase] = []
        plain: list[Phase] = []
        try:
            for index in range(args.rounds):
                order = [("routed", ROUTE_TAKING_ALL), ("plain", "")]
                for name, routing in order if index % 2 == 0 else order[::-1]:
                    database = f"{name}{index}"
                    await influx.query(f"CREATE DATABASE {database}")
                    phase, _ = await pipeline_round(influx, root, ports, args, database, routing=routing)
                    (routed if routing else plain).append(phase)
        finally:
            stop_processes(simulators)
        return routed, plain


def report_routing(routed: list[Phase], plain: list[Phase]) -> None:
    """Two figures: throughput, and CPU time per value (what a busy machine disturbs least: another process
    takes the core's time, not this process's CPU seconds)."""
    print(f"{'round':<6} {'phase':<20} {'values':>10} {'seconds':>8} {'values/s':>10} {'cpu us/value':>12}")
    for index, (ours, base) in enumerate(zip(routed, plain, strict=True)):
        for phase in (ours, base):
            rate, cost = phase.values_per_second, phase.cpu_seconds / phase.values * 1e6
            print(
                f"{index + 1:<6} {phase.name:<20} {phase.values:>10} {phase.seconds:>8.2f} {rate:>10.0f} {cost:>12.3f}"
            )
    with_route = sum(p.values for p in routed) / sum(p.seconds for p in routed)
    without = sum(p.values for p in plain) / sum(p.seconds for p in plain)
    cost_routed = sum(p.cpu_seconds for p in routed) / sum(p.values for p in routed) * 1e6
    cost_plain = sum(p.cpu_seconds for p in plain) / sum(p.values for p in plain) * 1e6
    per_round = ", ".join(
        f"{a.values_per_second / b.values_per_second:.3f}" for a, b in zip(routed, plain, strict=True)
    )
    print(f"ratio routed/plain, values/s: {with_route / without:.3f} (per round: {per_round})")
    print(f"ratio routed/plain, CPU per value: {cost_routed / cost_plain:.3f}")
    emit(
        Figure(
            benchmark="pipeline",
            name="pipeline with a routed output (filters taking every record): CPU per value",
            value=cost_routed,
            unit="us/value",
            baseline="the same pipeline, output unrouted",
            baseline_value=cost_plain,
            ratio=cost_routed / cost_plain,
            target="ratio <= 1.05 (routing under 5 %)",
            met=cost_routed / cost_plain <= 1.05,
        )
    )
    emit(
        Figure(
            benchmark="pipeline",
            name="pipeline with a routed output (filters taking every record): values/s",
            value=with_route,
            unit="values/s",
            baseline="the same pipeline, output unrouted",
            baseline_value=without,
            ratio=with_route / without,
            target="ratio >= 0.95 (routing under 5 %)",
            met=with_route / without >= 0.95,
        )
    )


async def raw_round(influx: InfluxDBv1Server, database: str, sample: Record, lines: int) -> Phase:
    elapsed, cpu = await run_raw(influx, database, sample, lines)
    _, values = await count_values(influx, database)
    print(f"  raw: {values} values in {elapsed:.2f} s", flush=True)
    return Phase("raw POST baseline", values, elapsed, cpu)


async def main_async(args: argparse.Namespace) -> tuple[list[Phase], list[Phase]]:
    """``args.rounds`` rounds of the pipeline and of the raw baseline, alternating (A B, B A, ...) so that a
    machine that slows down or speeds up during the run weighs on both sides alike. The raw side POSTs as many
    lines as the pipeline delivered in the round before it, each with as many fields as the pipeline's records."""
    pin(0, PIPELINE_CORE)
    with tempfile.TemporaryDirectory(prefix="edge-daq-bench-") as folder, pinned_influx(Path(folder)) as influx:
        root = Path(folder)
        simulators, ports = start_simulators(args.simulators)
        pipelines: list[Phase] = []
        raws: list[Phase] = []
        try:
            sample: Record | None = None
            lines = 0
            for index in range(args.rounds):
                for database in (f"pipeline{index}", f"raw{index}"):
                    await influx.query(f"CREATE DATABASE {database}")
                if sample is not None and index % 2 == 1:
                    raws.append(await raw_round(influx, f"raw{index}", sample, lines))
                phase, sample = await pipeline_round(influx, root, ports, args, f"pipeline{index}")
                pipelines.append(phase)
                lines = max(1, round(phase.values / len(sample.fields)))
                if index % 2 == 0:
                    raws.append(await raw_round(influx, f"raw{index}", sample, lines))
        finally:
            stop_processes(simulators)
        return pipelines, raws


async def reduce_async(args: argparse.Namespace) -> tuple[list[Phase], list[Phase]]:
    """Rounds of the pipeline with its two reducing outputs and without them, alternating (A B, B A, ...); each
    side's figure is the values its raw output stored over the time to acquire and deliver them all."""
    pin(0, PIPELINE_CORE)
    with tempfile.TemporaryDirectory(prefix="edge-daq-bench-") as folder, pinned_influx(Path(folder)) as influx:
        root = Path(folder)
        simulators, ports = start_simulators(args.simulators)
        reduced: list[Phase] = []
        plain: list[Phase] = []
        try:
            for index in range(args.rounds):
                order = (True, False) if index % 2 == 0 else (False, True)
                for reduce in order:
                    database = f"{'reduced' if reduce else 'plain'}{index}"
                    for name in (database, f"{database}_changes", f"{database}_minutes"):
                        await influx.query(f"CREATE DATABASE {name}")
                    phase, _ = await pipeline_round(influx, root, ports, args, database, reduce=reduce)
                    (reduced if reduce else plain).append(phase)
        finally:
            stop_processes(simulators)
        return reduced, plain


def report_reduce(reduced: list[Phase], plain: list[Phase]) -> int:
    print(f"{'round':<6} {'phase':<28} {'values':>10} {'seconds':>8} {'values/s':>10} {'cpu s':>7}")
    for index, (ours, base) in enumerate(zip(reduced, plain, strict=True)):
        for name, phase in (("with deadband + aggregate", ours), ("without", base)):
            print(
                f"{index + 1:<6} {name:<28} {phase.values:>10} {phase.seconds:>8.2f}"
                f" {phase.values_per_second:>10.0f} {phase.cpu_seconds:>7.2f}"
            )
    ours_rate = sum(p.values for p in reduced) / sum(p.seconds for p in reduced)
    base_rate = sum(p.values for p in plain) / sum(p.seconds for p in plain)
    value = ours_rate / base_rate
    rounds = ", ".join(f"{a.values_per_second / b.values_per_second:.2f}" for a, b in zip(reduced, plain, strict=True))
    print(f"ratio with/without reducing outputs: {value:.2f} (per round: {rounds})")
    emit(
        Figure(
            benchmark="pipeline",
            name="pipeline with a deadband and a 1-minute aggregating output: values/s",
            value=ours_rate,
            unit="values/s",
            baseline="the same pipeline without them",
            baseline_value=base_rate,
            ratio=value,
            target="ratio >= 0.8",
            met=value >= 0.8,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.pipeline")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the pipeline polls, per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of pipeline and raw baseline, alternating")
    parser.add_argument("--simulators", type=int, default=16, help="simulated Modbus TCP endpoints (one link each)")
    parser.add_argument("--units", type=int, default=2, help="instruments per endpoint (85 fields each)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    parser.add_argument("--reduce", action="store_true", help="with and without a deadband and an aggregating output")
    parser.add_argument("--routing", action="store_true", help="routing's cost: routed against plain output")
    parser.add_argument("--serve-bank", metavar="PORTS", help=argparse.SUPPRESS)  # a simulator child
    args = parser.parse_args(argv)
    if args.serve_bank:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            asyncio.run(serve_banks([int(port) for port in args.serve_bank.split(",")]))
        return 0
    if args.quick:
        args.seconds, args.rounds, args.simulators, args.units = 2.0, 2, 1, 2
    if args.reduce:
        return report_reduce(*asyncio.run(reduce_async(args)))
    if args.routing:
        report_routing(*asyncio.run(routing_async(args)))
        return 0
    pipelines, raws = asyncio.run(main_async(args))
    print(f"{'round':<6} {'phase':<20} {'values':>10} {'seconds':>8} {'values/s':>10} {'cpu s':>7}")
    for index, (ours, raw) in enumerate(zip(pipelines, raws, strict=True)):
        for phase in (ours, raw):
            print(
                f"{index + 1:<6} {phase.name:<20} {phase.values:>10} {phase.seconds:>8.2f}"
                f" {phase.values_per_second:>10.0f} {phase.cpu_seconds:>7.2f}"
            )
    # Ratio of the totals: each side's values over its time, summed over the rounds.
    pipeline = Phase("edge-daq pipeline", sum(p.values for p in pipelines), sum(p.seconds for p in pipelines),
                     sum(p.cpu_seconds for p in pipelines))  # fmt: skip
    raw = Phase("raw POST baseline", sum(p.values for p in raws), sum(p.seconds for p in raws),
                sum(p.cpu_seconds for p in raws))  # fmt: skip
    value = pipeline.values_per_second / raw.values_per_second
    per_round = [ours.values_per_second / base.values_per_second for ours, base in zip(pipelines, raws, strict=True)]
    rounds = ", ".join(f"{ratio:.2f}" for ratio in per_round)
    print(f"ratio pipeline/raw: {value:.2f} (per round: {rounds})")
    emit(
        Figure(
            benchmark="pipeline",
            name="pipeline: field values/s, Modbus TCP to InfluxDB v1",
            value=pipeline.values_per_second,
            unit="values/s",
            baseline="the same lines POSTed raw",
            baseline_value=raw.values_per_second,
            ratio=value,
            target="ratio >= 0.5 (aim 0.8)",
            met=value >= 0.5,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
