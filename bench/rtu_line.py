"""One simulated RS-485 bus: Modbus RTU transactions per second against the line's theoretical limit, and a SCPI
instrument's poll rate through edge-daq against a raw pyserial loop on the same pseudo-terminal.

The simulators honour the baud rate (a frame of N bytes takes N * bits-per-character / baud seconds), so the
limit is the line's: per transaction, the request (8 bytes), the 3.5-character silence that ends it, the
reply (5 + 2n bytes for n registers) and the master's 3.5-character silence before the next request (1.75 ms
above 19200 baud), at 11 bits per character (8E1).

    python -m bench.rtu_line            # 3 s per measurement
    python -m bench.rtu_line --quick    # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import serial  # type: ignore[import-untyped]

from bench.common import Figure, driver_poll_rate, emit
from edge_daq.drivers.modbus.config import ModbusRtuConfig
from edge_daq.drivers.modbus.rtu import PLUGIN as RTU
from edge_daq.drivers.scpi.config import ScpiSerialConfig
from edge_daq.drivers.scpi.driver import SERIAL_PLUGIN as SCPI
from simulators import create_line_server, create_rtu_server

REGISTERS = 10
BITS = 11  # 8E1


def line_limit(baudrate: int, registers: int) -> float:
    character = BITS / baudrate
    silence = 0.00175 if baudrate > 19200 else 3.5 * character
    per_transaction = (8 + 5 + 2 * registers) * character + 2 * silence
    return 1.0 / per_transaction


async def rtu_rate(folder: Path, baudrate: int, seconds: float) -> float:
    link_path = folder / f"rtu{baudrate}"
    async with create_rtu_server("watlow-f4", link=link_path, baudrate=baudrate, parity="E", time_scale=0):
        config = ModbusRtuConfig.model_validate({
            "name": "f4", "driver": "modbus-rtu", "port": str(link_path), "baudrate": baudrate, "parity": "E",
            "timeout": 0.5, "points": [{"name": "block", "address": 100, "type": "string", "length": 2 * REGISTERS}],
        })  # fmt: skip
        return await driver_poll_rate(RTU, config, seconds, warm_up=True)


async def scpi_rates(folder: Path, baudrate: int, seconds: float) -> tuple[float, float]:
    link_path = folder / "scpi"
    async with create_line_server("keithley-2400", link=link_path, baudrate=baudrate, time_scale=0):
        config = ScpiSerialConfig.model_validate({
            "name": "smu", "driver": "scpi-serial", "port": str(link_path), "baudrate": baudrate, "timeout": 1.0,
            "points": [{"query": ":READ?", "fields": ["v", "i", "r", "t", "s"]}],
        })  # fmt: skip
        ours = await driver_poll_rate(SCPI, config, seconds)
        raw = await asyncio.to_thread(_pyserial_loop, str(link_path), baudrate, seconds)
    return ours, raw


def _pyserial_loop(port: str, baudrate: int, seconds: float) -> float:
    with serial.Serial(port, baudrate, timeout=1.0) as device:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            device.write(b":READ?\n")
            if not device.readline().endswith(b"\n"):
                raise RuntimeError("the SCPI simulator did not answer")
            count += 1
        return count / (time.perf_counter() - started)


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="edge-daq-bench-") as folder:
        print(f"Modbus RTU, FC03 of {REGISTERS} registers per transaction, 8E1, {seconds:g} s each")
        for baudrate in (19200, 115200):
            rate = await rtu_rate(Path(folder), baudrate, seconds)
            limit = line_limit(baudrate, REGISTERS)
            print(
                f"  {baudrate:>6} baud: {rate:7.1f} transactions/s, line limit {limit:7.1f}/s, ratio {rate / limit:.2f}"
            )
            emit(
                Figure(
                    benchmark="rtu_line",
                    name=f"RS-485 line efficiency at {baudrate} baud",
                    value=rate,
                    unit="transactions/s",
                    baseline="theoretical line limit",
                    baseline_value=limit,
                    ratio=rate / limit,
                    target="ratio >= 0.9",
                    met=rate / limit >= 0.9,
                )
            )
        ours, raw = await scpi_rates(Path(folder), 115200, seconds)
        print(f"SCPI :READ? on a pty at 115200 baud: edge-daq {ours:.1f} polls/s, raw pyserial loop {raw:.1f}/s")
        print(f"ratio edge-daq/pyserial: {ours / raw:.2f}")
        emit(
            Figure(
                benchmark="rtu_line",
                name="SCPI :READ? polls/s on a pty at 115200 baud",
                value=ours,
                unit="polls/s",
                baseline="raw pyserial loop",
                baseline_value=raw,
                ratio=ours / raw,
                target="none set (informative)",
                met=None,
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement (smoke test)")
    arguments = parser.parse_args()
    asyncio.run(main(0.3 if arguments.quick else 3.0))
