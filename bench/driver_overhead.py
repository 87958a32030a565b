"""Driver overhead: polls per second of one Modbus TCP instrument through edge-daq's driver and link scheduler,
against a bare pymodbus loop reading the same registers from the same simulator, in the same run.

The instrument has 30 points (24 scaled int16, 6 word-swapped float32) in one block of 36 holding registers.
edge-daq's side is the real path of a poll: ``LinkScheduler`` (due times, lateness, stats), the link's lock,
timer and MBAP framing (``edge_daq/drivers/modbus/tcp.py``, its own since this benchmark showed pymodbus's
client to be the bottleneck), the compiled decoder, the record builder and the ring queue, with an interval
shorter than a poll so that it polls back to back. The baseline is ``await client.read_holding_registers(...)``
in a loop, with no decoding. The two alternate in rounds (A B B A ...) so that drift of a noisy machine cancels. The
benchmark is pinned to one core and the simulator to the other.

    .venv/bin/python -m bench.driver_overhead            # 6 rounds of 2 s per side
    .venv/bin/python -m bench.driver_overhead --quick    # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from pymodbus.client import AsyncModbusTcpClient

from bench import pipeline
from bench.common import (
    BLOCK_REGISTERS,
    instrument_points,
    pin,
    report_overhead,
    scheduler_round,
    stop_processes,
)
from edge_daq.drivers.modbus.config import ModbusTcpConfig
from edge_daq.drivers.modbus.tcp import PLUGIN as MODBUS_TCP

TARGET = 0.9


def instrument_config(port: int) -> ModbusTcpConfig:
    config = ModbusTcpConfig.model_validate({
        "name": "bench", "driver": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": 1,
        "interval": 1.0, "timeout": 1.0, "points": instrument_points(),
    })  # fmt: skip
    # Shorter than any poll: the scheduler polls back to back (every cycle counts as skipped, by design). Below
    # the 1 ms that a rig file may give, so set past validation.
    return config.model_copy(update={"interval": 1e-6})


async def edge_daq_round(config: ModbusTcpConfig, seconds: float) -> float:
    """Polls per second through the scheduler for ``seconds``."""
    return await scheduler_round(MODBUS_TCP, config, seconds)


async def pymodbus_round(port: int, seconds: float) -> float:
    """Polls per second of a bare pymodbus read loop for ``seconds``."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise RuntimeError("pymodbus could not connect to the simulator")
    try:
        polls, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            response = await client.read_holding_registers(0, count=BLOCK_REGISTERS, device_id=1)
            if response.isError() or len(response.registers) != BLOCK_REGISTERS:
                raise RuntimeError(f"pymodbus read failed: {response}")
            polls += 1
        return polls / (time.perf_counter() - started)
    finally:
        client.close()


async def measure(port: int, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    config = instrument_config(port)
    await pymodbus_round(port, min(seconds, 0.5))  # warm-up: imports, first connection
    ours: list[float] = []
    bare: list[float] = []
    for round_index in range(rounds):
        # A B, then B A: a drift over the run weighs on both sides alike.
        if round_index % 2 == 0:
            ours.append(await edge_daq_round(config, seconds))
            bare.append(await pymodbus_round(port, seconds))
        else:
            bare.append(await pymodbus_round(port, seconds))
            ours.append(await edge_daq_round(config, seconds))
        print(f"  round {round_index + 1}: edge-daq {ours[-1]:8.1f} polls/s, bare pymodbus {bare[-1]:8.1f} polls/s")
    return ours, bare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.driver_overhead")
    parser.add_argument("--rounds", type=int, default=6, help="A/B rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per side and round")
    parser.add_argument("--quick", action="store_true", help="a second or two, for the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    # Stopping a round cancels a poll in flight; pymodbus then logs its late reply at error level.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    pin(0, pipeline.PIPELINE_CORE)
    simulators, ports = pipeline.start_simulators(1)
    try:
        print(f"one Modbus TCP instrument, 30 points in {BLOCK_REGISTERS} registers, {args.rounds} A/B rounds")
        ours, bare = asyncio.run(measure(ports[0], args.rounds, args.seconds))
    finally:
        stop_processes(simulators)
    report_overhead(
        benchmark="driver_overhead",
        name="driver overhead: polls/s of one Modbus TCP instrument",
        library="pymodbus",
        baseline="bare pymodbus read loop",
        ours=ours,
        bare=bare,
        target=TARGET,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
