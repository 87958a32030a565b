"""Helpers shared by the benchmarks: core pinning, simulator processes, /proc readings and the figure lines.

Every benchmark prints its own human-readable report, plus one ``FIGURE {json}`` line per figure for
``python -m bench`` to collect into the table and ``bench/RESULTS.md``. A figure is a measured value, the
baseline measured in the same run, their ratio and the target the issue sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from edge_daq.buffer.ring import RingBuffer
from edge_daq.drivers.base import Instrument, InstrumentConfig, Link
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from tests.servers import free_port, free_ports, wait_for_port

__all__ = ["free_port", "free_ports"]  # re-exported: the benchmarks take every helper from here

FIGURE_PREFIX = "FIGURE "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the results table.

    ``ratio`` is ``value / baseline_value`` (the direction a target reads, e.g. "at least 0.9" or "at most
    1.0"); ``met`` is None when the benchmark cannot judge it (a skipped comparison).
    """

    benchmark: str
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str
    met: bool | None
    note: str = ""

    def line(self) -> str:
        return FIGURE_PREFIX + json.dumps(asdict(self))

    @classmethod
    def parse(cls, line: str) -> Figure | None:
        if not line.startswith(FIGURE_PREFIX):
            return None
        return cls(**json.loads(line[len(FIGURE_PREFIX) :]))


def emit(figure: Figure) -> None:
    print(figure.line(), flush=True)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def pin(pid: int, cores: set[int]) -> None:
    """Pin a process (0: this one) and every thread it has to ``cores`` when the machine has them; a no-op on a
    smaller machine. Threads it starts later inherit the pinning.

    Every thread, not only the main one: ``sched_setaffinity`` sets one thread's mask, and influxd (Go) has
    started its other threads by the time it listens, which then ran on both cores, the benchmark's too.
    """
    if not cores <= set(range(os.cpu_count() or 1)):
        return
    for task in os.listdir(f"/proc/{pid or 'self'}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cores)


def start_servers(
    module: str, option: str, ports: list[int], *, cores: set[int], extra: Sequence[str] = (), processes: int = 2
) -> list[subprocess.Popen[bytes]]:
    """Simulator processes ``python -m MODULE OPTION PORT,PORT,... EXTRA``, each serving its share of ``ports``,
    pinned to ``cores``; returns once every port listens (and stops them if one does not)."""
    children = []
    for index in range(min(processes, len(ports))):
        share = ",".join(map(str, ports[index::processes]))
        command = [sys.executable, "-m", module, option, share, *extra]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pin(child.pid, cores)
        children.append(child)
    try:
        for port in ports:
            wait_for_port(port, within=15.0)
    except TimeoutError:
        stop_processes(children)
        raise
    return children


def stop_processes(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait(10)


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB (from /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / 1e6


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of a process, children not included (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# The instrument shape of the driver-overhead and fleet benchmarks: 30 points in one contiguous block of
# 36 holding registers, as a typical chamber controller or DAQ unit exposes them.
INT16_POINTS = 24
FLOAT32_POINTS = 6
BLOCK_REGISTERS = INT16_POINTS + 2 * FLOAT32_POINTS


def instrument_points() -> list[dict[str, object]]:
    """The 30 points (24 scaled int16, 6 word-swapped float32) as rig-file mappings."""
    points: list[dict[str, object]] = [
        {"name": f"t{n:02d}", "address": n, "type": "int16", "scale": 0.1} for n in range(INT16_POINTS)
    ]
    points += [
        {"name": f"f{n:02d}", "address": INT16_POINTS + 2 * n, "type": "float32", "byte_order": "CDAB"}
        for n in range(FLOAT32_POINTS)
    ]
    return points


async def scheduler_round(plugin: Any, config: Any, seconds: float, *, open_first: bool = False) -> float:
    """Polls per second of one instrument through edge-daq's scheduler for ``seconds``, polling back to back.

    ``open_first``: the link is opened before the timed part (a session set up once, as the baseline's is).
    Raises if a poll failed or a record was not emitted: a fast figure of failing polls is no figure.
    """
    stats = InstrumentStats(rig="bench", instrument=config.name, link="bench")
    scheduled = ScheduledInstrument(
        instrument=cast(Instrument[InstrumentConfig, Link], plugin.make_instrument(config)),
        builder=RecordBuilder(config, {"gateway": "gw-bench", "rig": "bench"}),
        stats=stats,
    )
    ring = RingBuffer(10_000)
    link = plugin.open_link([config])
    if open_first:
        await link.open()
    scheduler = LinkScheduler(link=link, instruments=[scheduled], emit=ring.append)
    task = asyncio.create_task(scheduler.run(), name="bench scheduler")
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    scheduler.request_stop()  # the poll under way completes and emits its record: none is counted as abandoned
    polls, elapsed = stats.polls, time.perf_counter() - started
    await task
    if stats.failures or stats.failed_points or ring.appended < polls:
        raise RuntimeError(f"edge-daq polls failed: {stats.failures} failures, last error {stats.last_error!r}")
    return polls / elapsed


async def driver_poll_rate(plugin: Any, config: Any, seconds: float, *, warm_up: bool = False) -> float:
    """Polls per second of one instrument through its driver alone (no scheduler), polled back to back on a link
    opened before the timed part, as the bare library loops it is compared with are."""
    link = plugin.open_link([config])
    instrument = plugin.make_instrument(config)
    await link.open()
    try:
        if warm_up:
            await instrument.poll(link)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await instrument.poll(link)
            count += 1
        return float(count / (time.perf_counter() - started))
    finally:
        await link.close()


def report_overhead(
    *, benchmark: str, name: str, library: str, baseline: str, ours: Sequence[float], bare: Sequence[float],
    target: float, value: float | None = None, how: str = "",
) -> None:  # fmt: skip
    """Print and emit an A/B overhead figure: edge-daq's mean rate against the bare ``library`` loop's.

    ``value``: the figure's ratio when it is not the ratio of the means (``how`` says what it is instead).
    """
    mean_ours, mean_bare = sum(ours) / len(ours), sum(bare) / len(bare)
    value = ratio(mean_ours, mean_bare) if value is None else value
    print(f"edge-daq {mean_ours:.1f} polls/s, bare {library} {mean_bare:.1f} polls/s" + (" (means)" if how else ""))
    print(f"ratio edge-daq/{library}: {value:.2f}{how} (target >= {target})")
    emit(
        Figure(
            benchmark=benchmark,
            name=name,
            value=mean_ours,
            unit="polls/s",
            baseline=baseline,
            baseline_value=mean_bare,
            ratio=value,
            target=f"ratio >= {target}",
            met=value >= target,
        )
    )
