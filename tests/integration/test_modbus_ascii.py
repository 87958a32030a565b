"""``driver: modbus-ascii`` against the serial Modbus simulator's ASCII mode, on real pseudo-terminals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq.config.yaml_loader import parse_yaml
from edge_daq.drivers import config_model, gateway_check, plugin
from edge_daq.drivers.base import PlacedInstrument
from edge_daq.drivers.modbus.ascii import PLUGIN, AsciiLink, ascii_frame, lrc
from edge_daq.drivers.modbus.ascii import AsciiLink as _AsciiLink
from edge_daq.drivers.modbus.config import ModbusAsciiConfig, ModbusRtuConfig
from edge_daq.drivers.modbus.rtu import ModbusRtuInstrument
from edge_daq.errors import DriverProtocolError, DriverTimeoutError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import ModbusRtuServer, create_rtu_server

REPO = Path(__file__).resolve().parents[2]
F4_PROFILE: dict[str, Any] = yaml.safe_load((REPO / "config/profiles/watlow-f4.yaml").read_text())


def ascii_config(port: str | Path, unit: int = 1, **overrides: Any) -> ModbusAsciiConfig:
    data: dict[str, Any] = {
        "name": f"u{unit}",
        "driver": "modbus-ascii",
        "port": str(port),
        "unit": unit,
        "timeout": 0.2,
        "points": [{"name": "model", "address": 0}, {"name": "pv", "address": 100, "type": "int16", "scale": 0.1}],
    }
    return ModbusAsciiConfig.model_validate(data | overrides)


@pytest.fixture
async def f4_ascii_bus(tmp_path: Path) -> AsyncIterator[ModbusRtuServer]:
    async with create_rtu_server(
        "watlow-f4", link=tmp_path / "ttyA", units=[1, 2, 3], seed=1, time_scale=0, baudrate=9600, framing="ascii"
    ) as server:
        yield server


async def open_link(configs: list[ModbusAsciiConfig]) -> AsciiLink:
    link = PLUGIN.open_link(configs)
    assert isinstance(link, _AsciiLink)
    await link.open()
    return link


def test_lrc_and_frame_match_the_modbus_spec() -> None:
    # Modbus over Serial Line 2.5.2.2: read 1 holding register at 0 of unit 1 is ":010300000001FB" CR LF.
    assert ascii_frame(1, bytes.fromhex("0300000001")) == b":010300000001FB\r\n"
    assert lrc(bytes.fromhex("0103000000 01")) == 0xFB
    assert config_model("modbus-ascii") is ModbusAsciiConfig
    assert plugin("modbus-ascii") is PLUGIN
    config = ascii_config("/dev/ttyUSB3")
    assert (config.baudrate, config.bytesize, config.parity) == (9600, 7, "E")
    assert PLUGIN.link_key(config) == "/dev/ttyUSB3"


def test_check_refuses_ascii_and_rtu_on_one_port() -> None:
    source, _ = parse_yaml("- {name: a, driver: modbus-ascii, port: /dev/ttyUSB0}\n", "rig.yaml")
    assert isinstance(source, list)
    ascii_one = ascii_config("/dev/ttyUSB0", 1)
    rtu_one = ModbusRtuConfig.model_validate(
        {
            "name": "r",
            "driver": "modbus-rtu",
            "port": "/dev/ttyUSB0",
            "unit": 2,
            "points": [{"name": "a", "address": 9}],
        }
    )
    check = gateway_check("modbus-ascii")
    assert check is not None
    assert check is gateway_check("modbus-rtu")
    issues = check([PlacedInstrument(ascii_one, source[0]), PlacedInstrument(rtu_one, source[0])])
    assert [str(issue) for issue in issues] == [
        "rig.yaml:1:21: instrument 'r' speaks Modbus RTU on /dev/ttyUSB0, where instrument 'u1' (rig.yaml:1:3) "
        "speaks Modbus ASCII: one serial line has one framing"
    ]


async def test_reads_the_f4_profile(f4_ascii_bus: ModbusRtuServer) -> None:
    merged = F4_PROFILE | {"name": "chamber", "driver": "modbus-ascii", "port": str(f4_ascii_bus.link), "unit": 3}
    del merged["profile"]
    config = ModbusAsciiConfig.model_validate(merged)
    link = await open_link([config])
    try:
        result = await PLUGIN.make_instrument(config).poll(link)
    finally:
        await link.close()
    assert result.failed == []
    assert result.fields["model_code"] == 5270
    assert result.fields["temp_sp"] == pytest.approx(125.0)


async def test_lrc_errors_are_reported_and_the_bus_goes_on(tmp_path: Path) -> None:
    async with create_rtu_server(
        "watlow-f4", link=tmp_path / "tty", units=[1, 2], faults=["crc-error:2", "garbage"], time_scale=0,
        framing="ascii",
    ) as server:  # fmt: skip
        good, bad = ascii_config(server.link or "", 1), ascii_config(server.link or "", 2)
        link = await open_link([good, bad])
        try:
            with pytest.raises(DriverProtocolError, match="LRC error"):
                await ModbusRtuInstrument(bad).poll(link)
            for _ in range(3):
                assert (await ModbusRtuInstrument(good).poll(link)).fields["model"] == 5270
        finally:
            await link.close()
        assert link.stats.crc_errors == 2  # both reads of the poll
        assert link.stats.stale_bytes >= 3 * 3  # the noise before each reply, skipped
        assert server.stats.bad_frames == 0  # every request we sent had a good LRC


async def test_a_dead_slave_does_not_cost_its_neighbours_their_rate(f4_ascii_bus: ModbusRtuServer) -> None:
    f4_ascii_bus.faults = f4_ascii_bus.faults.parse(["no-answer:3"])
    # 9600 baud 7E1: a healthy poll (two reads) is 70 ms of line, the dead slave's 0.1 s timeout, its wire
    # time and the quiet after it 0.2 s: 0.4 s leaves the line room for all three.
    interval = 0.4
    members = []
    for unit in (1, 2, 3):
        config = ascii_config(f4_ascii_bus.link or "", unit, interval=interval, timeout=0.1)
        stats = InstrumentStats(rig="r", instrument=config.name, link=str(f4_ascii_bus.link))
        instrument = ModbusRtuInstrument(config)
        members.append(ScheduledInstrument(instrument=instrument, builder=RecordBuilder(config, {}), stats=stats))  # type: ignore[arg-type]
    records: list[Record] = []
    link = PLUGIN.open_link([member.instrument.config for member in members])  # type: ignore[misc]
    scheduler = LinkScheduler(link=link, instruments=members, emit=records.append)
    healthy, dead = [members[0].stats, members[1].stats], members[2].stats
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run())
        try:
            async with asyncio.timeout(15):
                while min(stats.records for stats in healthy) < 8:
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
    for stats in healthy:
        assert stats.failures == 0
        assert stats.skipped <= stats.records // 4  # a loaded CI machine may skip a cycle; a blocked bus skips most
    assert dead.polls >= 3
    assert dead.consecutive_failures == dead.polls
    assert "unit 3: no response" in dead.last_error
    assert any(r.series.measurement == "edge_daq_status" and r.fields["ok"] is False for r in records)


async def test_unknown_units_time_out_and_replies_of_other_units_are_ignored(f4_ascii_bus: ModbusRtuServer) -> None:
    link = await open_link([ascii_config(f4_ascii_bus.link or "", 9)])
    try:
        with pytest.raises(DriverTimeoutError, match="unit 9: no response"):
            await ModbusRtuInstrument(ascii_config(f4_ascii_bus.link or "", 9)).poll(link)
        # A stray frame of another unit in the buffer is not taken for ours.
        link.channel.buffer += ascii_frame(2, bytes.fromhex("0302FFFF"))
        found, bad = link._scan(1, 3, 7)
        assert (found, bad) == (None, False)
    finally:
        await link.close()


async def test_pymodbus_ascii_client_reads_the_simulator(f4_ascii_bus: ModbusRtuServer) -> None:
    """A third-party ASCII framer agrees with the simulator's (and so with the frames the driver is tested on)."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient

    # pyserial sets parity and 7 data bits on the pseudo-terminal, which Linux refuses: 8N1 on a pty.
    client = AsyncModbusSerialClient(
        str(f4_ascii_bus.link), framer=FramerType.ASCII, baudrate=9600, bytesize=8, parity="N", timeout=1
    )
    assert await client.connect()
    try:
        reply = await client.read_holding_registers(0, count=1, device_id=2)
    finally:
        client.close()
    assert reply.registers == [5270]


async def test_simulate_ascii_on_a_pty(tmp_path: Path) -> None:
    import os
    import sys

    link = tmp_path / "ttyCli"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "watlow-f4", "--pty", str(link), "--ascii", "--time-scale", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            await process.stdout.readline()
        config = ascii_config(link, 1, baudrate=19200)
        link_ = await open_link([config])
        try:
            assert (await ModbusRtuInstrument(config).poll(link_)).fields["model"] == 5270
        finally:
            await link_.close()
    finally:
        process.terminate()
        await process.wait()


def test_ascii_line_benchmark() -> None:
    from tests.integration.test_bench_smoke import run_benchmark

    assert "ratio edge-daq/pymodbus:" in run_benchmark("bench.ascii_line")
