"""Guarded writes against real servers: the project's simulators over Modbus TCP, a pty RTU bus shared with
other slaves and RTU over TCP, pymodbus's server (third party), mbpoll reading back what edge-daq wrote, and
the refusals that must leave nothing on the wire."""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_daq import drivers
from edge_daq.cli.probe import _probe as run_probe_async
from edge_daq.cli.probe import add_arguments as add_probe_arguments
from edge_daq.drivers.base import InstrumentConfig, Link
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.service.http import HttpEndpoint
from edge_daq.stats import InstrumentStats
from edge_daq.writes.http import routes as http_routes
from edge_daq.writes.http_config import HttpWritesConfig
from edge_daq.writes.service import WriteOrder, WriteService
from simulators import create_line_server, create_rtu_server, serve
from simulators.keithley_2400 import Keithley2400
from simulators.watlow_f4 import REG_SP1, WatlowF4

SETPOINT = {"name": "temp_sp", "address": 300, "type": "int16", "scale": 0.1, "write": {"min": -70, "max": 180}}


def instrument(driver: str, points: list[dict[str, Any]], **keys: Any) -> InstrumentConfig:
    data = {"name": "chamber", "driver": driver, "timeout": 0.5, "interval": 0.1, "points": points} | keys
    return drivers.config_model(driver).model_validate(data)


class Bus:
    """A running bus scheduler for some instruments, the write service over it and the events it recorded."""

    def __init__(self, configs: Sequence[InstrumentConfig]) -> None:
        plugin = drivers.plugin(configs[0].driver)
        self.records: list[Record] = []
        self.scheduled = [
            ScheduledInstrument(
                instrument=plugin.make_instrument(config),
                builder=RecordBuilder(config, {"rig": "r1"}),
                stats=InstrumentStats(rig="r1", instrument=config.name, link="bus"),
            )
            for config in configs
        ]
        self.scheduler = LinkScheduler(
            link=plugin.open_link(list(configs)), instruments=self.scheduled, emit=self.records.append
        )
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.service = WriteService(
            schedulers=lambda: [self.scheduler],
            events=lambda rig, kind, message, details: self.events.append((kind, message, details)),
        )

    def stats(self, name: str) -> InstrumentStats:
        return next(s.stats for s in self.scheduled if s.config.name == name)

    async def polled(self, name: str, times: int = 1) -> None:
        stats = self.stats(name)
        target = stats.polls + times
        async with asyncio.timeout(10):
            while stats.polls < target or not self.scheduler.link.is_open:
                await asyncio.sleep(0.01)

    async def write(self, instrument: str, point: str, value: float) -> Any:
        order = WriteOrder(rig="r1", instrument=instrument, point=point, value=value, who="tester", why="test")
        return await self.service.write(order)

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


@asynccontextmanager
async def running(configs: Sequence[InstrumentConfig]) -> AsyncIterator[Bus]:
    bus = Bus(configs)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(bus.scheduler.run())
        try:
            await bus.polled(configs[0].name)
            yield bus
        finally:
            bus.scheduler.request_stop()
            await asyncio.wait([task], timeout=5)


# ------------------------------------------------------------------------------------- the F4 over Modbus TCP


async def test_setpoint_on_the_f4_simulator_is_written_read_back_and_journaled() -> None:
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        f4 = sim.devices[1]
        assert isinstance(f4, WatlowF4)
        points = [SETPOINT, {"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1,
                             "write": {"min": -70, "max": 180}},
                  {"name": "sp_wide", "address": 300, "type": "int16", "scale": 0.1, "write": {"min": -70, "max": 300}},
                  {"name": "sp_fc16", "address": 300, "type": "int16", "scale": 0.1,
                   "write": {"min": -70, "max": 180, "multiple": True}}]  # fmt: skip
        config = instrument("modbus-tcp", points, host="127.0.0.1", port=sim.port)
        async with running([config]) as bus:
            outcome = await bus.write("chamber", "temp_sp", 85.5)
            assert outcome.ok, outcome.message
            assert (outcome.old, outcome.readback) == (125.0, 85.5)
            assert f4.register_values()[REG_SP1] == 855
            assert bus.kinds() == ["write_requested", "write_done", "write_verified"]
            verified = bus.events[-1][2]
            assert (verified["who"], verified["why"], verified["old"], verified["new"], verified["readback"]) == (
                "tester", "test", 125.0, 85.5, 85.5,
            )  # fmt: skip
            assert "FC06 at 300" in bus.events[1][2]["sent"]

            assert (await bus.write("chamber", "sp_fc16", 90.0)).ok  # FC16 for one register
            assert "FC16 at 300" in bus.events[-2][2]["sent"]
            assert f4.register_values()[REG_SP1] == 900

            # A read-only register answers exception 02, a set point past the input range exception 03: both
            # are failures naming the point, and nothing was changed.
            bus.events.clear()
            failed = await bus.write("chamber", "temp_pv", 50.0)
            assert not failed.ok
            assert "point 'temp_pv'" in failed.message
            assert "exception 02 (illegal data address)" in failed.message
            failed = await bus.write("chamber", "sp_wide", 250.0)
            assert "point 'sp_wide'" in failed.message
            assert "exception 03 (illegal data value)" in failed.message
            assert bus.kinds() == ["write_requested", "write_failed"] * 2
            assert f4.register_values()[REG_SP1] == 900


async def test_refusals_leave_nothing_on_the_wire() -> None:
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        points = [{**SETPOINT, "write": {"min": -70, "max": 180, "step": 0.5, "max_rate": 1}},
                  {"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1}]  # fmt: skip
        config = instrument("modbus-tcp", points, host="127.0.0.1", port=sim.port, interval=3600)
        async with running([config]) as bus:
            before = sim.stats.requests
            refusals = {
                ("chamber", "temp_pv", 20.0): "point 'temp_pv' of 'chamber' is not writable",
                ("chamber", "temp_sp", 181.0): "181 is outside the write limits -70..180",
                ("chamber", "temp_sp", 80.2): "not -70 plus a multiple of the step 0.5",
                ("chamber", "nosuch", 1.0): "instrument 'chamber' has no point 'nosuch'",
                ("oven", "temp_sp", 1.0): "rig 'r1' has no instrument 'oven'",
            }
            for (name, point, value), message in refusals.items():
                outcome = await bus.write(name, point, value)
                assert (outcome.ok, outcome.state) == (False, "refused")
                assert message in outcome.message
            unknown = await bus.service.write(WriteOrder(rig="r9", instrument="chamber", point="temp_sp", value=1.0,
                                                         who="t"))  # fmt: skip
            assert "unknown rig 'r9'; rigs: r1" in unknown.message
            assert sim.stats.requests == before  # refused before the wire
            assert bus.kinds() == ["write_refused"] * 6

            assert (await bus.write("chamber", "temp_sp", 80.0)).ok
            after_write = sim.stats.requests
            rated = await bus.write("chamber", "temp_sp", 81.0)
            assert "more than 1 writes per minute" in rated.message
            assert sim.stats.requests == after_write


async def test_mbpoll_reads_back_what_edge_daq_wrote() -> None:
    if shutil.which("mbpoll") is None:
        pytest.fail("mbpoll is not installed (Debian package mbpoll)", pytrace=False)
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        config = instrument("modbus-tcp", [SETPOINT], host="127.0.0.1", port=sim.port)
        async with running([config]) as bus:
            assert (await bus.write("chamber", "temp_sp", -40.5)).ok
        # -0: protocol addresses; -t 4: holding registers, 16-bit.
        process = await asyncio.create_subprocess_exec(
            "mbpoll", "-m", "tcp", "-p", str(sim.port), "-a", "1", "-0", "-t", "4", "-r", "300", "-c", "1",
            "-1", "127.0.0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "[300]: \t-405" in out.decode() or "[300]: \t65131" in out.decode(), out.decode()


# ----------------------------------------------------------------------------------- pymodbus (third party)


@asynccontextmanager
async def pymodbus_server() -> AsyncIterator[int]:
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[0] * 64, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_every_function_code_against_pymodbus_server() -> None:
    limits = {"min": -1e6, "max": 1e6}
    points = [
        {"name": "sp_f32", "address": 10, "type": "float32", "byte_order": "CDAB", "write": limits},
        {"name": "count_i32", "address": 20, "type": "int32", "write": limits},
        {"name": "level", "address": 30, "type": "uint16", "scale": 0.01, "write": {"min": 0, "max": 600}},
        {"name": "door", "address": 31, "type": "bool", "bit": 3, "write": {"min": 0, "max": 1}},
        {"name": "enable", "table": "coil", "address": 0, "type": "bool", "write": {"min": 0, "max": 1}},
        {"name": "enable2", "table": "coil", "address": 5, "type": "bool",
         "write": {"min": 0, "max": 1, "multiple": True}},
    ]  # fmt: skip
    async with pymodbus_server() as port:
        config = instrument("modbus-tcp", points, host="127.0.0.1", port=port)
        async with running([config]) as bus:
            for point, value in [("sp_f32", 12.5), ("count_i32", -70000), ("level", 12.5), ("door", 1),
                                 ("enable", 1), ("enable2", 1)]:  # fmt: skip
                outcome = await bus.write("chamber", point, value)
                assert outcome.ok, outcome.message
                assert outcome.readback == pytest.approx(value)
            sent = [details["sent"].split(" =")[0] for kind, _, details in bus.events if kind == "write_done"]
            assert sent == ["FC16 at 10", "FC16 at 20", "FC06 at 30", "FC06 at 31", "FC05 at 0", "FC15 at 5"]
        # Read back by a third-party client, independently of edge-daq's codec.
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        try:
            registers = (await client.read_holding_registers(10, count=22, device_id=1)).registers
            coils = (await client.read_coils(0, count=8, device_id=1)).bits
        finally:
            client.close()
        assert registers[0:2] == [0x0000, 0x4148]  # 12.5 as float32, low word first
        assert registers[10:12] == [0xFFFE, 0xEE90]  # -70000
        assert registers[20] == 1250
        assert registers[21] == 0x0008
        assert (coils[0], coils[5]) == (True, True)


# ---------------------------------------------------------------------------- RTU: a busy pty bus, over TCP


async def test_writes_on_a_shared_rtu_bus_leave_the_other_slaves_their_rate(tmp_path: Path) -> None:
    async with create_rtu_server("watlow-f4", link=tmp_path / "ttyBus", units=[1, 2, 3], seed=1, time_scale=0) as sim:
        poll = [{"name": "pv", "address": 100, "type": "int16", "scale": 0.1}]
        configs = [
            instrument("modbus-rtu", [SETPOINT, *poll], port=str(sim.link), unit=1, name="u1", baudrate=19200),
            *(instrument("modbus-rtu", poll, port=str(sim.link), unit=u, name=f"u{u}", baudrate=19200,
                         interval=0.05) for u in (2, 3)),
        ]  # fmt: skip
        async with running(configs) as bus:
            await bus.polled("u2", 2)
            start = {name: bus.stats(name).polls for name in ("u2", "u3")}
            loop = asyncio.get_running_loop()
            began = loop.time()
            for value in (60.0, 61.0, 62.5, 63.0, 64.5):
                outcome = await bus.write("u1", "temp_sp", value)
                assert outcome.ok, outcome.message
            await bus.polled("u3", 3)
            elapsed = loop.time() - began
            during = {name: bus.stats(name).polls - start[name] for name in ("u2", "u3")}
            # The same bus for as long without writes, in the same run: the yardstick (a loaded machine slows
            # the pty and the simulator for both alike; a fixed rate failed once with 6 polls where 8 were asked).
            start = {name: bus.stats(name).polls for name in ("u2", "u3")}
            await asyncio.sleep(elapsed)
            alone = {name: bus.stats(name).polls - start[name] for name in ("u2", "u3")}
            f4 = sim.devices[1]
            assert isinstance(f4, WatlowF4)
            assert f4.register_values()[REG_SP1] == 645
            for name in ("u2", "u3"):
                # The writes went between the polls: the other slaves kept most of their rate, and failed none.
                assert during[name] >= 0.6 * alone[name] - 1, (name, during, alone, elapsed)
                assert bus.stats(name).failures == 0
    assert bus.kinds().count("write_verified") == 5


async def test_rtu_over_tcp_writes() -> None:
    async with create_rtu_server("watlow-f4", tcp=("127.0.0.1", 0), units=[1], seed=1, time_scale=0) as sim:
        points = [SETPOINT, {**SETPOINT, "name": "sp16", "write": {"min": -70, "max": 180, "multiple": True}},
                  {**SETPOINT, "name": "pv", "address": 100}]  # fmt: skip
        config = instrument("modbus-rtu-over-tcp", points, host="127.0.0.1", port=sim.port, baudrate=19200)
        async with running([config]) as bus:
            assert (await bus.write("chamber", "temp_sp", 30.0)).ok
            assert (await bus.write("chamber", "sp16", 31.5)).readback == 31.5
            readonly = await bus.write("chamber", "pv", 1.0)
            assert "point 'pv'" in readonly.message
            assert "exception 02 (illegal data address)" in readonly.message


async def test_write_on_a_link_that_is_down_is_refused_at_once() -> None:
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        port = sim.port
    config = instrument("modbus-tcp", [SETPOINT], host="127.0.0.1", port=port)
    bus = Bus([config])
    outcome = await bus.write("chamber", "temp_sp", 20.0)
    assert not outcome.ok
    assert "is not connected: nothing was sent" in outcome.message
    assert isinstance(bus.scheduler.link, Link)


# ------------------------------------------------------------------------------------------------- SCPI


async def test_keithley_source_level_with_error_queue_and_opc_checks() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=1, time_scale=0) as sim:
        limits = {"min": -250, "max": 250}
        points = [
            {"name": "vsrc", "query": ":SOUR:VOLT?", "write": {**limits, "command": ":SOUR:VOLT {value}"}},
            {"name": "vsrc_opc", "query": ":SOUR:VOLT?",
             "write": {**limits, "command": ":SOUR:VOLT:LEV {value}", "check": "opc"}},
            {"name": "vbad", "query": ":SOUR:VOLT?", "write": {**limits, "command": ":SOUR:VOLTAGE:BOGUS {value}"}},
        ]  # fmt: skip
        config = instrument("scpi-tcp", points, host="127.0.0.1", port=sim.port, name="smu")
        smu = sim.device
        assert isinstance(smu, Keithley2400)
        async with running([config]) as bus:
            outcome = await bus.write("smu", "vsrc", 5.5)
            assert outcome.ok, outcome.message
            assert (outcome.readback, smu.voltage) == (5.5, 5.5)
            assert (await bus.write("smu", "vsrc_opc", 1.25)).readback == 1.25
            # The instrument refuses 230 V (its range is 210 V): the error queue names it, the level is unchanged.
            refused = await bus.write("smu", "vsrc", 230.0)
            assert not refused.ok
            assert "refused by the instrument: -224" in refused.message
            unknown = await bus.write("smu", "vbad", 1.0)
            assert "-113" in unknown.message
            assert smu.voltage == 1.25


# ------------------------------------------------------------------------------------------------- HTTP


async def test_http_writes_are_off_by_default_and_need_the_token(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    token_file = tmp_path / "write-token"
    token_file.write_text(token + "\n")
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        f4 = sim.devices[1]
        assert isinstance(f4, WatlowF4)
        config = instrument("modbus-tcp", [SETPOINT], host="127.0.0.1", port=sim.port)
        async with running([config]) as bus:
            assert await http_routes(HttpWritesConfig(), bus.service) == {}  # off by default
            routes = await http_routes(HttpWritesConfig(enabled=True, token_file=token_file), bus.service)
            service = bus.service
            endpoint = HttpEndpoint(listen="127.0.0.1:0", registry=CollectorRegistry(), health=lambda: (True, ""),
                                    status=lambda: {"writes": service.status()}, post_routes=routes)  # fmt: skip
            body = {"rig": "r1", "instrument": "chamber", "point": "temp_sp", "value": 55.5, "reason": "http",
                    "user": "alice"}  # fmt: skip
            async with endpoint, aiohttp.ClientSession() as session:
                requests_before = sim.stats.requests
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                    async with session.post(f"{endpoint.url}/write", json=body, headers=headers) as reply:
                        assert reply.status == 401
                        assert token not in await reply.text()
                assert sim.stats.requests == requests_before  # refused before the wire
                auth = {"Authorization": f"Bearer {token}"}
                async with session.post(f"{endpoint.url}/write", json=body, headers=auth) as reply:
                    assert reply.status == 200
                    assert (await reply.json())["readback"] == 55.5
                async with session.post(f"{endpoint.url}/write", json={**body, "value": 999}, headers=auth) as reply:
                    assert reply.status == 409
                    assert "outside the write limits" in (await reply.json())["error"]
                async with session.post(f"{endpoint.url}/write", data=b"x" * 5000, headers=auth) as reply:
                    assert reply.status == 400
                async with session.get(f"{endpoint.url}/status") as reply:
                    page = await reply.text()
                    assert token not in page
                    assert '"verified": 1' in page or '"verified":1' in page
    assert f4.register_values()[REG_SP1] == 555
    assert bus.events[-1][2]["who"] == "http 127.0.0.1 as alice"


# ------------------------------------------------------------------------------------------------ probe


async def test_probe_write_reads_before_and_after_and_needs_yes_without_a_terminal() -> None:
    async with serve("watlow-f4", seed=1, time_scale=0) as sim:
        f4 = sim.devices[1]
        assert isinstance(f4, WatlowF4)
        where = ("--tcp", f"127.0.0.1:{sim.port}")
        # pytest's stdin is not a terminal: without --yes nothing goes on the wire.
        requests = sim.stats.requests
        assert await probe(*where, "--write", "300=1000") == (
            2, "probe: refusing to write: stdin is not a terminal; add --yes to write from a script\n",
        )  # fmt: skip
        assert sim.stats.requests == requests
        code, text = await probe(*where, "--write", "300=1000", "--yes")
        assert code == 0, text
        assert text.splitlines() == ["before: 1250", "wrote:  FC06 at 300 = 03e8", "after:  1000"]
        code, text = await probe(*where, "--write", "300=-12.5", "--type", "int16", "--scale", "0.1", "--yes")
        assert (code, text.splitlines()[-1]) == (0, "after:  -12.5")
        assert f4.register_values()[REG_SP1] == (-125) & 0xFFFF
        code, text = await probe(*where, "--write", "100=5", "--yes")
        assert code == 1
        assert "exception 02 (illegal data address)" in text


async def probe(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_probe_arguments(parser)
    out = io.StringIO()
    code = await run_probe_async(parser.parse_args(argv), out)
    return code, out.getvalue()


# ---------------------------------------------------------------------- a write whose reply never comes


@asynccontextmanager
async def swallowing_server(registers: dict[int, int], requests: list[bytes]) -> AsyncIterator[int]:
    """Modbus TCP: FC03 answered; FC06 applied but never answered (a reply lost on the way back)."""

    handlers: set[asyncio.Task[None]] = set()

    async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(7)
            transaction, _, length, unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(length - 1)
            requests.append(pdu)
            function, address, value = struct.unpack(">BHH", pdu[:5])
            if function == 6:
                registers[address] = value
                continue
            data = b"".join(struct.pack(">H", registers.get(address + i, 0)) for i in range(value))
            reply = bytes((function, len(data))) + data
            writer.write(struct.pack(">HHHB", transaction, 0, len(reply) + 1, unit) + reply)

    server = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait(handlers, timeout=5)  # the client closed its end: each handler ends
        await server.wait_closed()


async def test_a_write_that_times_out_is_not_sent_again_and_the_read_back_decides() -> None:
    requests: list[bytes] = []
    registers = {300: 1250}
    async with swallowing_server(registers, requests) as port:
        config = instrument("modbus-tcp", [SETPOINT], host="127.0.0.1", port=port, timeout=0.2, interval=3600)
        async with running([config]) as bus:
            outcome = await bus.write("chamber", "temp_sp", 80.0)
    assert outcome.ok, outcome.message
    assert "its reply timed out, the read-back confirms it" in outcome.message
    assert [pdu[0] for pdu in requests].count(6) == 1  # sent once, never repeated
    assert registers[300] == 800
    assert bus.kinds() == ["write_requested", "write_verified"]
    assert bus.events[-1][2]["timed_out"] is True
