"""The shipped mixed example (config/examples/mixed-lab.yaml) end to end: an OPC UA chamber (polled and
subscribed), a Modbus TCP burn-in board, a Keithley 2400 on a pseudo-terminal (scpi-serial), a DAQ970A through
VISA (pyvisa-py, raw socket) and a Watlow F4 register map on Modbus ASCII (a pseudo-terminal), into a real
InfluxDB.

The rig file is the shipped one; only the addresses (free ports, the pty, the test's InfluxDB) are rewritten.
The models are frozen (time_scale 0), so every value that lands is checked against what the simulators serve.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.scheduling import STATUS_MEASUREMENT
from simulators import create_line_server, create_rtu_server, serve, serve_opcua
from tests.servers import InfluxDBv1Server

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples"
_database_names = itertools.count()


def rewritten_rig(
    folder: Path, *, endpoint: str, board_port: int, smu_line: Path, daq_port: int, ascii_line: Path
) -> None:
    rig: dict[str, Any] = yaml.safe_load((EXAMPLE / "mixed-rigs.d" / "thb-12.yaml").read_text())
    for instrument in rig["instruments"]:
        if instrument.get("endpoint"):
            instrument["endpoint"] = endpoint
        if instrument["name"] == "board":
            instrument["port"] = board_port
        if instrument["name"] == "bias":
            instrument["port"] = str(smu_line)
        if instrument["name"] == "loads":
            instrument["resource"] = f"TCPIP0::127.0.0.1::{daq_port}::SOCKET"
        if instrument["name"] == "humidifier":
            instrument["port"] = str(ascii_line)
        # Short intervals: the test needs a few polls of each, not a lab's cadence.
        instrument["interval"] = "300ms" if instrument["name"] not in {"bias", "loads", "humidifier"} else "500ms"
    (folder / "mixed-rigs.d").mkdir()
    (folder / "mixed-rigs.d" / "thb-12.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))


async def test_the_mixed_example_lands_in_influxdb_with_every_value_right(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    database = f"mixed_e2e_{next(_database_names)}"
    smu_line = tmp_path / "ttySMU01"
    smu = create_line_server("keithley-2400", link=smu_line, baudrate=9600, seed=1, time_scale=0, voltage=3.3)
    daq = create_line_server("keysight-daq970a", tcp=("127.0.0.1", 0), seed=3, time_scale=0)
    ascii_line = tmp_path / "ttyRH01"
    humidifier = create_rtu_server(
        "watlow-f4", link=ascii_line, units=[1], seed=1, time_scale=0, baudrate=9600, framing="ascii"
    )
    async with (
        serve_opcua(seed=1, time_scale=0, setpoint=85.0) as chamber,
        serve("burnin-board", seed=1, time_scale=0) as board,
        smu,
        daq,
        humidifier,
    ):
        rewritten_rig(
            tmp_path,
            endpoint=chamber.endpoint,
            board_port=board.port,
            smu_line=smu_line,
            daq_port=daq.port,
            ascii_line=ascii_line,
        )
        gateway: dict[str, Any] = yaml.safe_load((EXAMPLE / "mixed-lab.yaml").read_text())
        gateway["outputs"]["influxdb"] |= {"url": influxdb_v1.url, "database": database, "flush_interval": "100ms"}
        gateway_path = tmp_path / "mixed-lab.yaml"
        gateway_path.write_text(yaml.safe_dump(gateway, sort_keys=False))
        daemon = Daemon(load_config(gateway_path))
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        polled = [stats for stats in daemon.stats.instruments if stats.instrument != "chamber-events"]
        async with asyncio.timeout(20):
            while min(stats.records for stats in polled) < 3:
                await asyncio.sleep(0.1)
        stop.set()
        report = await asyncio.wait_for(run, 20)
        registers = board.devices[1].register_values()  # type: ignore[attr-defined]
        f4_registers = humidifier.devices[1].register_values()  # type: ignore[attr-defined]
    assert report.complete
    assert all(stats.failures == 0 for stats in daemon.stats.instruments), daemon.stats.instruments
    scan = chamber.history[-1][1]  # frozen: every update served the same scan

    rows = await influxdb_v1.select('SELECT * FROM "chamber"', database=database)
    assert len(rows) >= 3
    last = rows[-1]
    assert last["temp_pv"] == scan.air
    assert last["temp_load"] == scan.load
    assert last["temp_sp"] == 85.0
    assert last["power_pct"] == scan.power
    assert last["door_open"] is False
    assert last["serial_number"] == chamber.device.serial_number
    assert (last["gateway"], last["site"], last["rig"], last["lot"]) == ("gw-lab4-01", "lab4", "thb-12", "L2611-07")
    keys = await influxdb_v1.query('SHOW FIELD KEYS FROM "chamber"', database=database)
    assert dict(keys["series"][0]["values"])["serial_number"] == "integer"

    # Subscribed: the frozen chamber changes nothing after the first notification, which carries the
    # server's source timestamp of the value.
    events = await influxdb_v1.select('SELECT * FROM "chamber-events"', database=database)
    assert len(events) == 1
    assert (events[0]["door_open"], events[0]["temp_sp"]) == (False, 85.0)
    assert events[0]["time"] in {at for at, _ in chamber.history}

    board_rows = await influxdb_v1.select('SELECT * FROM "board"', database=database)
    high, low = registers[30], registers[31]
    temperature = registers[10] - 0x10000 if registers[10] & 0x8000 else registers[10]
    assert board_rows[-1]["board_temp"] == pytest.approx(temperature * 0.1)
    assert board_rows[-1]["bias_enable"] == registers[20] == 1
    assert board_rows[-1]["supply_setpoint"] == pytest.approx(registers[21] * 0.001)
    assert board_rows[-1]["stress_time"] == (high << 16) | low

    bias = await influxdb_v1.select('SELECT * FROM "bias"', database=database)
    assert bias[-1]["v"] == pytest.approx(3.3)
    assert 0 < bias[-1]["i"] < 0.105
    assert bias[-1]["scpi_errors"] == 0

    loads = await influxdb_v1.select('SELECT * FROM "loads"', database=database)
    temperatures = {key: value for key, value in loads[-1].items() if key.startswith("t1") and value is not None}
    assert sorted(temperatures) == [f"t{channel}" for channel in range(101, 111)]
    assert all(isinstance(value, float) and -50 < value < 200 for value in temperatures.values())
    assert loads[-1]["scpi_errors"] == 0

    def signed(register: int) -> int:
        return register - 0x10000 if register & 0x8000 else register

    humid = await influxdb_v1.select('SELECT * FROM "humidifier"', database=database)
    assert humid[-1]["model_code"] == f4_registers[0] == 5270
    assert humid[-1]["temp_pv"] == pytest.approx(signed(f4_registers[100]) * 0.1)
    assert humid[-1]["power_pct"] == pytest.approx(signed(f4_registers[103]) * 0.01)
    assert humid[-1]["temp_sp"] == pytest.approx(signed(f4_registers[300]) * 0.1)

    statuses = await influxdb_v1.select(f'SELECT * FROM "{STATUS_MEASUREMENT}"', database=database)
    expected = {"chamber", "chamber-events", "board", "bias", "loads", "humidifier"}
    assert {row["instrument"] for row in statuses} == expected
    assert all(row["ok"] is True for row in statuses)
