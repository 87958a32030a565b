"""The durable spool under a backlog: memory, drain rate and throughput, each against a baseline of the same run.

1. **Memory**: resident memory of the idle daemon (spool on, InfluxDB unreachable), then with a backlog of
   ``--backlog`` records (default 5 million) on disk; target: the backlog adds at most 50 MB.
2. **Drain rate**: a backlog of ``--drain-backlog`` records in the spool, InfluxDB comes back while live
   records keep arriving at ``--live-rate``; the backlog drains at a multiple of the live rate (target: 10x).
3. **Throughput**: ``bench.pipeline``'s Modbus-to-InfluxDB pipeline with the spool on, against its raw POST
   baseline measured in the same run (target: at least half).

    .venv/bin/python -m bench.backlog            # the full run (a few minutes; about 1 GB of disk)
    .venv/bin/python -m bench.backlog --quick    # a few seconds: the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import pipeline
from bench.common import Figure, emit, free_port, pin, ratio, stop_processes
from edge_daq.buffer.ring import RingBuffer
from edge_daq.buffer.spool import Spool
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.delivery import OutputRunner
from edge_daq.record import Record, Series
from edge_daq.sinks.influxdb import InfluxDBOutput, InfluxDBOutputConfig
from edge_daq.stats import OutputStats
from tests.servers import InfluxDBv1Server

FEED_CHUNK = 20_000
CHAMBER_FIELDS: dict[str, float | int] = {
    "model_code": 5270, "temp_pv": 85.0, "power_pct": 41.5, "mode": 2, "temp_sp": 85.0, "decimals": 1
}  # fmt: skip
SERIES = [
    Series("chamber", {"gateway": "gw-bench", "rig": f"htol-{n:02d}", "instrument": "chamber"}) for n in range(20)
]


def chamber_records(start: int, count: int, base_ns: int) -> list[Record]:
    """Records shaped like a Watlow F4 poll (six fields), spread over 20 rigs, 1 µs apart."""
    return [
        Record(SERIES[n % 20], {**CHAMBER_FIELDS, "temp_pv": 85.0 + (n % 100) / 10}, base_ns + n * 1000)
        for n in range(start, start + count)
    ]


async def until(condition: Callable[[], bool]) -> None:
    """Poll a counter of the pipeline until ``condition`` holds (the benchmark's own process: no events to wait on)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def feed(
    ring: RingBuffer, spool_written: Callable[[], int], total: int, base_ns: int, rate: float | None = None
) -> None:
    """Append ``total`` records, never faster than the spool writes them (or than ``rate`` per second)."""
    start = time.perf_counter()
    for offset in range(0, total, FEED_CHUNK):
        count = min(FEED_CHUNK, total - offset)
        if rate is not None:
            await asyncio.sleep(max(0.0, start + offset / rate - time.perf_counter()))
        ring.extend(chamber_records(offset, count, base_ns))
        target = offset + count - FEED_CHUNK
        await until(lambda target=target: spool_written() >= target)  # type: ignore[misc]


# -- 1. memory: runs in a child process so that its RSS is the daemon's alone


async def memory_child(folder: Path, backlog: int) -> dict[str, float]:
    (folder / "rigs.d").mkdir()
    # One instrument on a port nobody listens on: the daemon is up, polls fail quietly, InfluxDB is unreachable.
    (folder / "rigs.d" / "idle.yaml").write_text(
        "rig: idle\ninstruments:\n  - {name: chamber, profile: watlow-f4, host: 127.0.0.1, "
        f"port: {free_port()}, interval: 10s}}\n"
    )
    gateway = folder / "edge-daq.yaml"
    gateway.write_text(
        f"gateway: gw-bench\nrigs: rigs.d/\nbuffer: {{spool_dir: {folder / 'spool'}, spool_max_bytes: 8GiB}}\n"
        f"outputs:\n  influxdb: {{url: 'http://127.0.0.1:{free_port()}', api: v1, database: bench}}\n"
        "log: {level: error}\n"
    )
    daemon = Daemon(load_config(gateway), drain_timeout=0.1)
    assert daemon.spool is not None
    spool_stats = daemon.spool.stats
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(stop))
    await asyncio.sleep(1.0)
    gc.collect()
    idle = rss_mb()
    started = time.perf_counter()
    await feed(daemon.ring, lambda: spool_stats.records_written, backlog, time.time_ns())
    await until(lambda: spool_stats.records_written >= backlog)
    fill_seconds = time.perf_counter() - started
    await asyncio.sleep(1.0)  # the cursor loop and the output's retry with its read-ahead batch
    gc.collect()
    loaded = rss_mb()
    pending = daemon.stats.outputs[0].pending_records
    stop.set()
    await run
    return {
        "idle_mb": idle,
        "backlog_mb": loaded,
        "pending": pending,
        "disk_mb": spool_stats.bytes / 2**20,
        "fill_seconds": fill_seconds,
    }


def measure_memory(backlog: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edge-daq-backlog-") as folder:
        command = [sys.executable, "-m", "bench.backlog", "--memory-child", folder, "--backlog", str(backlog)]
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


# -- 2. drain rate after an outage, while live records keep flowing


async def measure_drain(influx: InfluxDBv1Server, folder: Path, backlog: int, live_rate: float) -> dict[str, float]:
    await influx.query("CREATE DATABASE drain")
    ring = RingBuffer(200_000)
    spool = Spool(folder / "drain-spool", ring, max_bytes=8 << 30, min_free=0)
    stats = OutputStats("influxdb")
    reader = spool.reader("influxdb", stats)
    config = InfluxDBOutputConfig(url=influx.url, api="v1", database="drain")
    base_ns = time.time_ns() - 10**12
    async with asyncio.TaskGroup() as group:
        spool_task = group.create_task(spool.run())
        # The outage: records pile up in the spool, nothing is delivered.
        await feed(ring, lambda: spool.stats.records_written, backlog, base_ns)
        await until(lambda: spool.stats.records_written >= backlog)
        # InfluxDB is back: the output starts while live records arrive at the live rate.
        runner = OutputRunner(InfluxDBOutput(config), reader, config, stats)
        live_seconds = max(5.0, 3 * backlog / live_rate / 10)
        start = time.perf_counter()
        delivery = group.create_task(runner.run())
        live = group.create_task(feed(ring, lambda: spool.stats.records_written, int(live_rate * live_seconds),
                                      base_ns + backlog * 1000, rate=live_rate))  # fmt: skip
        await until(lambda: stats.delivered >= backlog)
        drain_seconds = time.perf_counter() - start
        await live
        runner.begin_drain()
        await delivery
        await spool.flush(within=10)
        spool_task.cancel()
    await spool.close()
    # Backlog plus the live records that arrived meanwhile, delivered in drain_seconds.
    delivered_during_drain = backlog + live_rate * drain_seconds
    return {"drain_seconds": drain_seconds, "drain_rate": delivered_during_drain / drain_seconds}


# -- 3. pipeline throughput with the spool on, against the raw POST baseline


async def measure_throughput(influx: InfluxDBv1Server, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """bench.pipeline's rounds with the spool on, the raw baseline and the memory-only pipeline, alternating
    (A B C, C B A, ...): the figures are ratios of the totals over the rounds."""
    processes, ports = pipeline.start_simulators(args.simulators)
    spooled: list[pipeline.Phase] = []
    raws: list[pipeline.Phase] = []
    memory: list[pipeline.Phase] = []
    try:
        sample, lines = None, 0
        for index in range(args.rounds):
            for database in (f"spool{index}", f"raw{index}", f"memory{index}"):
                await influx.query(f"CREATE DATABASE {database}")
            if index % 2 == 1 and sample is not None:
                memory.append((await pipeline.pipeline_round(influx, folder, ports, args, f"memory{index}"))[0])
                raws.append(await pipeline.raw_round(influx, f"raw{index}", sample, lines))
            phase, sample = await pipeline.pipeline_round(influx, folder, ports, args, f"spool{index}", spool=True)
            spooled.append(phase)
            lines = max(1, round(phase.values / len(sample.fields)))
            if index % 2 == 0:
                raws.append(await pipeline.raw_round(influx, f"raw{index}", sample, lines))
                memory.append((await pipeline.pipeline_round(influx, folder, ports, args, f"memory{index}"))[0])
    finally:
        stop_processes(processes)

    def rate(phases: list[pipeline.Phase]) -> float:
        return sum(phase.values for phase in phases) / sum(phase.seconds for phase in phases)

    return {
        "spool_values_per_second": rate(spooled),
        "raw_values_per_second": rate(raws),
        "memory_values_per_second": rate(memory),
    }


async def with_influx(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    pin(0, pipeline.PIPELINE_CORE)
    with tempfile.TemporaryDirectory(prefix="edge-daq-backlog-") as folder:
        root = Path(folder)
        with pipeline.pinned_influx(root) as influx:
            drain = await measure_drain(influx, root, args.drain_backlog, args.live_rate)
            throughput = await measure_throughput(influx, root, args)
    return drain, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.backlog")
    parser.add_argument("--backlog", type=int, default=5_000_000, help="records on disk for the memory figure")
    parser.add_argument("--drain-backlog", type=int, default=300_000, help="records piled up during the outage")
    parser.add_argument("--live-rate", type=float, default=1000.0, help="live records per second while draining")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the pipeline polls, per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of spooled, raw and memory-only, alternating")
    parser.add_argument("--simulators", type=int, default=16, help="as bench.pipeline")
    parser.add_argument("--units", type=int, default=2, help="as bench.pipeline")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    parser.add_argument("--memory-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(asyncio.run(memory_child(Path(args.memory_child), args.backlog))))
        return 0
    if args.quick:
        args.backlog, args.drain_backlog, args.live_rate = 50_000, 20_000, 1000.0
        args.seconds, args.rounds, args.simulators, args.units = 2.0, 1, 1, 2

    memory = measure_memory(args.backlog)
    drain, throughput = asyncio.run(with_influx(args))
    growth = memory["backlog_mb"] - memory["idle_mb"]
    print(
        f"memory: idle daemon {memory['idle_mb']:.1f} MB RSS; with {args.backlog} records backlog "
        f"({memory['disk_mb']:.0f} MB on disk, written in {memory['fill_seconds']:.1f} s) "
        f"{memory['backlog_mb']:.1f} MB RSS; growth {growth:+.1f} MB (target <= 50 MB); "
        f"ratio backlog/idle: {memory['backlog_mb'] / memory['idle_mb']:.2f}"
    )
    print(
        f"drain: {args.drain_backlog} records backlog drained in {drain['drain_seconds']:.2f} s at "
        f"{drain['drain_rate']:.0f} records/s while live records arrived at {args.live_rate:.0f}/s; "
        f"ratio drain/live: {drain['drain_rate'] / args.live_rate:.1f} (target >= 10)"
    )
    print(
        f"throughput: pipeline with spool {throughput['spool_values_per_second']:.0f} values/s, raw POST "
        f"{throughput['raw_values_per_second']:.0f} values/s; ratio spool-pipeline/raw: "
        f"{throughput['spool_values_per_second'] / throughput['raw_values_per_second']:.2f} (target >= 0.5); "
        f"memory-only pipeline {throughput['memory_values_per_second']:.0f} values/s, ratio spool/memory-only: "
        f"{throughput['spool_values_per_second'] / throughput['memory_values_per_second']:.2f}"
    )
    figures = [
        ("backlog memory: RSS with the backlog on disk", memory["backlog_mb"], "MB", "idle daemon RSS",
         memory["idle_mb"], f"growth <= 50 MB (measured {growth:+.1f} MB)", growth <= 50),
        ("backlog drain rate after an outage", drain["drain_rate"], "records/s", "live record rate",
         args.live_rate, "ratio >= 10", drain["drain_rate"] / args.live_rate >= 10),
        ("pipeline with spool: values/s", throughput["spool_values_per_second"], "values/s",
         "the same lines POSTed raw", throughput["raw_values_per_second"], "ratio >= 0.5",
         throughput["spool_values_per_second"] / throughput["raw_values_per_second"] >= 0.5),
    ]  # fmt: skip
    for name, value, unit, baseline, baseline_value, target, met in figures:
        emit(Figure("backlog", name, value, unit, baseline, baseline_value, ratio(value, baseline_value), target, met))
    return 0


if __name__ == "__main__":
    sys.exit(main())
