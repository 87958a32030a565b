"""Modbus ASCII on one simulated serial line: transactions per second through edge-daq's ``modbus-ascii`` driver
against a bare pymodbus ASCII client loop on the same pseudo-terminal, and against the line's limit.

The simulator honours the baud rate (``simulators/rtu_server.py``, ASCII mode: 7E1, 10 bits a character), so
both sides are bounded by the line: a read of 10 registers is a 17-character request and a 51-character reply.
The driver polls one instrument whose single point spans those registers (one FC03 per poll, decoded);
pymodbus awaits ``read_holding_registers`` in a loop. The two alternate in rounds (A B B A ...); the figure is
the median of the rounds' ratios.

    python -m bench.ascii_line            # 4 rounds of 2 s per side
    python -m bench.ascii_line --quick    # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Figure, driver_poll_rate, emit, ratio
from edge_daq.drivers.modbus.ascii import PLUGIN as ASCII
from edge_daq.drivers.modbus.config import ModbusAsciiConfig
from simulators import create_rtu_server

REGISTERS = 10
BAUDRATE = 19200
BITS = 10  # 7E1
TARGET = 0.9


def line_limit() -> float:
    """Transactions per second if the line carried nothing but the request and the reply, back to back."""
    characters = (1 + 2 * 7 + 2) + (1 + 2 * (3 + 2 * REGISTERS + 1) + 2)
    return BAUDRATE / (BITS * characters)


async def edge_daq_round(link_path: Path, seconds: float) -> float:
    config = ModbusAsciiConfig.model_validate({
        "name": "f4", "driver": "modbus-ascii", "port": str(link_path), "baudrate": BAUDRATE, "timeout": 0.5,
        "bytesize": 8, "parity": "N",  # as pymodbus's side: Linux refuses CS7 on a pty pyserial configured
        "points": [{"name": "block", "address": 100, "type": "string", "length": 2 * REGISTERS}],
    })  # fmt: skip
    return await driver_poll_rate(ASCII, config, seconds)


async def pymodbus_round(link_path: Path, seconds: float) -> float:
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient

    # pyserial cannot set 7E1 on a pseudo-terminal; the simulator's timing is the line's either way.
    client = AsyncModbusSerialClient(
        str(link_path), framer=FramerType.ASCII, baudrate=BAUDRATE, bytesize=8, parity="N", timeout=0.5, retries=0
    )
    if not await client.connect():
        raise RuntimeError("pymodbus could not open the pseudo-terminal")
    try:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            reply = await client.read_holding_registers(100, count=REGISTERS, device_id=1)
            if reply.isError() or len(reply.registers) != REGISTERS:
                raise RuntimeError(f"pymodbus read failed: {reply}")
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        client.close()


async def main(rounds: int, seconds: float) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="edge-daq-bench-") as folder:
        link_path = Path(folder) / "ttyAscii"
        async with create_rtu_server("watlow-f4", link=link_path, baudrate=BAUDRATE, time_scale=0, framing="ascii"):
            ours: list[float] = []
            bare: list[float] = []
            for index in range(rounds):
                if index % 2 == 0:
                    ours.append(await edge_daq_round(link_path, seconds))
                    bare.append(await pymodbus_round(link_path, seconds))
                else:
                    bare.append(await pymodbus_round(link_path, seconds))
                    ours.append(await edge_daq_round(link_path, seconds))
                print(f"  round {index + 1}: edge-daq {ours[-1]:6.1f}/s, bare pymodbus {bare[-1]:6.1f}/s")
    value = statistics.median(ratio(a, b) for a, b in zip(ours, bare, strict=True))
    mean_ours, mean_bare, limit = sum(ours) / len(ours), sum(bare) / len(bare), line_limit()
    print(f"Modbus ASCII FC03 of {REGISTERS} registers at {BAUDRATE} baud 7E1, line limit {limit:.1f}/s")
    print(f"edge-daq {mean_ours:.1f}/s, bare pymodbus {mean_bare:.1f}/s (means)")
    print(f"ratio edge-daq/pymodbus: {value:.2f}, median of the rounds (target >= {TARGET})")
    print(f"ratio edge-daq/line limit: {mean_ours / limit:.2f}")
    emit(
        Figure(
            benchmark="ascii_line",
            name=f"Modbus ASCII transactions/s at {BAUDRATE} baud",
            value=mean_ours,
            unit="transactions/s",
            baseline="bare pymodbus ASCII client loop",
            baseline_value=mean_bare,
            ratio=value,
            target=f"ratio >= {TARGET}",
            met=value >= TARGET,
            note=f"line limit {limit:.1f}/s: edge-daq at {mean_ours / limit:.2f} of it",
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.3 s (smoke test)")
    arguments = parser.parse_args()
    asyncio.run(main(2, 0.3) if arguments.quick else main(4, 2.0))
