"""SCPI/ASCII drivers against the SCPI simulators over real TCP and pseudo-terminals, and pyvisa-py as a
third-party client of the simulators."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq.drivers import config_model
from edge_daq.drivers.scpi.config import ScpiPoint, ScpiSerialConfig, ScpiTcpConfig
from edge_daq.drivers.scpi.driver import SERIAL_PLUGIN, TCP_PLUGIN, ScpiInstrument, ScpiLink, parse_value
from edge_daq.errors import DeviceError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import LineServer, create_line_server
from simulators.modbus_server import Faults

REPO = Path(__file__).resolve().parents[1]


def profile(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config" / "profiles" / f"{name}.yaml").read_text())
    del data["profile"]
    return data


def tcp_config(server: LineServer, **keys: Any) -> ScpiTcpConfig:
    base = {"name": "smu", "driver": "scpi-tcp", "host": "127.0.0.1", "port": server.port, "timeout": 0.5}
    return ScpiTcpConfig.model_validate(base | keys)


async def poll_once(config: ScpiTcpConfig | ScpiSerialConfig, link: ScpiLink | None = None) -> Any:
    plugin: Any = TCP_PLUGIN if isinstance(config, ScpiTcpConfig) else SERIAL_PLUGIN
    own = link is None
    link = link or plugin.open_link([config])
    assert link is not None
    if own:
        await link.open()
    try:
        return await plugin.make_instrument(config).poll(link)
    finally:
        if own:
            await link.close()


def test_config_shapes() -> None:
    assert config_model("scpi-tcp") is ScpiTcpConfig
    assert ScpiPoint(query="X?", fields=["a", "-", "b"]).field_names == ["a", "b"]
    assert ScpiPoint(query="X?", regex="(?P<pv>[\\d.]+)").field_names == ["pv"]
    for bad in ({"query": "X?"}, {"query": "X?", "name": "a", "regex": "(?P<b>.)"}, {"query": "X?", "regex": "(.)"}):
        with pytest.raises(ValueError, match=r"exactly one|named groups"):
            ScpiPoint.model_validate(bad)
    with pytest.raises(ValueError, match="two points"):
        ScpiTcpConfig.model_validate({
            "name": "x", "driver": "scpi-tcp", "host": "h",
            "points": [{"query": "A?", "name": "a"}, {"query": "B?", "fields": ["a"]}],
        })  # fmt: skip
    assert parse_value("+9.910000E+37", "float") is None
    assert parse_value("+1.5E-06", "float") == pytest.approx(1.5e-6)
    assert parse_value("3", "int") == 3
    with pytest.raises(ValueError, match="float"):
        parse_value("garbage", "float")


async def test_keithley_profile_over_tcp_identity_init_fields_and_errors() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=1, time_scale=0) as server:
        config = tcp_config(server, **(profile("keithley-2400") | {"driver": "scpi-tcp"}))
        result = await poll_once(config)
        assert result.fields["v"] == pytest.approx(3.3)
        assert result.fields["i"] == pytest.approx(3.3 / 10_000, rel=0.01)
        assert result.fields["compliance_tripped"] == 0
        assert result.fields["scpi_errors"] == 0
        # An instrument error (a bad command from init) is drained and counted.
        bad = tcp_config(server, **(profile("keithley-2400") | {"driver": "scpi-tcp", "init": [":BOGUS 1"]}))
        result = await poll_once(bad)
        assert result.fields["scpi_errors"] == 1
        assert any("-113" in str(error) for error in result.errors)


async def test_overflow_reading_is_absent_and_counted() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0) as server:
        config = tcp_config(
            server, init=[":FORM:ELEM VOLT,CURR,RES"], points=[{"query": ":READ?", "fields": ["v", "i", "r"]}]
        )
        result = await poll_once(config)
    assert set(result.fields) == {"v", "i"}
    assert result.failed == ["r"]
    assert result.errors == []


async def test_identity_mismatch_is_a_device_error() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0) as server:
        config = tcp_config(server, identity="DAQ970A", points=[{"query": ":READ?", "fields": ["v", "i"]}])
        with pytest.raises(DeviceError, match="does not contain 'DAQ970A'"):
            await poll_once(config)


async def test_keithley_dut_fails_short_and_trips_compliance() -> None:
    async with create_line_server(
        "keithley-2400", tcp=("127.0.0.1", 0), time_scale=0, fail_at=0.0, failure="short", compliance=0.01
    ) as server:
        config = tcp_config(server, **(profile("keithley-2400") | {"driver": "scpi-tcp"}))
        result = await poll_once(config)
    assert result.fields["i"] == pytest.approx(0.01)
    assert result.fields["compliance_tripped"] == 1


async def test_daq970a_profile_reads_channels_with_numbers() -> None:
    async with create_line_server("keysight-daq970a", tcp=("127.0.0.1", 0), time_scale=0, seed=3) as server:
        config = tcp_config(server, **profile("keysight-daq970a"))
        result = await poll_once(config)
    assert sorted(result.fields) == sorted([f"t{channel}" for channel in range(101, 111)] + ["scpi_errors"])
    assert all(-41 < float(result.fields[f"t{channel}"]) < 126 for channel in range(101, 111))


async def test_espec_profile_regex_and_fields_over_crlf() -> None:
    async with create_line_server("espec-p300", tcp=("127.0.0.1", 0), time_scale=0) as server:
        config = tcp_config(server, **profile("espec-p300"))
        result = await poll_once(config)
    assert result.fields["temp_sp"] == pytest.approx(85.0)
    assert result.fields["temp_pv"] == pytest.approx(23.0, abs=0.5)
    assert result.fields["humi_sp"] == pytest.approx(85.0)
    assert result.fields["mode"] == "CONSTANT"


async def test_scpi_over_a_pty_with_line_timing(tmp_path: Path) -> None:
    link_path = tmp_path / "ttyS0"
    async with create_line_server("keithley-2400", link=link_path, baudrate=9600, time_scale=0):
        config = ScpiSerialConfig.model_validate(
            profile("keithley-2400") | {"name": "smu", "port": str(link_path), "baudrate": 9600}
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await poll_once(config)
        elapsed = loop.time() - started
    assert result.fields["v"] == pytest.approx(3.3)
    # *IDN?, :FORM:ELEM, :READ?, TRIP?, :SYST:ERR?: well over 100 characters at 960 characters per second.
    assert elapsed > 0.1


async def test_garbage_and_silence_are_counted_and_the_bus_recovers() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0, seed=5) as server:
        config = tcp_config(
            server, identity="KEITHLEY", timeout=0.2, interval=0.1, points=[{"query": ":READ?", "fields": ["v", "i"]}]
        )
        link = TCP_PLUGIN.open_link([config])
        instrument = ScpiInstrument(config)
        stats = InstrumentStats(rig="r", instrument="smu", link="x")
        member = ScheduledInstrument(instrument=instrument, builder=RecordBuilder(config, {}), stats=stats)  # type: ignore[arg-type]
        records: list[Record] = []
        scheduler = LinkScheduler(link=link, instruments=[member], emit=records.append)

        def values() -> int:
            return sum(1 for record in records if record.series.measurement == "smu")

        async with asyncio.TaskGroup() as group:
            task = group.create_task(scheduler.run(), name="scpi")
            try:
                async with asyncio.timeout(15):
                    while values() < 2:
                        await asyncio.sleep(0.02)
                    server.faults = Faults(garbage=True)
                    while stats.failed_points < 2:
                        await asyncio.sleep(0.02)
                    server.faults = Faults(silent_all=True)
                    while stats.consecutive_failures < 1:
                        await asyncio.sleep(0.02)
                    server.faults = Faults()
                    recovered_from = values()
                    while values() <= recovered_from or stats.consecutive_failures:
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
        assert "no reply" in stats.last_error or stats.last_error == ""


def pyvisa_query(port: int, termination: str, commands: Sequence[str]) -> list[str]:
    import pyvisa

    manager = pyvisa.ResourceManager("@py")
    try:
        resource: Any = manager.open_resource(f"TCPIP::127.0.0.1::{port}::SOCKET")
        resource.read_termination = termination
        resource.write_termination = termination
        resource.timeout = 3000
        try:
            return [resource.query(command).strip() for command in commands]
        finally:
            resource.close()
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("kind", "termination", "commands", "expected"),
    [
        ("keithley-2400", "\n", ["*IDN?", ":READ?"], [r"KEITHLEY.*MODEL 2400", r"^[+-]\d\.\d{6}E[+-]\d\d(,.+){4}$"]),
        (
            "keysight-daq970a",
            "\n",
            ["*IDN?", "ROUT:SCAN (@101:103);ROUT:SCAN?"],
            [r"DAQ970A", r"^#214\(@101,102,103\)$"],
        ),
        ("espec-p300", "\r\n", ["TEMP?", "MODE?"], [r"^[-\d.]+,85\.0,100\.0,-10\.0$", r"^CONSTANT$"]),
    ],
)
async def test_pyvisa_py_queries_the_simulators(
    kind: str, termination: str, commands: list[str], expected: list[str]
) -> None:
    async with create_line_server(kind, tcp=("127.0.0.1", 0), time_scale=0) as server:
        replies = await asyncio.to_thread(pyvisa_query, server.port, termination, commands)
    for reply, pattern in zip(replies, expected, strict=True):
        assert re.search(pattern, reply), (reply, pattern)
