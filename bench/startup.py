"""Start-up: ``edge-daq check`` and ``edge-daq run`` up to READY on a generated 1000-instrument gateway config,
each against the same command on a one-instrument config, measured in the same run (targets: check under 2 s,
READY under 1 s).

The big config is what a room of fifty rigs looks like: 50 rig files of 20 Modbus TCP instruments; half of the
instruments name a shipped profile (``watlow-f4``), half list 30 points of their own. READY is the sd_notify
datagram the daemon sends once its pipeline runs (``Type=notify``): the benchmark binds the ``NOTIFY_SOCKET``
and times from process start to the datagram. The instruments' addresses are closed loopback ports, so the
daemon has nothing to talk to after READY; it is stopped with SIGTERM. Each measurement is the median of
``--repeats`` runs, alternating the two configs. READY is also given in CPU seconds of the daemon process
(user + system from ``/proc``, read at the datagram): on a shared machine they vary less than the wall clock.

The commands run with a bytecode cache (``PYTHONPYCACHEPREFIX`` in the temporary folder, warmed by one run
before the measured ones), as an installed package has its ``.pyc`` files compiled at install: an environment
with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every module from source on every start (py-spy:
12 % of READY on 1000 instruments in ``source_to_code``).

    .venv/bin/python -m bench.startup            # 5 repeats
    .venv/bin/python -m bench.startup --quick    # the smoke test
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, emit, free_port, instrument_points, ratio

CHECK_TARGET_SECONDS = 2.0
READY_TARGET_SECONDS = 1.0  # issue 20
EDGE_DAQ = [sys.executable, "-m", "edge_daq"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bytecode_environ(folder: Path) -> dict[str, str]:
    """The environment of the measured commands: compiled modules cached in ``folder``, as once installed."""
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    environ["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    return environ


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def point_lines(indent: str) -> list[str]:
    lines = []
    for point in instrument_points():
        body = ", ".join(f"{key}: {value}" for key, value in point.items())
        lines.append(f"{indent}- {{{body}}}")
    return lines


def write_config(folder: Path, rigs: int, per_rig: int) -> Path:
    """A gateway file with ``rigs`` rig files of ``per_rig`` instruments; returns the gateway file's path."""
    folder.mkdir(parents=True)
    (folder / "rigs.d").mkdir()
    closed_port = free_port()  # nothing listens there: the daemon's connects are refused at once
    points = point_lines("      ")
    for rig in range(rigs):
        lines = [f"rig: rig-{rig:03d}", "tags: {test: HTOL, product: PMIC-A3, lot: L2611-03}", "instruments:"]
        for unit in range(1, per_rig + 1):
            lines += [f"  - name: i{unit:02d}", "    host: 127.0.0.1", f"    port: {closed_port}", f"    unit: {unit}"]
            lines += ["    interval: 1s", "    timeout: 500ms"]
            if unit % 2:
                lines.append("    profile: watlow-f4")
            else:
                lines += ["    driver: modbus-tcp", f"    tags: {{socket: S{unit:02d}}}", "    points:", *points]
        (folder / "rigs.d" / f"rig-{rig:03d}.yaml").write_text("\n".join(lines) + "\n")
    gateway = folder / "edge-daq.yaml"
    gateway.write_text(
        f"gateway: gw-bench\nrigs: rigs.d/\nhttp: {{listen: 127.0.0.1:{free_port()}}}\n"
        f"outputs:\n  file: {{dir: {folder / 'archive'}}}\nlog: {{level: warning}}\n"
    )
    return gateway


def time_check(gateway: Path, environ: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [*EDGE_DAQ, "check", str(gateway)], capture_output=True, text=True, check=False, env=environ
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"edge-daq check failed:\n{result.stdout}{result.stderr}")
    return elapsed


def time_ready(gateway: Path, folder: Path, environ: dict[str, str]) -> tuple[float, float]:
    """Seconds from starting ``edge-daq run`` to its READY=1 datagram, and the daemon's CPU seconds by then."""
    address = str(folder / f"notify-{time.monotonic_ns()}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(60)
        environ = {**environ, "NOTIFY_SOCKET": address}
        started = time.perf_counter()
        process = subprocess.Popen(
            [*EDGE_DAQ, "run", "-c", str(gateway)],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while True:
                try:
                    message = notify.recv(4096)
                except TimeoutError:
                    raise RuntimeError("no READY=1 within 60 s") from None
                if b"READY=1" in message.split(b"\n"):
                    return time.perf_counter() - started, cpu_seconds(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
            if process.returncode != 0:
                raise RuntimeError(f"edge-daq run exited with {process.returncode}:\n{errors.decode()}")
            os.unlink(address)


def time_import(environ: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import edge_daq.daemon"], check=True, env=environ)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.startup")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement (the median counts)")
    parser.add_argument("--rigs", type=int, default=50)
    parser.add_argument("--per-rig", type=int, default=20, help="instruments per rig file")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.rigs, args.per_rig = 1, 5, 4
    instruments = args.rigs * args.per_rig
    with tempfile.TemporaryDirectory(prefix="edge-daq-startup-") as folder:
        root = Path(folder)
        big = write_config(root / "big", args.rigs, args.per_rig)
        small = write_config(root / "small", 1, 1)
        environ = bytecode_environ(root)
        time_ready(small, root, environ)  # compiles the modules into the cache
        check_big: list[float] = []
        check_small: list[float] = []
        ready_big: list[float] = []
        ready_small: list[float] = []
        cpu_big: list[float] = []
        cpu_small: list[float] = []
        for _ in range(args.repeats):
            check_small.append(time_check(small, environ))
            check_big.append(time_check(big, environ))
            for gateway, walls, cpus in ((small, ready_small, cpu_small), (big, ready_big, cpu_big)):
                wall, cpu = time_ready(gateway, root, environ)
                walls.append(wall)
                cpus.append(cpu)
        imports = statistics.median(time_import(environ) for _ in range(args.repeats))
    figures = [
        ("check", "edge-daq check", statistics.median(check_big), statistics.median(check_small), CHECK_TARGET_SECONDS),
        (
            "ready",
            "edge-daq run to READY",
            statistics.median(ready_big),
            statistics.median(ready_small),
            READY_TARGET_SECONDS,
        ),
        (
            "ready_cpu",
            "edge-daq run to READY (CPU s)",
            statistics.median(cpu_big),
            statistics.median(cpu_small),
            READY_TARGET_SECONDS,
        ),
    ]
    print(f"start-up on {instruments} instruments ({args.rigs} rig files), median of {args.repeats} runs")
    print(f"  python -c 'import edge_daq.daemon': {imports:.2f} s")
    for key, what, value, baseline, target in figures:
        print(f"  {what}: {value:.2f} s; with 1 instrument {baseline:.2f} s; ratio {ratio(value, baseline):.2f}")
        emit(
            Figure(
                benchmark="startup",
                name=f"start-up: {what}, {instruments} instruments",
                value=value,
                unit="s",
                baseline=f"{what}, 1 instrument",
                baseline_value=baseline,
                ratio=ratio(value, baseline),
                target=f"under {target:g} s",
                met=value < target,
            )
        )
        print(f"{key}: {value:.2f} s (target < {target:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
