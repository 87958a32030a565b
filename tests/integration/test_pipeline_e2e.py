"""The whole pipeline: YAML files -> daemon -> Modbus TCP simulator on a real port -> InfluxDB / VictoriaMetrics.

Register contents are known, so every value is checked where it lands (in the database), not only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.scheduling import STATUS_MEASUREMENT
from simulators.modbus_server import BitTable, Faults, ModbusTcpServer, RegisterMapDevice
from tests.modbus_wire import ORDERS, encode, string_registers
from tests.servers import InfluxDBv1Server, VictoriaMetricsServer

_database_names = itertools.count()

TYPE_VALUES: list[tuple[str, int | float]] = [
    ("int16", -1234),
    ("uint16", 0xBEEF),
    ("int32", -123456789),
    ("uint32", 4_000_000_000),
    ("int64", -(2**62) - 5),
    ("uint64", 2**63 - 1),
    ("float32", -123.25),
    ("float64", 6.02214076e23),
]


class KnownRegisters(RegisterMapDevice):
    """A device whose registers and bits hold fixed, known contents."""

    def __init__(self, registers: Mapping[int, int], coils: Sequence[bool]) -> None:
        self.registers = dict(registers)
        self.highest_address = max(self.registers)
        self.coils = list(coils)

    def register_values(self) -> Mapping[int, int]:
        return self.registers

    def read_bits(self, table: BitTable, address: int, count: int) -> list[bool]:
        return self.coils[address : address + count]


def known_device() -> tuple[KnownRegisters, list[dict[str, Any]], dict[str, Any]]:
    """Registers for every type in every byte order, a string, a scaled value and bits; with the rig's points."""
    registers: dict[int, int] = {}
    points: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    address = 0
    for order in ORDERS:
        for point_type, value in TYPE_VALUES:
            name = f"{point_type}_{order.lower()}"
            for offset, register in enumerate(encode(point_type, value, order)):
                registers[address + offset] = register
            points.append({"name": name, "address": address, "type": point_type, "byte_order": order})
            expected[name] = value
            address += 4
        for offset, register in enumerate(string_registers(b"F4-SIM\x00\x00", swap=order in ("BADC", "DCBA"))):
            registers[address + offset] = register
        points.append({"name": f"model_{order.lower()}", "address": address, "type": "string", "length": 8})
        points[-1]["byte_order"] = order
        expected[f"model_{order.lower()}"] = "F4-SIM"
        address += 4
    registers[500] = encode("int16", -405, "ABCD")[0]
    points.append({"name": "temp_pv", "address": 500, "type": "int16", "scale": 0.1, "unit": "degC"})
    expected["temp_pv"] = -40.5
    registers[501] = 0b0000_1000
    points.append({"name": "door_open", "address": 501, "type": "bool", "bit": 3})
    expected["door_open"] = True
    points.append({"name": "heater_on", "table": "coil", "address": 2, "type": "bool"})
    expected["heater_on"] = True
    points.append({"name": "alarm", "table": "coil", "address": 3, "type": "bool"})
    expected["alarm"] = False
    return KnownRegisters(registers, [False, False, True, False]), points, expected


def write_config(
    folder: Path, *, port: int, points: list[dict[str, Any]], outputs: str, interval: str = "200ms"
) -> Path:
    import yaml

    rig = {
        "rig": "htol-e2e",
        "tags": {"test": "HTOL", "lot": "L2611-03", "site_note": "oven 7"},
        "instruments": [
            {
                "name": "known",
                "driver": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit": 1,
                "interval": interval,
                "timeout": "300ms",
                "points": points,
            }
        ],
    }
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "htol-e2e.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "edge-daq.yaml"
    gateway.write_text(f"gateway: gw-test\nsite: lab9\nrigs: rigs.d/\noutputs:\n{textwrap.indent(outputs, '  ')}\n")
    return gateway


@contextlib.asynccontextmanager
async def running_daemon(gateway: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(gateway), drain_timeout=10)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield daemon
    finally:
        stop.set()
        report = await asyncio.wait_for(task, 20)
        assert report.complete, report.undelivered


async def wait_for_polls(daemon: Daemon, count: int, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while min(stats.polls for stats in daemon.stats.instruments) < count:
            await asyncio.sleep(0.05)


async def test_every_type_and_byte_order_lands_in_influxdb_v1(influxdb_v1: InfluxDBv1Server, tmp_path: Path) -> None:
    device, points, expected = known_device()
    database = f"e2e_types_{next(_database_names)}"
    outputs = f"influxdb:\n  url: {influxdb_v1.url}\n  api: v1\n  database: {database}\n  flush_interval: 100ms\n"
    async with ModbusTcpServer({1: device}) as server:
        gateway = write_config(tmp_path, port=server.port, points=points, outputs=outputs)
        async with running_daemon(gateway) as daemon:
            await wait_for_polls(daemon, 3)
        # The planner merged the 44 points into 4 requests per poll (registers 0..143 in two reads of at most
        # 125, registers 500..501, the coils), not one request per point.
        # (The poll that shutdown cancels may have sent only part of its requests.)
        polls = daemon.stats.instruments[0].polls
        assert 4 * (polls - 1) < server.stats.requests <= 4 * polls

    rows = await influxdb_v1.select('SELECT * FROM "known"', database=database)
    assert len(rows) == daemon.stats.instruments[0].records
    last = rows[-1]
    for name, value in expected.items():
        assert last[name] == value, name
    assert last["gateway"] == "gw-test"
    assert last["site"] == "lab9"
    assert last["rig"] == "htol-e2e"
    assert last["instrument"] == "known"
    assert last["lot"] == "L2611-03"
    assert last["site_note"] == "oven 7"  # a tag value with a space survives escaping
    # Field types are stable: integers stay integers, scaled values are floats.
    field_types = await influxdb_v1.query('SHOW FIELD KEYS FROM "known"', database=database)
    types = dict(field_types["series"][0]["values"])
    assert types["int64_abcd"] == "integer"
    assert types["temp_pv"] == "float"
    assert types["door_open"] == "boolean"
    assert types["model_abcd"] == "string"
    # Timestamps are the acquisition times in ns, one per poll, strictly increasing and not rounded.
    times = [row["time"] for row in rows]
    assert times == sorted(set(times))
    assert any(time % 1_000_000 for time in times)

    statuses = await influxdb_v1.select(f'SELECT * FROM "{STATUS_MEASUREMENT}"', database=database)
    assert statuses[0]["ok"] is True
    assert statuses[0]["instrument"] == "known"


async def test_v2_api_lands_in_victoria_metrics(victoria_metrics: VictoriaMetricsServer, tmp_path: Path) -> None:
    device, points, expected = known_device()
    outputs = (
        f"influxdb:\n  url: {victoria_metrics.url}\n  api: v2\n  org: lab\n  bucket: reliability\n"
        "  token: ${E2E_TOKEN}\n  flush_interval: 100ms\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2E_TOKEN", "not-checked-by-victoria-metrics")
        async with ModbusTcpServer({1: device}) as server:
            gateway = write_config(tmp_path, port=server.port, points=points, outputs=outputs)
            async with running_daemon(gateway) as daemon:
                await wait_for_polls(daemon, 3)

    for name in ("float32_cdab", "int32_dcba", "temp_pv", "uint16_badc"):
        series = await victoria_metrics.export(f'{{__name__="known_{name}",rig="htol-e2e"}}', min_samples=3)
        assert series, name
        assert series[0]["values"][-1] == pytest.approx(expected[name]), name
        assert series[0]["metric"]["gateway"] == "gw-test"


async def test_a_device_that_stops_answering_and_comes_back(influxdb_v1: InfluxDBv1Server, tmp_path: Path) -> None:
    device, points, _ = known_device()
    database = f"e2e_outage_{next(_database_names)}"
    outputs = f"influxdb:\n  url: {influxdb_v1.url}\n  api: v1\n  database: {database}\n  flush_interval: 100ms\n"
    server = ModbusTcpServer({1: device})
    await server.start()
    port = server.port
    gateway = write_config(tmp_path, port=port, points=points[:4], outputs=outputs, interval="100ms")
    async with running_daemon(gateway) as daemon:
        stats = daemon.stats.instruments[0]
        await wait_for_polls(daemon, 3)

        # Silent: the device keeps the connection open but never answers.
        server.faults = Faults.parse(["no-answer"])
        async with asyncio.timeout(10):
            while stats.failures < 2:
                await asyncio.sleep(0.05)
        server.faults = Faults()
        async with asyncio.timeout(10):
            while stats.consecutive_failures:
                await asyncio.sleep(0.05)

        # Gone: the server closes, connections are refused, then it comes back on the same port.
        await server.close()
        failures_before = stats.failures
        async with asyncio.timeout(10):
            while stats.failures < failures_before + 2:
                await asyncio.sleep(0.05)
        server = ModbusTcpServer({1: device}, port=port)
        await server.start()
        records_before = stats.records
        async with asyncio.timeout(15):
            while stats.records < records_before + 3:
                await asyncio.sleep(0.05)
    await server.close()

    statuses = await influxdb_v1.select(f'SELECT ok, error FROM "{STATUS_MEASUREMENT}"', database=database)
    states = [row["ok"] for row in statuses]
    # ok, then failures visible in the data, recovery, failures again, recovery.
    assert states[0] is True
    assert [state for state, _ in itertools.groupby(states)] == [True, False, True, False, True]
    errors = {row["error"] for row in statuses if row["ok"] is False}
    assert any("no response" in error for error in errors)
    assert any("connect" in error or "connection" in error for error in errors)
    rows = await influxdb_v1.select('SELECT * FROM "known"', database=database)
    assert len(rows) == stats.records
