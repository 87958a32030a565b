"""Helpers shared by the benchmarks: core pinning, free ports, /proc readings and the figure lines.

Every benchmark prints its own human-readable report, plus one ``FIGURE {json}`` line per figure for
``python -m bench`` to collect into the table and ``bench/RESULTS.md``. A figure is a measured value, the
baseline measured in the same run, their ratio and the target the issue sets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


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
