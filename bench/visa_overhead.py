"""VISA driver overhead: polls per second of one Keithley 2400 through edge-daq's ``visa`` driver and link
scheduler, against a bare pyvisa query loop on the same simulator, in the same run.

Both go through pyvisa-py's ``TCPIP::127.0.0.1::PORT::SOCKET`` to the Keithley 2400 simulator (a process pinned
to the other core). edge-daq's side is the real path of a poll: ``LinkScheduler``, the link's worker thread
(each VISA call is handed to it and its result back to the loop), the bounded read, the SCPI reader's parse of
``:READ?`` into v and i, the record builder and the ring queue, with an interval shorter than a poll so that it
polls back to back. Two figures: the simulator answering at once, where the driver's fixed cost per query
(the hop to the worker thread and back, about 55 us on one core) weighs most, and answering after 2 ms, the
response time of a fast instrument on the LAN. The baseline is the same pyvisa calls in a plain loop on the
main thread (``write_raw``, then ``read_bytes`` up to the termination: what the driver calls; pyvisa's
``query()`` was slower than both in a trial run), with no thread hop and no parsing. The two alternate in
rounds (A B B A ...), and the figure is the median of the rounds' ratios, so that a noisy machine's drift and
bursts cancel.

    .venv/bin/python -m bench.visa_overhead            # 6 rounds of 2 s per side
    .venv/bin/python -m bench.visa_overhead --quick    # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import pin, ratio, report_overhead, scheduler_round, stop_processes
from bench.pipeline import PIPELINE_CORE, SERVER_CORE
from edge_daq.drivers.scpi.config import VisaConfig
from edge_daq.drivers.scpi.visa import PLUGIN as VISA
from tests.servers import free_port, wait_for_port

TARGET = 0.9
LATENCIES = (0.0, 0.002)
"""The simulator at once (the driver's whole cost shows), and after 2 ms (a fast LAN instrument's :READ?)."""
QUERY = ":READ?"
ELEMENTS = ":FORM:ELEM VOLT,CURR"


def resource(port: int) -> str:
    return f"TCPIP0::127.0.0.1::{port}::SOCKET"


def instrument_config(port: int) -> VisaConfig:
    config = VisaConfig.model_validate({
        "name": "bench", "driver": "visa", "resource": resource(port), "interval": 1.0, "timeout": 1.0,
        "init": [ELEMENTS], "points": [{"query": QUERY, "fields": ["v", "i"]}],
    })  # fmt: skip
    return config.model_copy(update={"interval": 1e-6})  # back to back (below what a rig file may give)


async def edge_daq_round(config: VisaConfig, seconds: float) -> float:
    """Polls per second through the scheduler for ``seconds``."""
    return await scheduler_round(VISA, config, seconds)


def pyvisa_round(port: int, seconds: float) -> float:
    import pyvisa

    manager = pyvisa.ResourceManager("@py")
    session: Any = manager.open_resource(resource(port))
    session.read_termination = session.write_termination = "\n"
    session.timeout = 1000
    session.write(ELEMENTS)
    try:
        polls, started = 0, time.perf_counter()
        deadline = started + seconds
        request = (QUERY + "\n").encode("ascii")
        while time.perf_counter() < deadline:
            session.write_raw(request)
            if session.read_bytes(64 * 1024 + 1, break_on_termchar=True).count(b",") != 1:
                raise RuntimeError("pyvisa read failed")
            polls += 1
        return polls / (time.perf_counter() - started)
    finally:
        session.close()


async def measure(port: int, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    config = instrument_config(port)
    pyvisa_round(port, min(seconds, 0.5))  # warm-up: imports, first connection
    ours: list[float] = []
    bare: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            ours.append(await edge_daq_round(config, seconds))
            bare.append(pyvisa_round(port, seconds))
        else:
            bare.append(pyvisa_round(port, seconds))
            ours.append(await edge_daq_round(config, seconds))
        print(f"  round {index + 1}: edge-daq {ours[-1]:8.1f} polls/s, bare pyvisa {bare[-1]:8.1f} polls/s")
    return ours, bare


def figure(latency: float, rounds: int, seconds: float) -> None:
    """One figure: the simulator answering at once, or after ``latency`` seconds as an instrument does."""
    port = free_port()
    command = [sys.executable, "-m", "simulators.cli", "keithley-2400", "--tcp", f"127.0.0.1:{port}"]
    command += ["--time-scale", "0", "--latency", str(latency)]
    simulator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pin(simulator.pid, SERVER_CORE)
    try:
        wait_for_port(port, within=15.0)
        where = f"answering after {latency * 1000:g} ms" if latency else "answering at once (loopback)"
        print(f"one Keithley 2400 over pyvisa-py SOCKET {where}, {QUERY} -> v, i; {rounds} A/B rounds")
        ours, bare = asyncio.run(measure(port, rounds, seconds))
    finally:
        stop_processes([simulator])
    # The median of the rounds' ratios, pair by pair: a round that another process slowed moves one pair, not
    # the figure (the ratio of the means follows whichever side the noise hit hardest).
    report_overhead(
        benchmark="visa_overhead",
        name=f"VISA driver: :READ? polls/s through pyvisa-py SOCKET, simulator {where}",
        library="pyvisa",
        baseline="bare pyvisa loop (write_raw, read_bytes)",
        ours=ours,
        bare=bare,
        target=TARGET,
        value=statistics.median(ratio(a, b) for a, b in zip(ours, bare, strict=True)),
        how=", median of the rounds",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.visa_overhead")
    parser.add_argument("--rounds", type=int, default=6, help="A/B rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per side and round")
    parser.add_argument("--quick", action="store_true", help="a second or two, for the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    pin(0, PIPELINE_CORE)
    for latency in LATENCIES[:1] if args.quick else LATENCIES:  # the smoke test: one simulator is enough
        figure(latency, args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
