"""SCPI/ASCII drivers against the SCPI simulators over real TCP and pseudo-terminals, and pyvisa-py as a
third-party client of the simulators."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq.drivers import config_model
from edge_daq.drivers.scpi.config import ScpiPoint, ScpiSerialConfig, ScpiTcpConfig, ValueType
from edge_daq.drivers.scpi.driver import SERIAL_PLUGIN, TCP_PLUGIN, ScpiInstrument, ScpiLink, parse_value
from edge_daq.drivers.scpi.patterns import ReplyPattern
from edge_daq.errors import DeviceError, DriverProtocolError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import LineServer, create_line_server
from simulators.modbus_server import Faults
from tests.hostile_servers import LineScript, line_server, stream_forever

REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(ValueError, match="SCPI number"):
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
            server,
            identity="KEITHLEY",
            init=[":FORM:ELEM VOLT,CURR"],
            timeout=0.2,
            interval=0.1,
            points=[{"query": ":READ?", "fields": ["v", "i"]}],
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


# Hostile instruments (issue 13): scripted servers on real loopback sockets.


def answering(replies: dict[bytes, bytes]) -> LineScript:
    """A script that answers each known query with its reply line (and a line terminator)."""

    async def script(line: bytes, writer: asyncio.StreamWriter) -> None:
        if line in replies:
            writer.write(replies[line] + b"\n")

    return script


def hostile_config(port: int, points: list[dict[str, Any]], **keys: Any) -> ScpiTcpConfig:
    base = {"name": "smu", "driver": "scpi-tcp", "host": "127.0.0.1", "port": port, "timeout": 1.0}
    return ScpiTcpConfig.model_validate(base | {"points": points} | keys)


@pytest.mark.parametrize("flood", ["10 MB without termination", "endless stream"])
async def test_a_reply_past_max_reply_bytes_is_bounded_and_the_link_reconnects(flood: str) -> None:
    connections = {"count": 0}

    async def script(line: bytes, writer: asyncio.StreamWriter) -> None:
        connections["count"] += 1
        if connections["count"] > 1:
            writer.write(b"+1.500000E+00\n")
        elif flood == "endless stream":
            await stream_forever(writer, b"7" * 65536)
        else:
            writer.write(b"7" * 10_000_000)

    async with line_server(script) as port:
        config = hostile_config(port, [{"name": "v", "query": ":MEAS:VOLT?"}], timeout=5.0)
        link = TCP_PLUGIN.open_link([config])
        instrument = ScpiInstrument(config)
        await link.open()
        try:
            started = time.monotonic()
            with pytest.raises(DriverProtocolError, match=r"longer than max_reply_bytes \(65536\)"):
                await instrument.poll(link)
            assert time.monotonic() - started < 2.0  # at the limit, not at the timeout
            assert len(link.channel.buffer) <= link.channel.limit == 65536 + 1
            assert not link.is_open
            assert link.stats.garbled_frames == 1
            assert link.stats.reconnects == 1
            await link.open()  # what the scheduler does at the next poll
            assert (await instrument.poll(link)).fields == {"v": 1.5}
        finally:
            await link.close()


async def test_a_reply_longer_than_max_reply_bytes_fails_only_the_rest_of_the_poll() -> None:
    async with line_server(answering({b"A?": b"1" * 100, b"B?": b"2"})) as port:
        config = hostile_config(
            port, [{"name": "b", "query": "B?"}, {"name": "a", "query": "A?"}], max_reply_bytes=64, timeout=0.5
        )
        result = await poll_once(config)
    assert result.fields == {"b": 2.0}
    assert result.failed == ["a"]
    assert "reply to 'A?' is longer than max_reply_bytes (64)" in str(result.errors[0])


async def test_the_readme_regex_on_a_40_kb_line_is_linear_and_leaves_the_loop_free() -> None:
    line = b"x" * 40_000
    async with line_server(answering({b"TEMP?": line, b"OK?": b"1,2"})) as port:
        points = [{"query": "TEMP?", "regex": "(?P<pv>[^,]+),(?P<sp>[^,]+)"}]
        config = hostile_config(port, points)
        assert ReplyPattern.compile(points[0]["regex"]).linear
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with asyncio.TaskGroup() as group:
            tick = group.create_task(ticker(), name="ticker")
            started = time.monotonic()
            result = await poll_once(config)
            elapsed = time.monotonic() - started
            tick.cancel()
        ok = await poll_once(hostile_config(port, [{"query": "OK?", "regex": "(?P<pv>[^,]+),(?P<sp>[^,]+)"}]))
    assert elapsed < 0.5  # Python's re took 13 s here
    assert max(gaps, default=0.0) < 0.1
    assert result.failed == ["pv", "sp"]
    assert "the regex does not match" in str(result.errors[0])
    assert ok.fields == {"pv": 1.0, "sp": 2.0}


async def test_a_pattern_re2_refuses_runs_in_a_worker_with_a_time_limit() -> None:
    backreference = "(?P<a>\\d+),(?P=a)"
    catastrophic = "(?P<a>(x+x+)+y)"  # re2 takes it; with a backreference re2 refuses it, and re would backtrack
    assert not ReplyPattern.compile(backreference).linear
    assert ReplyPattern.compile(catastrophic).linear
    hostile = "(?P<a>(x+x+)+y)\\1?"
    assert not ReplyPattern.compile(hostile).linear
    async with line_server(answering({b"A?": b"5,5", b"B?": b"x" * 40})) as port:
        good = await poll_once(hostile_config(port, [{"query": "A?", "regex": backreference, "type": "int"}]))
        assert good.fields == {"a": 5}
        started = time.monotonic()
        slow = await poll_once(hostile_config(port, [{"query": "B?", "regex": hostile}], timeout=0.5))
        assert time.monotonic() - started < 3.0
        assert slow.failed == ["a"]
        assert "took over 0.5 s" in str(slow.errors[0])
        # The worker was killed; the next match starts a new one.
        assert (await poll_once(hostile_config(port, [{"query": "A?", "regex": backreference}]))).fields == {"a": 5.0}


async def test_field_counts_must_match_unless_extra_ignore() -> None:
    async with line_server(answering({b":READ?": b"666,666,666,666,666", b"SHORT?": b"1"})) as port:
        strict = await poll_once(hostile_config(port, [{"query": ":READ?", "fields": ["v", "i"]}]))
        assert strict.fields == {}
        assert strict.failed == ["v", "i"]
        assert "3 or more elements, expected 2 (extra: ignore accepts more)" in str(strict.errors[0])
        relaxed = await poll_once(
            hostile_config(port, [{"query": ":READ?", "fields": ["v", "-", "i"], "extra": "ignore"}])
        )
        assert relaxed.fields == {"v": 666.0, "i": 666.0}
        short = await poll_once(hostile_config(port, [{"query": "SHORT?", "fields": ["v", "i"], "extra": "ignore"}]))
        assert short.failed == ["v", "i"]
    with pytest.raises(ValueError, match="extra applies to a point with fields"):
        ScpiPoint.model_validate({"query": "X?", "name": "x", "extra": "ignore"})


@pytest.mark.parametrize(
    ("text", "value_type", "value"),
    [
        ("+1.05E+03", "float", 1050.0),
        ("-12", "int", -12),
        ("1.0E3", "int", 1000),
        (".5", "float", 0.5),
        ("5.", "float", 5.0),
        (" 2.5e-3 ", "float", 0.0025),
        ("+9.91E+37", "float", None),
        ("-9.91E37", "int", None),
        ("99100000000000000000000000000000000000", "int", None),
        ("9223372036854775807", "int", 2**63 - 1),
        ("1E18", "int", 10**18),
    ],
)
def test_scpi_numbers(text: str, value_type: ValueType, value: float | None) -> None:
    assert parse_value(text, value_type) == value


@pytest.mark.parametrize(
    ("text", "value_type"),
    [("1_0.5e1_0", "float"), ("1_000", "int"), ("nan", "float"), ("inf", "float"), ("0x1F", "int"), ("1.5", "int"),
     ("1e", "float"), ("", "float"), ("1" * 100, "int"), ("١٢", "int"), ("9223372036854775808", "int"),
     ("1E19", "int")],
)  # fmt: skip
def test_not_scpi_numbers(text: str, value_type: ValueType) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_value(text, value_type)


async def test_garbage_from_syst_err_is_a_protocol_error_not_an_instrument_error() -> None:
    queue = [b'-113,"Undefined header"', b'+0,"No error"']

    async def script(line: bytes, writer: asyncio.StreamWriter) -> None:
        if line == b"V?":
            writer.write(b"1\n")
        elif line == b":SYST:ERR?":
            writer.write((queue.pop(0) if queue else b"\x00\x1bgarbage, not an error") + b"\n")

    async with line_server(script) as port:
        config = hostile_config(port, [{"name": "v", "query": "V?"}], drain_errors=True)
        counted = await poll_once(config)
        assert counted.fields == {"v": 1.0, "scpi_errors": 1}
        assert [type(error) for error in counted.errors] == [DeviceError]
        garbled = await poll_once(config)
    assert garbled.fields == {"v": 1.0}
    assert garbled.failed == ["scpi_errors"]
    assert [type(error) for error in garbled.errors] == [DriverProtocolError]
    assert "not a code and message" in str(garbled.errors[0])


async def test_string_points_lose_control_characters_and_are_bounded() -> None:
    replies = {b"MODE?": b"CONST\x00ANT\x1b[2J\rRUN\x7f", b"LONG?": b"M" * 300}
    async with line_server(answering(replies)) as port:
        result = await poll_once(
            hostile_config(
                port,
                [{"name": "mode", "query": "MODE?", "type": "str"}, {"name": "long", "query": "LONG?", "type": "str"}],
            )
        )
        assert result.fields == {"mode": "CONSTANT[2JRUN"}
        assert result.failed == ["long"]
        assert "300 characters, over max_length (256)" in str(result.errors[0])
        longer = await poll_once(
            hostile_config(port, [{"name": "long", "query": "LONG?", "type": "str", "max_length": 300}])
        )
    assert longer.fields == {"long": "M" * 300}


async def test_a_serial_instrument_streaming_without_end_is_bounded_and_reopened() -> None:
    """On a pseudo-terminal: the channel stops reading at the limit, the port is closed and reopened (which
    flushes the kernel's queue), and the instrument reads again."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    flooding = asyncio.Event()
    flooding.set()

    async def instrument_side() -> None:
        received = b""
        while True:
            if flooding.is_set():
                with contextlib.suppress(BlockingIOError):
                    os.write(master, b"7" * 1024)
            with contextlib.suppress(BlockingIOError, OSError):
                received += os.read(master, 4096)
            if b"V?\n" in received and not flooding.is_set():
                received = received.split(b"V?\n", 1)[1]
                os.write(master, b"+1.5E+00\n")
            await asyncio.sleep(0.001 if flooding.is_set() else 0.005)

    config = ScpiSerialConfig.model_validate({
        "name": "smu", "driver": "scpi-serial", "port": os.ttyname(slave), "baudrate": 115200, "timeout": 2.0,
        "max_reply_bytes": "16KiB", "points": [{"name": "v", "query": "V?"}],
    })  # fmt: skip
    link = SERIAL_PLUGIN.open_link([config])
    instrument = ScpiInstrument(config)
    try:
        async with asyncio.TaskGroup() as group:
            side = group.create_task(instrument_side(), name="instrument side")
            try:
                await link.open()
                started = loop.time()
                with pytest.raises(DriverProtocolError, match="max_reply_bytes"):
                    await instrument.poll(link)
                assert loop.time() - started < 1.5
                assert len(link.channel.buffer) <= 16 * 1024 + 1
                assert not link.is_open
                flooding.clear()
                await asyncio.sleep(0.05)
                await link.open()
                assert (await instrument.poll(link)).fields == {"v": 1.5}
            finally:
                side.cancel()
    finally:
        await link.close()
        os.close(master)
        os.close(slave)
