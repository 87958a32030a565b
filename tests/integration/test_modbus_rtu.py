"""Modbus RTU drivers against the simulators over real pseudo-terminals and TCP (no mocks of the port)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq.drivers import config_model, plugin
from edge_daq.drivers.modbus.config import ModbusRtuConfig, ModbusRtuOverTcpConfig
from edge_daq.drivers.modbus.rtu import (
    MAX_BUFFERED,
    OVER_TCP_PLUGIN,
    PLUGIN,
    ModbusRtuInstrument,
    RtuLink,
    crc16,
    frame,
    inter_frame_silence,
)
from edge_daq.errors import DeviceError, DriverConnectionError, DriverProtocolError, DriverTimeoutError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import ModbusRtuServer, create_rtu_server
from tests.hostile_servers import stream_forever, tcp_server

REPO = Path(__file__).resolve().parents[2]
F4_PROFILE: dict[str, Any] = yaml.safe_load((REPO / "config/profiles/watlow-f4.yaml").read_text())


def rtu_config(port: str | Path, unit: int = 1, **overrides: Any) -> ModbusRtuConfig:
    data: dict[str, Any] = {
        "name": f"u{unit}",
        "driver": "modbus-rtu",
        "port": str(port),
        "unit": unit,
        "baudrate": 19200,
        "parity": "E",
        "timeout": 0.2,
        "points": [{"name": "model", "address": 0}, {"name": "pv", "address": 100, "type": "int16", "scale": 0.1}],
    }
    return ModbusRtuConfig.model_validate(data | overrides)


@pytest.fixture
async def f4_bus(tmp_path: Path) -> AsyncIterator[ModbusRtuServer]:
    async with create_rtu_server("watlow-f4", link=tmp_path / "ttyF4", units=[1, 2, 3], seed=1, time_scale=0) as server:
        yield server


async def open_link(configs: Sequence[ModbusRtuConfig]) -> RtuLink:
    link = PLUGIN.open_link(configs)
    await link.open()
    return link


# ------------------------------------------------------------------------------------------- framing, config


def test_crc_and_frame_match_the_modbus_spec() -> None:
    # The classic example: read holding register 0, count 1, of unit 1 is 01 03 00 00 00 01 84 0A.
    assert frame(1, bytes.fromhex("0300000001")) == bytes.fromhex("010300000001840A")
    assert crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value


def test_inter_frame_silence_follows_the_baud_rate() -> None:
    assert inter_frame_silence(9600, 11) == pytest.approx(3.5 * 11 / 9600)
    assert inter_frame_silence(19200, 11) == pytest.approx(3.5 * 11 / 19200)
    assert inter_frame_silence(115200, 11) == pytest.approx(0.00175)
    assert inter_frame_silence(None) == pytest.approx(0.00175)


def test_config_models_and_link_keys() -> None:
    assert config_model("modbus-rtu") is ModbusRtuConfig
    assert config_model("modbus-rtu-over-tcp") is ModbusRtuOverTcpConfig
    config = rtu_config("/dev/ttyUSB1")
    assert (config.baudrate, config.parity, config.stopbits, config.bytesize) == (19200, "E", 1, 8)
    assert PLUGIN.link_key(config) == "/dev/ttyUSB1"
    assert plugin("modbus-rtu") is PLUGIN
    over_tcp = ModbusRtuOverTcpConfig.model_validate(
        {"name": "x", "driver": "modbus-rtu-over-tcp", "host": "10.0.0.5", "points": [{"name": "a", "address": 0}]}
    )
    assert OVER_TCP_PLUGIN.link_key(over_tcp) == "rtu+tcp://10.0.0.5:4001"
    for bad in ({"parity": "X"}, {"bytesize": 7}, {"stopbits": 3}):
        with pytest.raises(ValueError, match=r"parity|bytesize|stopbits"):
            rtu_config("/dev/ttyUSB1", **bad)


def test_one_profile_serves_tcp_and_rtu() -> None:
    # The rig file's driver: wins over the profile's (profiles merge key by key, the instrument last).
    merged = F4_PROFILE | {"name": "chamber", "driver": "modbus-rtu", "port": "/dev/ttyUSB0", "unit": 1}
    del merged["profile"]
    config = ModbusRtuConfig.model_validate(merged)
    assert [point.name for point in config.points][:2] == ["model_code", "temp_pv"]


# -------------------------------------------------------------------------------------- against the simulator


async def test_mbpoll_reads_the_f4_model_code_over_a_pty(f4_bus: ModbusRtuServer) -> None:
    if shutil.which("mbpoll") is None:
        pytest.fail("mbpoll is not installed (Debian package mbpoll)", pytrace=False)
    assert f4_bus.link is not None
    # -r 1 is register number 1 (mbpoll counts from 1 by default): protocol address 0, the model code.
    process = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "rtu", "-b", "19200", "-P", "even", "-a", "2", "-t", "4", "-r", "1", "-c", "1", "-1",
        str(f4_bus.link), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "[1]: \t5270" in out.decode()


async def test_driver_reads_the_f4_profile_over_a_pty(f4_bus: ModbusRtuServer) -> None:
    merged = F4_PROFILE | {"name": "chamber", "driver": "modbus-rtu", "port": str(f4_bus.link), "unit": 3}
    del merged["profile"]
    config = ModbusRtuConfig.model_validate(merged)
    link = await open_link([config])
    try:
        result = await PLUGIN.make_instrument(config).poll(link)
    finally:
        await link.close()
    assert result.failed == []
    assert result.fields["model_code"] == 5270
    assert result.fields["temp_sp"] == pytest.approx(125.0)
    assert result.fields["decimals"] == 1


async def test_slaves_share_one_link_and_unknown_units_time_out(f4_bus: ModbusRtuServer) -> None:
    configs = [rtu_config(f4_bus.link or "", unit) for unit in (1, 2, 9)]
    assert len({PLUGIN.link_key(config) for config in configs}) == 1
    link = await open_link(configs)
    try:
        for config in configs[:2]:
            assert (await PLUGIN.make_instrument(config).poll(link)).fields["model"] == 5270
        with pytest.raises(DriverTimeoutError, match="unit 9: no response"):
            await PLUGIN.make_instrument(configs[2]).poll(link)
    finally:
        await link.close()
    assert f4_bus.stats.requests_by_unit[9] == 1


async def test_endurance_rig_float32_low_word_first_and_counters(tmp_path: Path) -> None:
    async with create_rtu_server("endurance-rig", link=tmp_path / "ttyRig", seed=2, time_scale=20) as server:
        port = str(server.link)
        vfd = rtu_config(port, 1, points=[
            {"name": "freq", "address": 4096, "scale": 0.01}, {"name": "current", "address": 4098, "scale": 0.01},
            {"name": "state", "address": 4099},
        ])  # fmt: skip
        cell = rtu_config(port, 2, byte_order="CDAB", points=[{"name": "gross", "address": 2, "type": "float32"}])
        monitor = rtu_config(port, 3, points=[
            {"name": "rms", "address": 0, "type": "float32", "byte_order": "CDAB"},
            {"name": "cycles", "address": 10, "type": "uint32"},
        ])  # fmt: skip
        link = await open_link([vfd, cell, monitor])
        try:
            drive = (await PLUGIN.make_instrument(vfd).poll(link)).fields
            force = (await PLUGIN.make_instrument(cell).poll(link)).fields
            first = (await PLUGIN.make_instrument(monitor).poll(link)).fields
            await asyncio.sleep(0.3)
            later = (await PLUGIN.make_instrument(monitor).poll(link)).fields
        finally:
            await link.close()
    assert drive["freq"] == pytest.approx(50.0)
    assert drive["state"] == 1
    assert 5.0 < float(drive["current"]) < 6.5
    assert 400.0 - 5 <= float(force["gross"]) <= 2000.0 + 5  # 1200 N mean +/- 800 N: decoded, not word-swapped junk
    assert 0.5 < float(first["rms"]) < 1.5
    assert int(later["cycles"]) > int(first["cycles"])


async def test_rtu_over_tcp_reads_a_device_server(tmp_path: Path) -> None:
    async with create_rtu_server("watlow-f4", tcp=("127.0.0.1", 0), seed=1, time_scale=0) as server:
        config = ModbusRtuOverTcpConfig.model_validate({
            "name": "f4", "driver": "modbus-rtu-over-tcp", "host": "127.0.0.1", "port": server.port,
            "baudrate": 19200, "timeout": 0.5, "points": [{"name": "model", "address": 0}],
        })  # fmt: skip
        link = OVER_TCP_PLUGIN.open_link([config])
        await link.open()
        try:
            assert link.describe == f"rtu+tcp://127.0.0.1:{server.port}"
            result = await OVER_TCP_PLUGIN.make_instrument(config).poll(link)
        finally:
            await link.close()
    assert result.fields == {"model": 5270}


async def test_exception_02_names_address_base(tmp_path: Path) -> None:
    async with create_rtu_server("watlow-f4", link=tmp_path / "tty", faults=["exception02"], time_scale=0) as server:
        link = await open_link([rtu_config(server.link or "")])
        try:
            with pytest.raises(DeviceError, match=r"exception 02 \(illegal data address\).*address_base"):
                await ModbusRtuInstrument(rtu_config(server.link or "")).poll(link)
        finally:
            await link.close()


async def test_crc_errors_are_reported_as_such_and_the_bus_goes_on(tmp_path: Path) -> None:
    async with create_rtu_server(
        "watlow-f4", link=tmp_path / "tty", units=[1, 2], faults=["crc-error:2"], time_scale=0
    ) as server:
        good, bad = rtu_config(server.link or "", 1), rtu_config(server.link or "", 2)
        link = await open_link([good, bad])
        try:
            with pytest.raises(DriverProtocolError, match="CRC error"):
                await ModbusRtuInstrument(bad).poll(link)
            assert (await ModbusRtuInstrument(good).poll(link)).fields["model"] == 5270
        finally:
            await link.close()
        assert link.stats.crc_errors == 2  # both reads of the poll (a CRC error fails only its read)


async def test_noise_before_a_reply_is_skipped(tmp_path: Path) -> None:
    async with create_rtu_server("watlow-f4", link=tmp_path / "tty", faults=["garbage"], time_scale=0) as server:
        link = await open_link([rtu_config(server.link or "")])
        try:
            for _ in range(5):
                assert (await ModbusRtuInstrument(rtu_config(server.link or "")).poll(link)).fields["model"] == 5270
        finally:
            await link.close()
    assert link.stats.stale_bytes >= 5 * 3


async def test_late_reply_is_never_taken_for_the_next_request(tmp_path: Path) -> None:
    # Every reply comes 0.15 s late; the driver waits 0.1 s. Reads of the *same* unit, function and count
    # but different registers: only the per-unit guard after a timeout can keep them apart.
    async with create_rtu_server(
        "watlow-f4", link=tmp_path / "tty", faults=["slow:0.15"], time_scale=0, setpoint=85.0
    ) as server:
        model = rtu_config(server.link or "", timeout=0.1, points=[{"name": "model", "address": 0}])
        setpoint = rtu_config(
            server.link or "", timeout=0.1, points=[{"name": "sp", "address": 300, "type": "int16", "scale": 0.1}]
        )
        link = await open_link([model])
        try:
            with pytest.raises(DriverTimeoutError):
                await ModbusRtuInstrument(model).poll(link)
            result = None
            for _ in range(3):
                try:
                    result = await ModbusRtuInstrument(setpoint).poll(link)
                    break
                except DriverTimeoutError:
                    continue
        finally:
            await link.close()
    # Either it timed out every time or it got its own answer, never 5270 decoded as a set point.
    if result is not None:
        assert result.fields["sp"] == pytest.approx(85.0)


# ---------------------------------------------------------------------------------------------- scheduling


def scheduled(instrument: ModbusRtuInstrument[ModbusRtuConfig]) -> ScheduledInstrument:
    config = instrument.config
    return ScheduledInstrument(
        instrument=instrument,  # type: ignore[arg-type]
        builder=RecordBuilder(config, {"rig": "r"}),
        stats=InstrumentStats(rig="r", instrument=config.name, link=config.port),
    )


async def run_scheduler(scheduler: LinkScheduler, seconds: float) -> None:
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run(), name="bus")
        await asyncio.sleep(seconds)
        task.cancel()


async def test_a_dead_slave_does_not_cost_the_healthy_two_their_rate(f4_bus: ModbusRtuServer) -> None:
    f4_bus.faults = f4_bus.faults.parse(["no-answer:3"])
    interval, duration = 0.25, 4.0
    members = [
        scheduled(ModbusRtuInstrument(rtu_config(f4_bus.link or "", unit, interval=interval, timeout=0.1)))
        for unit in (1, 2, 3)
    ]
    records: list[Record] = []
    link = PLUGIN.open_link([member.instrument.config for member in members])  # type: ignore[misc]
    scheduler = LinkScheduler(link=link, instruments=members, emit=records.append)
    await run_scheduler(scheduler, duration)
    expected = duration / interval
    healthy = [members[0].stats, members[1].stats]
    dead = members[2].stats
    for stats in healthy:
        assert stats.records >= 0.85 * expected, (stats.records, stats.skipped, expected)
        assert stats.skipped <= 1
    # Backed off: polled far less often than every cycle, and visible as a failing instrument.
    assert 3 <= dead.polls <= 0.6 * expected
    assert dead.consecutive_failures == dead.polls
    assert any(r.series.measurement == "edge_daq_status" and r.fields["ok"] is False for r in records)


async def test_a_vanished_serial_device_is_reopened_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "ttyUSB0"
    server = create_rtu_server("watlow-f4", link=path, seed=1, time_scale=0)
    await server.start()
    config = rtu_config(path, interval=0.1, timeout=0.1)
    member = scheduled(ModbusRtuInstrument(config))
    records: list[Record] = []
    scheduler = LinkScheduler(link=PLUGIN.open_link([config]), instruments=[member], emit=records.append)

    def data_records() -> int:
        return sum(1 for record in records if record.series.measurement == "u1")

    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run(), name="bus")
        try:
            async with asyncio.timeout(10):
                while data_records() < 3:
                    await asyncio.sleep(0.05)
                await server.close()  # the adapter is pulled: the pty is gone and so is its path
                assert not path.exists()
                while member.stats.consecutive_failures < 2:
                    await asyncio.sleep(0.05)
                assert "lost" in member.stats.last_error or "does not exist" in member.stats.last_error
                before = data_records()
                await server.start()  # plugged back in: a new pty behind the same path
                while data_records() <= before:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await server.close()
    assert member.stats.consecutive_failures == 0


async def test_open_reports_a_missing_port_and_a_non_terminal(tmp_path: Path) -> None:
    with pytest.raises(DriverConnectionError, match="does not exist"):
        await open_link([rtu_config(tmp_path / "nothing")])
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    with pytest.raises(DriverConnectionError, match="not a serial port"):
        await open_link([rtu_config(plain)])


async def test_a_device_server_streaming_noise_is_bounded_and_reconnected() -> None:
    """RTU over TCP: a device server that floods the socket with noise fills the bounded receive buffer, and
    the link reconnects at once instead of scanning megabytes until its timeout."""
    connections = {"count": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections["count"] += 1
        flood = connections["count"] == 1
        while True:
            request = await reader.readexactly(8)
            if flood:
                await stream_forever(writer, bytes(range(256)) * 64)
            writer.write(frame(request[0], bytes((3, 2, 0x12, 0x34))))

    async with tcp_server(handle) as port:
        config = ModbusRtuOverTcpConfig.model_validate({
            "name": "f4", "driver": "modbus-rtu-over-tcp", "host": "127.0.0.1", "port": port, "unit": 1,
            "timeout": 5.0, "points": [{"name": "v", "address": 0}],
        })  # fmt: skip
        link = OVER_TCP_PLUGIN.open_link([config])
        instrument = OVER_TCP_PLUGIN.make_instrument(config)
        await link.open()
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(DriverProtocolError, match="reconnecting"):
                await instrument.poll(link)
            assert asyncio.get_running_loop().time() - started < 2.0  # at the buffer's limit, not the timeout
            assert len(link.channel.buffer) <= MAX_BUFFERED
            assert not link.is_open
            assert link.stats.garbled_frames == 1
            await link.open()
            assert (await instrument.poll(link)).fields == {"v": 0x1234}
        finally:
            await link.close()
