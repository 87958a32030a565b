"""Fleet: N Modbus TCP instruments x 30 points at a 1 s interval, on at least 50 simulated endpoints, through
edge-daq's whole pipeline into a real InfluxDB 1.6.

Measured over a steady window after a warm-up: skipped cycles (against the polls due), the 99th percentile
of schedule lateness (exact samples: every instrument's lateness observation is recorded), resident memory
(against the same process before the daemon was built) and CPU time per delivered field value. Then the
scaling limit: N is stepped up until cycles are skipped; the limit is the largest N polled without skips.

Each run (the main one and every scaling step) builds its daemon in a fresh process of its own (``--one-run``),
pinned to one core, so a step's memory and CPU are its own, not what an earlier step left in the heap; the
simulators (several endpoints per process) and influxd share the other core. Resident memory is that process's
peak; its growth per further 1,000 instruments is the slope from the main run to the largest step kept up with.

Node-RED, the tool the issue compares with, polls the same fleet side by side (bench/nodered.py): on the same
simulators and influxd (a database of its own), pinned to the daemon's core, and only while the daemon is not
running: right after edge-daq's main run at the same size and window, then through the same scaling steps
after edge-daq's (a step of ``--step-seconds``, stopping at the first it does not keep up with). Its figures
are the baselines of resident memory, CPU per delivered value (and per value read: InfluxDB refuses some of
Node-RED's one-point writes) and the scaling limit. Node-RED does not count skipped cycles: it falls behind
when it makes under 99% of the polls due in the window. When node, npm or the install is missing, or
``--no-nodered`` is given, those rows say "not run" and why.

    .venv/bin/python -m bench.fleet                  # 1000 instruments for 60 s, then steps up to 16000
    .venv/bin/python -m bench.fleet --seconds 300    # the issue's 5-minute window
    .venv/bin/python -m bench.fleet --no-nodered     # edge-daq only
    .venv/bin/python -m bench.fleet --quick          # 20 instruments for 3 s: the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench import nodered, pipeline
from bench.common import (
    BLOCK_REGISTERS,
    Figure,
    cpu_seconds,
    emit,
    free_ports,
    instrument_points,
    pin,
    ratio,
    rss_mb,
    start_servers,
    stop_processes,
)
from bench.nodered import NodeRedRun, NodeRedUnavailableError
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.stats import Histogram
from simulators.modbus_server import ModbusTcpServer, RegisterMapDevice
from tests.servers import InfluxDBv1Server

INTERVAL = 1.0
POINTS_PER_INSTRUMENT = 30
LATENESS_TARGET = 0.020
MEMORY_TARGET_MB = 100.0  # issue 20: at 1,000 instruments
MEMORY_SLOPE_TARGET_MB = 40.0  # issue 20: per further 1,000 instruments
CPU_RATIO_TARGET = 0.3  # issue 20: CPU per delivered value against Node-RED's
SCALING_TARGET, SCALING_RATIO_TARGET = 8000, 5  # issue 20: instruments at 1 s without skips, and x Node-RED's
SCALING_TARGET_TEXT = f">= {SCALING_TARGET} and >= {SCALING_RATIO_TARGET} x Node-RED"
ONE_RUN_MARK = "FLEET RUN "  # the line of a --one-run child's stdout that holds its FleetRun
SIMULATOR_PROCESSES = 2
GATEWAY, RIG, RIG_TAGS = "gw-fleet", "fleet", {"test": "HTOL", "lot": "L2611-03"}
SERIES_TAGS = {**RIG_TAGS, "gateway": GATEWAY, "rig": RIG}  # what edge-daq tags each record with (but instrument)
NODERED_CONNECT = 2.0  # Node-RED connects 0.5 s after its flows start and reads one interval later


class FleetDevice(RegisterMapDevice):
    """Fixed contents of one block: costs the simulator as little as possible per read."""

    def __init__(self, unit: int) -> None:
        self.highest_address = BLOCK_REGISTERS - 1
        self.values = {address: (unit * 100 + address * 7) & 0x7FFF for address in range(BLOCK_REGISTERS)}

    def register_values(self) -> dict[int, int]:
        return self.values


async def serve_fleet(ports: list[int], units: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for port in ports:
            devices = {unit: FleetDevice(unit) for unit in range(1, units + 1)}
            await stack.enter_async_context(ModbusTcpServer(devices, port=port))
        await asyncio.Event().wait()


def start_simulators(endpoints: int, units: int) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    ports = free_ports(endpoints)
    children = start_servers("bench.fleet", "--serve", ports, cores=pipeline.SERVER_CORE, extra=["--units", str(units)],
                             processes=SIMULATOR_PROCESSES)  # fmt: skip
    return children, ports


def write_config(folder: Path, influx_url: str, database: str, ports: list[int], instruments: int) -> Path:
    """Instrument k is unit k // endpoints + 1 on endpoint k % endpoints: every link gets its share."""
    folder.mkdir()
    points = []
    for point in instrument_points():
        points.append("      - {" + ", ".join(f"{key}: {value}" for key, value in point.items()) + "}")
    tags = ", ".join(f"{key}: {value}" for key, value in RIG_TAGS.items())
    lines = [f"rig: {RIG}", f"tags: {{{tags}}}", "instruments:"]
    for k in range(instruments):
        port, unit = ports[k % len(ports)], k // len(ports) + 1
        lines += [f"  - name: i{k:05d}", "    driver: modbus-tcp", "    host: 127.0.0.1", f"    port: {port}"]
        lines += [f"    unit: {unit}", f"    interval: {INTERVAL}s", "    timeout: 1s", "    points:", *points]
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "fleet.yaml").write_text("\n".join(lines) + "\n")
    gateway = folder / "edge-daq.yaml"
    gateway.write_text(
        f"gateway: {GATEWAY}\nrigs: rigs.d/\nbuffer: {{memory_records: 100000}}\nlog: {{level: warning}}\n"
        f"outputs:\n  influxdb: {{url: {influx_url}, api: v1, database: {database}, batch_size: 5000}}\n"
    )
    return gateway


class RecordingHistogram(Histogram):
    """The lateness histogram, keeping every observation made while ``recording`` is on."""

    recording: ClassVar[bool] = False
    samples: ClassVar[list[float]] = []  # shared by every instrument: one list of the whole fleet's samples

    def observe(self, value: float) -> None:
        super().observe(value)
        if RecordingHistogram.recording:
            RecordingHistogram.samples.append(value)


@dataclass(slots=True)
class FleetRun:
    instruments: int
    seconds: float
    polls: int
    skipped: int
    failures: int
    values: int
    cpu_seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    lateness: list[float] = field(repr=False)
    stored_values: int = 0
    latency: list[float] = field(default_factory=list, repr=False)  # acquisition to queryable, seconds

    def lateness_quantile(self, q: float) -> float:
        if not self.lateness:
            return math.nan
        ordered = sorted(self.lateness)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    @property
    def cpu_per_value_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.values if self.values else math.nan

    def describe(self) -> str:
        return (
            f"{self.instruments:>5} instruments: {self.polls:>7} polls, {self.skipped:>5} skipped, "
            f"{self.failures} failed, p50/p99/max lateness {1e3 * self.lateness_quantile(0.5):.1f}/"
            f"{1e3 * self.lateness_quantile(0.99):.1f}/{1e3 * max(self.lateness, default=math.nan):.1f} ms, "
            f"RSS {self.rss_peak_mb:.0f} MB (before {self.rss_before_mb:.0f}), "
            f"CPU {self.cpu_seconds / self.seconds:.0%} of a core, {self.cpu_per_value_us:.1f} us/value"
            + (
                f", acquisition to queryable p50/p99 {1e3 * quantile(self.latency, 0.5):.0f}/"
                f"{1e3 * quantile(self.latency, 0.99):.0f} ms ({len(self.latency)} records)"
                if self.latency
                else ""
            )
        )


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


LATENCY_PROBE_INTERVAL = 0.05
FLUSH_INTERVAL = 1.0  # the influxdb output's default, which write_config keeps
LATENCY_TARGET = FLUSH_INTERVAL + 0.25  # issue 20: p99 acquisition to queryable
LATENCY_INSTRUMENTS = 10


async def probe_latency(
    influx: InfluxDBv1Server, database: str, instruments: list[str], samples: list[float], done: asyncio.Event
) -> None:
    """Acquisition to queryable in InfluxDB, for a few instruments: every 50 ms, the newest record time of each.

    A record time is its acquisition (poll) time; a newer one than the previous probe's became queryable since
    that probe, so ``now - time`` bounds its latency from above by at most one probe interval.
    """
    newest: dict[str, int] = {}
    names = "|".join(instruments)
    field_name = str(instrument_points()[0]["name"])
    while not done.is_set():
        result = await influx.query(
            f'SELECT last("{field_name}") FROM /.*/ WHERE instrument =~ /^({names})$/ AND time > now() - 1m '
            "GROUP BY instrument",
            database=database,
        )
        now = time.time_ns()
        for series in result.get("series", []):
            name, stamp = series["tags"]["instrument"], series["values"][0][0]
            if name in newest and stamp > newest[name]:
                samples.append((now - stamp) / 1e9)
            newest[name] = stamp
        await asyncio.sleep(LATENCY_PROBE_INTERVAL)


async def run_fleet(
    influx: InfluxDBv1Server, root: Path, ports: list[int], instruments: int, warmup: float, seconds: float
) -> FleetRun:
    database = f"fleet_{instruments}"
    await influx.query(f"CREATE DATABASE {database}")
    gateway = write_config(root / database, influx.url, database, ports, instruments)
    gc.collect()
    rss_before = rss_mb()
    daemon = Daemon(load_config(gateway), drain_timeout=60)
    for stats in daemon.stats.instruments:
        stats.lateness = RecordingHistogram()
    RecordingHistogram.samples = []
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        run = group.create_task(daemon.run(stop), name="fleet daemon")
        await asyncio.sleep(warmup)
        totals = daemon.stats.instruments
        polls0, skipped0, failures0 = (sum(getattr(s, key) for s in totals) for key in ("polls", "skipped", "failures"))
        records0, cpu0, started = sum(s.records for s in totals), cpu_seconds(), time.perf_counter()
        RecordingHistogram.recording = True
        rss_peak = rss_mb()
        latency: list[float] = []
        window_over = asyncio.Event()
        probe = group.create_task(
            probe_latency(
                influx,
                database,
                [f"i{k:05d}" for k in range(0, instruments, max(1, instruments // LATENCY_INSTRUMENTS))],
                latency,
                window_over,
            ),
            name="latency probe",
        )
        while (left := started + seconds - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))
            rss_peak = max(rss_peak, rss_mb())
        window_over.set()
        await probe
        RecordingHistogram.recording = False
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
        result = FleetRun(
            instruments=instruments,
            seconds=elapsed,
            polls=sum(s.polls for s in totals) - polls0,
            skipped=sum(s.skipped for s in totals) - skipped0,
            failures=sum(s.failures for s in totals) - failures0,
            values=(sum(s.records for s in totals) - records0) * POINTS_PER_INSTRUMENT,
            cpu_seconds=cpu,
            rss_before_mb=rss_before,
            rss_peak_mb=rss_peak,
            lateness=RecordingHistogram.samples,
            latency=latency,
        )
        stop.set()
    report = run.result()
    if not report.complete:
        raise RuntimeError(f"the fleet left records undelivered: {report.undelivered}")
    _, result.stored_values = await pipeline.count_values(influx, database)
    await influx.query(f"DROP DATABASE {database}")
    del daemon
    return result


async def run_fleet_in_child(
    influx: InfluxDBv1Server, root: Path, ports: list[int], instruments: int, warmup: float, seconds: float
) -> FleetRun:
    """:func:`run_fleet` in a fresh process of its own (``--one-run``): its memory and CPU are that run's alone."""
    spec = {"influx_port": influx.port, "root": str(root), "ports": ports, "instruments": instruments,
            "warmup": warmup, "seconds": seconds}  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fleet", "--one-run", json.dumps(spec),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await child.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith(ONE_RUN_MARK)]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"the {instruments}-instrument run failed ({child.returncode}): {err.decode()[-2000:]}")
    return FleetRun(**json.loads(lines[-1].removeprefix(ONE_RUN_MARK)))


def one_run(spec: dict[str, Any]) -> None:
    """A --one-run child: one fleet run on the parent's influxd and simulators, printed as JSON."""
    pin(0, pipeline.PIPELINE_CORE)
    root = Path(spec["root"])
    influx = InfluxDBv1Server.running_at(root / f"client-{spec['instruments']}", spec["influx_port"])
    run = asyncio.run(run_fleet(influx, root, spec["ports"], spec["instruments"], spec["warmup"], spec["seconds"]))
    print(ONE_RUN_MARK + json.dumps(dataclasses.asdict(run)), flush=True)


@dataclass(slots=True)
class Results:
    main: FleetRun
    steps: list[FleetRun] = field(default_factory=list)
    nodered_main: NodeRedRun | None = None
    nodered_steps: list[NodeRedRun] = field(default_factory=list)
    nodered_missing: str = ""  # why Node-RED did not run (or stopped running)


def prepare_nodered(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The Node-RED install (made now, before anything is measured), or why there is none."""
    if not args.nodered:
        return None, "--no-nodered"
    started = time.perf_counter()
    already = nodered.is_installed()
    try:
        folder = nodered.install()
    except NodeRedUnavailableError as error:
        print(f"Node-RED not run: {error}", flush=True)
        return None, str(error)
    if not already:
        print(f"Node-RED installed with npm in {time.perf_counter() - started:.0f} s into {folder}", flush=True)
    return folder, ""


async def measure(args: argparse.Namespace) -> Results:
    pin(0, pipeline.PIPELINE_CORE)  # Node-RED's runs take this core too, while no edge-daq run is under way
    largest = max([args.instruments, *args.steps])
    units = -(-largest // args.endpoints)
    nodered_folder, missing = prepare_nodered(args)
    with tempfile.TemporaryDirectory(prefix="edge-daq-fleet-") as name, pipeline.pinned_influx(Path(name)) as influx:
        root = Path(name)
        simulators: list[subprocess.Popen[bytes]] = []
        try:
            simulators, ports = start_simulators(args.endpoints, units)

            main_run = await run_fleet_in_child(influx, root, ports, args.instruments, args.warmup, args.seconds)
            print(main_run.describe(), flush=True)
            results = Results(main_run, nodered_missing=missing)

            async def side_by_side(instruments: int, seconds: float) -> NodeRedRun | None:
                if nodered_folder is None or results.nodered_missing:
                    return None
                try:
                    run = await nodered.run_fleet(
                        nodered_folder, influx, root, ports, instruments, SERIES_TAGS, pipeline.PIPELINE_CORE,
                        args.warmup + NODERED_CONNECT, seconds,
                    )  # fmt: skip
                except NodeRedUnavailableError as error:
                    print(f"Node-RED not run: {error}", flush=True)
                    results.nodered_missing = str(error)
                    return None
                print(run.describe(), flush=True)
                return run

            results.nodered_main = await side_by_side(args.instruments, args.seconds)
            for count in args.steps:
                step = await run_fleet_in_child(influx, root, ports, count, args.warmup, args.step_seconds)
                print(step.describe(), flush=True)
                results.steps.append(step)
                if step.skipped:
                    break
            if results.nodered_main is not None and results.nodered_main.kept_up:
                for count in args.steps:
                    if (nodered_step := await side_by_side(count, args.step_seconds)) is None:
                        break
                    results.nodered_steps.append(nodered_step)
                    if not nodered_step.kept_up:
                        break
        finally:
            stop_processes(simulators)
    return results


def scaling_limit(sizes: list[tuple[int, bool]]) -> tuple[int, bool]:
    """From (instruments, kept up) of each run: the largest size kept up with, and whether some size was not."""
    return max((size for size, ok in sizes if ok), default=0), not all(ok for _, ok in sizes)


def report(results: Results, endpoints: int) -> None:
    main = results.main
    limit, bounded = scaling_limit(
        [(r.instruments, r.skipped == 0 and r.failures == 0) for r in [main, *results.steps]]
    )
    p99 = main.lateness_quantile(0.99)
    due = main.polls + main.skipped
    print(f"fleet of {main.instruments} instruments on {endpoints} endpoints, {main.seconds:.0f} s window:")
    print(f"  skipped cycles: {main.skipped} of {due} due; p99 lateness {1e3 * p99:.1f} ms (target < 20 ms)")
    print(
        f"  RSS {main.rss_peak_mb:.0f} MB (target <= {MEMORY_TARGET_MB:g} MB); {main.cpu_per_value_us:.1f} us CPU/value"
    )
    print(f"  values stored in InfluxDB over the whole run: {main.stored_values}")
    latency_p99 = quantile(main.latency, 0.99)
    print(
        f"  acquisition to queryable in InfluxDB: p99 {1e3 * latency_p99:.0f} ms over {len(main.latency)} records "
        f"(target <= flush_interval + 250 ms = {1e3 * LATENCY_TARGET:.0f} ms)"
    )
    print(f"scaling limit: {limit} instruments at 1 s without skipped cycles" + ("" if bounded else " (or more)"))
    name = f"fleet {main.instruments} x 30"
    figures = [
        Figure("fleet", f"{name}: skipped cycles", main.skipped, "cycles", "cycles due",
               due, ratio(main.skipped, due), "0 skipped", main.skipped == 0),
        Figure("fleet", f"{name}: p99 schedule lateness", 1e3 * p99, "ms", "interval (ms)",
               1e3 * INTERVAL, p99 / INTERVAL, "p99 < 20 ms", p99 < LATENESS_TARGET),
        Figure("fleet", f"{name}: resident memory", main.rss_peak_mb, "MB",
               "same process before the daemon", main.rss_before_mb, ratio(main.rss_peak_mb, main.rss_before_mb),
               f"<= {MEMORY_TARGET_MB:g} MB", main.rss_peak_mb <= MEMORY_TARGET_MB),
        Figure("fleet", f"{name}: p99 acquisition to queryable in InfluxDB", 1e3 * latency_p99, "ms",
               "flush_interval (ms)", 1e3 * FLUSH_INTERVAL, latency_p99 / FLUSH_INTERVAL,
               f"p99 <= {1e3 * LATENCY_TARGET:.0f} ms", latency_p99 <= LATENCY_TARGET),
    ]  # fmt: skip
    figures.append(memory_slope(main, results.steps))
    figures += against_nodered(results, limit, bounded)
    for figure in figures:
        emit(figure)


def memory_slope(main: FleetRun, steps: list[FleetRun]) -> Figure:
    """Resident memory per further 1,000 instruments: from the main run to the largest step kept up with (each
    in a fresh process, so neither holds what another left)."""
    kept = [step for step in steps if step.instruments > main.instruments and not step.skipped and not step.failures]
    name = "fleet: resident memory per further 1,000 instruments"
    target = f"<= {MEMORY_SLOPE_TARGET_MB:g} MB"
    if not kept:
        return Figure("fleet", name, math.nan, "MB", "no step above the main run kept up", math.nan, math.nan,
                      target, None)  # fmt: skip
    top = max(kept, key=lambda step: step.instruments)
    slope = 1000 * (top.rss_peak_mb - main.rss_peak_mb) / (top.instruments - main.instruments)
    print(f"  RSS {main.rss_peak_mb:.0f} MB at {main.instruments}, {top.rss_peak_mb:.0f} MB at {top.instruments}: "
          f"{slope:.1f} MB per further 1,000 instruments")  # fmt: skip
    return Figure("fleet", name, slope, "MB", f"RSS at {main.instruments} instruments (MB)", main.rss_peak_mb,
                  ratio(slope, main.rss_peak_mb), target, slope <= MEMORY_SLOPE_TARGET_MB,
                  f"{top.rss_peak_mb:.0f} MB at {top.instruments} instruments")  # fmt: skip


def against_nodered(results: Results, limit: int, bounded: bool) -> list[Figure]:
    """The rows with Node-RED as the baseline: memory, CPU per value and the scaling limit."""
    main, side = results.main, results.nodered_main
    name = f"fleet {main.instruments} x 30"
    edge_note = "" if bounded else f"edge-daq skipped no step up to {limit}: its limit is higher"
    if side is None:
        reason = results.nodered_missing or "see the log"
        label = f"Node-RED (not run: {reason[:200]})"
        return [
            Figure("fleet", f"{name}: resident memory against Node-RED", main.rss_peak_mb, "MB", label,
                   math.nan, math.nan, "below Node-RED", None),
            Figure("fleet", f"{name}: CPU per delivered value", main.cpu_per_value_us, "us", label,
                   math.nan, math.nan, f"ratio <= {CPU_RATIO_TARGET:g}", None),
            Figure("fleet", f"{name}: CPU per value read (Node-RED's delivered or not)", main.cpu_per_value_us,
                   "us", label, math.nan, math.nan, f"ratio <= {CPU_RATIO_TARGET:g}", None),
            Figure("fleet", "fleet scaling limit at 1 s without skips", limit, "instruments", label,
                   math.nan, math.nan, SCALING_TARGET_TEXT, None if limit >= SCALING_TARGET else False, edge_note),
        ]  # fmt: skip
    side_limit, side_bounded = scaling_limit([(r.instruments, r.kept_up) for r in [side, *results.nodered_steps]])
    # Issue 20: at least SCALING_TARGET and SCALING_RATIO_TARGET x Node-RED's. Without a step it fell behind at,
    # Node-RED's limit is a lower bound: the ratio is then known only to fail (edge-daq bounded lower) or unknown.
    enough = limit >= SCALING_TARGET
    if side_bounded:
        limit_met: bool | None = enough and limit >= SCALING_RATIO_TARGET * side_limit
    else:
        limit_met = False if (bounded and limit < SCALING_RATIO_TARGET * side_limit) or not enough else None
    side_note = "" if side_bounded else f"Node-RED kept up with every step up to {side_limit}"
    delivered = "delivered unknown" if side.delivered is None else f"{side.delivered / side.polls:.1%} delivered"
    label = f"Node-RED, same fleet and window ({side.polls / side.due:.1%} of polls made, {delivered})"
    print(
        f"Node-RED side by side: {side.cpu_per_value_us:.1f} us CPU/delivered value "
        f"({side.cpu_per_polled_value_us:.1f} per polled value), RSS {side.rss_peak_mb:.0f} MB; "
        f"scaling limit {side_limit}" + ("" if side_bounded else " (or more)")
    )
    print(
        f"  ratio edge-daq/Node-RED: CPU per delivered value {main.cpu_per_value_us / side.cpu_per_value_us:.2f}, "
        f"per polled value {main.cpu_per_value_us / side.cpu_per_polled_value_us:.2f}; "
        f"RSS {main.rss_peak_mb / side.rss_peak_mb:.2f}"
    )
    rss, cpu, read = side.rss_peak_mb, side.cpu_per_value_us, side.cpu_per_polled_value_us
    edge_cpu = main.cpu_per_value_us
    return [
        Figure("fleet", f"{name}: resident memory against Node-RED", main.rss_peak_mb, "MB", label,
               rss, ratio(main.rss_peak_mb, rss), "below Node-RED", main.rss_peak_mb < rss),
        Figure("fleet", f"{name}: CPU per delivered value", edge_cpu, "us", label,
               cpu, ratio(edge_cpu, cpu), f"ratio <= {CPU_RATIO_TARGET:g}",
               None if math.isnan(cpu) else edge_cpu <= CPU_RATIO_TARGET * cpu),
        # Node-RED's values lost to InfluxDB's refusals still cost it CPU: this row leaves them out.
        Figure("fleet", f"{name}: CPU per value read (Node-RED's delivered or not)", edge_cpu, "us",
               "Node-RED, same fleet and window", read, ratio(edge_cpu, read), f"ratio <= {CPU_RATIO_TARGET:g}",
               edge_cpu <= CPU_RATIO_TARGET * read),
        Figure("fleet", "fleet scaling limit at 1 s without skips", limit, "instruments", "Node-RED, same steps",
               side_limit, ratio(limit, side_limit), SCALING_TARGET_TEXT, limit_met,
               "; ".join(filter(None, [edge_note, side_note]))),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.fleet")
    parser.add_argument("--instruments", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=50, help="simulated Modbus TCP servers (one link each)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window of the main run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window opens")
    parser.add_argument("--steps", default="2000,4000,8000,12000,16000", help="fleet sizes of the scaling steps")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="the measured window of each step")
    parser.add_argument("--no-nodered", dest="nodered", action="store_false", help="do not run Node-RED alongside")
    parser.add_argument("--quick", action="store_true", help="20 instruments for 3 s: the smoke test")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # a simulator child: comma-separated ports
    parser.add_argument("--units", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # a measured run's child: its spec as JSON
    args = parser.parse_args(argv)
    if args.one_run:
        one_run(json.loads(args.one_run))
        return 0
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            asyncio.run(serve_fleet([int(port) for port in args.serve.split(",")], args.units))
        return 0
    if args.quick:
        args.instruments, args.endpoints, args.seconds, args.warmup = 20, 4, 3.0, 1.5
        args.steps, args.step_seconds = "40", 2.0
    args.steps = [int(step) for step in args.steps.split(",") if step]
    report(asyncio.run(measure(args)), args.endpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
