"""Run every benchmark, print the table of figures and write ``bench/RESULTS.md``.

    .venv/bin/python -m bench              # the full suite (about 11 minutes on a 2-core gateway)
    .venv/bin/python -m bench --quick      # every benchmark in its smoke-test size (under 2 minutes)
    .venv/bin/python -m bench --only pipeline,startup

Each benchmark runs in its own process, one after the other (they pin cores and must not overlap). Each
figure is a ratio against a baseline measured in the same run on the same machine, because gateways are noisy.
A benchmark that fails or times out is reported as such in the table; the others still run. The full output
of each benchmark goes to ``bench/.work/logs/``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Figure

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Run order and per-benchmark time limit (seconds) of the full run; the quick run passes --quick to each.
BENCHMARKS: tuple[tuple[str, float], ...] = (
    ("pipeline", 180),
    ("driver_overhead", 120),
    ("visa_overhead", 120),
    ("opcua_driver", 120),
    ("fleet", 540),
    ("page", 300),
    ("rtu_line", 120),
    ("ascii_line", 60),
    ("backlog", 300),
    ("startup", 180),
    ("mqtt", 120),
    ("write_latency", 60),
)


@dataclass(slots=True)
class Outcome:
    benchmark: str
    command: list[str]
    seconds: float
    returncode: int | None  # None: timed out
    figures: list[Figure] = field(default_factory=list)
    tail: str = ""


def run_one(name: str, limit: float, extra: list[str], logs: Path) -> Outcome:
    command = [sys.executable, "-m", f"bench.{name}", *extra]
    log_path = logs / f"{name}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        try:
            result = subprocess.run(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, timeout=limit, check=False
            )
            stdout, returncode = result.stdout, result.returncode
        except subprocess.TimeoutExpired as expired:
            stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            returncode = None
        log.write(stdout)
    outcome = Outcome(name, command, time.perf_counter() - started, returncode)
    for line in stdout.splitlines():
        figure = Figure.parse(line)
        if figure is not None:
            outcome.figures.append(figure)
        else:
            print(f"    {line}")
    if returncode != 0:
        outcome.tail = "\n".join(log_path.read_text().splitlines()[-15:])
    return outcome


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": f"{os.cpu_count()} (usable by the run: {len(os.sched_getaffinity(0))})",
        "memory": f"{total_kb / 1024**2:.1f} GiB",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
    }


def number(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def rows(outcomes: list[Outcome]) -> list[list[str]]:
    table = []
    for outcome in outcomes:
        for figure in outcome.figures:
            baseline = f"{figure.baseline}: {number(figure.baseline_value)}"
            state = verdict(figure.met) + (f" ({figure.note})" if figure.note else "")
            value = f"{number(figure.value)} {figure.unit}"
            table.append([figure.name, value, baseline, number(figure.ratio), figure.target, state])
        if outcome.returncode != 0:
            state = "timed out" if outcome.returncode is None else f"failed (exit {outcome.returncode})"
            table.append([f"{outcome.benchmark}: {state}", "", "", "", "", "see bench/.work/logs"])
    return table


HEADER = ["figure", "value", "baseline (same run)", "ratio", "target", "verdict"]


def print_table(table: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [HEADER, *table]) for i in range(len(HEADER))]
    for row in [HEADER, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def write_results(path: Path, outcomes: list[Outcome], table: list[list[str]], command: str, total: float) -> None:
    lines = [
        "# edge-daq benchmark results",
        "",
        f"Produced by `{command}` in {total / 60:.1f} minutes. Every figure is a ratio against a baseline measured",
        "in the same run on the same machine. Regenerate with the same command; see `bench/__main__.py`.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        "",
        "## Figures",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table],
        "",
        "## Runs",
        "",
        *[
            f"- `{' '.join(['python', *o.command[1:]])}`: {o.seconds:.0f} s, "
            + ("timed out" if o.returncode is None else f"exit {o.returncode}")
            for o in outcomes
        ],
        "",
    ]
    notes = BENCH / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in its smoke-test size")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="where to write the results")
    args = parser.parse_args(argv)
    names = [name for name, _ in BENCHMARKS]
    chosen = names if not args.only else [name.strip() for name in args.only.split(",")]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    logs = BENCH / ".work" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    extra = ["--quick"] if args.quick else []
    outcomes = []
    started = time.perf_counter()
    for name, limit in BENCHMARKS:
        if name not in chosen:
            continue
        print(f"== bench.{name} {' '.join(extra)}", flush=True)
        outcome = run_one(name, limit, extra, logs)
        print(f"   {outcome.seconds:.0f} s, {len(outcome.figures)} figure(s)", flush=True)
        if outcome.tail:
            print(outcome.tail)
        outcomes.append(outcome)
    total = time.perf_counter() - started
    table = rows(outcomes)
    print()
    print_table(table)
    command = " ".join([".venv/bin/python -m bench", *(argv if argv is not None else sys.argv[1:])])
    write_results(args.results, outcomes, table, command, total)
    print(f"\n{len(outcomes)} benchmarks in {total / 60:.1f} min; results in {args.results}")
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
