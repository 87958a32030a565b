"""The instrument simulators, over real TCP on free loopback ports (and mbpoll as a third-party client)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from edge_daq.drivers.modbus.config import ModbusPoint, ModbusTcpConfig
from simulators import SIMULATORS, serve
from simulators.burnin_board import BurnInBoard, Failure, socket_register
from simulators.cli import main
from simulators.modbus_server import Faults, ModelClock
from simulators.watlow_f4 import WatlowF4

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "config" / "profiles"
PROFILE_KEYS = {"profile", "driver", "byte_order", "address_base", "timeout", "interval", "points", "channels"}


# ------------------------------------------------------------------------------------------------ helpers


class RawModbus:
    """A minimal MBAP client for what a library client hides: pipelining, silence, raw exception codes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawModbus:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, transaction: int, unit: int, pdu: bytes) -> None:
        self.writer.write(struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu)

    async def receive(self, within: float = 2.0) -> tuple[int, int, bytes]:
        async with asyncio.timeout(within):
            transaction, protocol, length, unit = struct.unpack(">HHHB", await self.reader.readexactly(7))
            assert protocol == 0
            return transaction, unit, await self.reader.readexactly(length - 1)

    async def call(self, unit: int, pdu: bytes, transaction: int = 1) -> bytes:
        self.send(transaction, unit, pdu)
        answered_transaction, answered_unit, reply = await self.receive()
        assert (answered_transaction, answered_unit) == (transaction, unit)
        return reply

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def read_pdu(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


def registers_of(reply: bytes) -> list[int]:
    assert reply[0] in (3, 4), f"not a register reply: {reply!r}"
    return list(struct.unpack(f">{reply[1] // 2}H", reply[2:]))


def i16(register: int) -> int:
    return register - 0x10000 if register & 0x8000 else register


@pytest.fixture
async def raw_client() -> AsyncIterator[list[RawModbus]]:
    """Closes every RawModbus a test appends."""
    clients: list[RawModbus] = []
    yield clients
    for client in clients:
        await client.close()


async def raw(clients: list[RawModbus], port: int) -> RawModbus:
    client = await RawModbus.connect(port)
    clients.append(client)
    return client


def modbus_client(port: int) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)


class FakeTime:
    """A monotonic source the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------------ Watlow F4


async def test_mbpoll_reads_the_f4_model_code() -> None:
    # Fail, never skip: a missing third-party client must not turn this check silently green.
    if shutil.which("mbpoll") is None:
        pytest.fail("mbpoll is not installed (Debian package mbpoll)", pytrace=False)
    async with serve("watlow-f4", port=0, seed=1) as server:
        process = await asyncio.create_subprocess_exec(
            "mbpoll", "-m", "tcp", "-a", "1", "-p", str(server.port), "-t", "4", "-0", "-r", "0", "-c", "1",
            "-1", "-o", "2", "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert re.search(r"^\[0\]:\s+5270$", stdout.decode(), re.MULTILINE), stdout.decode()


async def test_f4_pv_ramps_toward_the_setpoint_with_time_scale() -> None:
    # 600x: half a real second is 300 model seconds of heating at the 5 degC/min rate limit.
    async with serve("watlow-f4", port=0, seed=1, time_scale=600) as server, modbus_client(server.port) as client:
        start = await client.read_holding_registers(100, count=4, device_id=1)
        await asyncio.sleep(0.5)
        later = await client.read_holding_registers(100, count=4, device_id=1)
        setpoint = await client.read_holding_registers(300, count=1, device_id=1)
    assert setpoint.registers == [1250]
    assert abs(i16(start.registers[0]) - 230) <= 15  # ambient 23.0 degC at start
    assert 230 + 150 <= i16(later.registers[0]) < 1250
    assert i16(later.registers[3]) == 10000  # heating at full power while the rate limit holds


def test_f4_thermal_model_settles_at_the_setpoint_and_cools_below_ambient() -> None:
    fake = FakeTime()
    f4 = WatlowF4(seed=1, clock=ModelClock(1.0, source=fake), setpoint=125.0, time_constant=60.0)
    fake.now += 600  # 10 min of a ~20 min rate-limited ramp: 50 degC at 5 degC/min
    assert f4.air_temperature == pytest.approx(73.0)
    fake.now += 3 * 3600
    assert f4.air_temperature == pytest.approx(125.0, abs=0.01)
    registers = f4.read_registers("holding", 100, 4)
    assert abs(registers[0] - 1250) <= 1  # noise stays within +/-0.05 degC
    assert 3300 <= i16(registers[3]) <= 3800  # holding power against losses, about 35 %

    f4.write_registers(300, [(-400) & 0xFFFF])  # -40.0 degC
    fake.now += 60
    assert f4.air_temperature == pytest.approx(122.0)  # cooling at 3 degC/min
    assert i16(f4.read_registers("holding", 103, 1)[0]) == -10000
    fake.now += 6 * 3600
    assert f4.air_temperature == pytest.approx(-40.0, abs=0.01)
    assert i16(f4.read_registers("holding", 103, 1)[0]) < 0  # refrigeration holds it below ambient


def test_f4_lazy_integration_does_not_depend_on_how_often_it_is_read() -> None:
    fake_a, fake_b = FakeTime(), FakeTime()
    often = WatlowF4(seed=2, clock=ModelClock(1.0, source=fake_a))
    rarely = WatlowF4(seed=2, clock=ModelClock(1.0, source=fake_b))
    for _ in range(2000):
        fake_a.now += 1.0
        _ = often.air_temperature
    fake_b.now += 2000.0
    assert often.air_temperature == pytest.approx(rarely.air_temperature, abs=1e-9)


async def test_f4_setpoint_write_with_fc06_and_its_limits(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, seed=1, time_scale=0) as server, modbus_client(server.port) as client:
        written = await client.write_register(300, 850, device_id=1)
        assert not written.isError()
        assert (await client.read_holding_registers(300, count=1, device_id=1)).registers == [850]
        assert server.devices[1].setpoint1 == pytest.approx(85.0)  # type: ignore[attr-defined]

        f4 = await raw(raw_client, server.port)
        assert await f4.call(1, struct.pack(">BHH", 6, 300, 2000)) == bytes((0x86, 0x03))  # 200.0 > range
        assert await f4.call(1, struct.pack(">BHH", 6, 100, 0)) == bytes((0x86, 0x02))  # PV is read-only
        assert await f4.call(1, struct.pack(">BHH", 6, 301, 0)) == bytes((0x86, 0x02))  # inactive parameter
        negative = struct.pack(">BHHBhh", 0x10, 300, 2, 4, -300, 0)  # FC16 300..301: 301 refuses, nothing written
        assert await f4.call(1, negative) == bytes((0x90, 0x02))
        assert registers_of(await f4.call(1, read_pdu(3, 300, 1))) == [850]
        assert await f4.call(1, struct.pack(">BHH", 6, 300, (-300) & 0xFFFF)) == struct.pack(">BHH", 6, 300, 65236)
        assert i16(registers_of(await f4.call(1, read_pdu(3, 300, 1)))[0]) == -300


async def test_f4_map_gaps_read_zero_and_reads_past_the_map_are_exception_02(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, seed=1, time_scale=0) as server:
        f4 = await raw(raw_client, server.port)
        assert registers_of(await f4.call(1, read_pdu(3, 899, 3))) == [0, 0, 1]  # 901: degC
        assert await f4.call(1, read_pdu(3, 902, 1)) == bytes((0x83, 0x02))
        assert await f4.call(1, read_pdu(3, 901, 2)) == bytes((0x83, 0x02))  # straddles the end
        assert await f4.call(1, read_pdu(4, 5000, 1)) == bytes((0x84, 0x02))
        assert registers_of(await f4.call(1, read_pdu(3, 600, 9))) == [0, 0, (-700) & 0xFFFF, 1800, 0, 0, 1, 0, 0]


async def test_f4_answers_fc04_exactly_like_fc03(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, seed=3, time_scale=0) as server:
        f4 = await raw(raw_client, server.port)
        for address, count in ((0, 125), (100, 5), (300, 20), (600, 17), (880, 22)):
            holding = registers_of(await f4.call(1, read_pdu(3, address, count)))
            inputs = registers_of(await f4.call(1, read_pdu(4, address, count)))
            assert holding == inputs


async def test_f4_decimal_places_and_fahrenheit_rescale_every_temperature(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, seed=1, time_scale=0, ambient=25.0) as server:
        f4 = await raw(raw_client, server.port)
        assert await f4.call(1, struct.pack(">BHH", 6, 606, 2)) == struct.pack(">BHH", 6, 606, 2)
        assert registers_of(await f4.call(1, read_pdu(3, 300, 1))) == [12500]
        assert abs(registers_of(await f4.call(1, read_pdu(3, 100, 1)))[0] - 2500) <= 5
        await f4.call(1, struct.pack(">BHH", 6, 901, 0))
        assert registers_of(await f4.call(1, read_pdu(3, 300, 1))) == [25700]  # 257.00 degF
        assert await f4.call(1, struct.pack(">BHH", 6, 606, 7)) == bytes((0x86, 0x03))


# ------------------------------------------------------------------------------------------------ protocol


async def test_pipelined_requests_are_answered_in_order_with_their_transaction_ids(
    raw_client: list[RawModbus],
) -> None:
    async with serve("watlow-f4", port=0, seed=1, units=[1, 2], time_scale=0) as server:
        client = await raw(raw_client, server.port)
        requests = [(0x1234, 1, read_pdu(3, 0, 1)), (0x1235, 2, read_pdu(4, 300, 1)), (0xFFFF, 1, b"\x07")]
        for transaction, unit, pdu in requests:
            client.send(transaction, unit, pdu)  # all written before any reply is read
        replies = [await client.receive() for _ in requests]
    assert replies == [
        (0x1234, 1, bytes((3, 2)) + struct.pack(">H", 5270)),
        (0x1235, 2, bytes((4, 2)) + struct.pack(">H", 1250)),
        (0xFFFF, 1, bytes((0x87, 0x01))),
    ]


async def test_illegal_functions_and_counts(raw_client: list[RawModbus]) -> None:
    async with serve("burnin-board", port=0, seed=1, time_scale=0) as board, serve("watlow-f4", port=0) as f4:
        client = await raw(raw_client, board.port)
        assert await client.call(1, b"\x2b\x0e\x01\x00") == bytes((0xAB, 0x01))  # device identification
        assert await client.call(1, read_pdu(3, 0, 0)) == bytes((0x83, 0x03))
        assert await client.call(1, read_pdu(3, 1000, 126)) == bytes((0x83, 0x03))
        assert await client.call(1, read_pdu(4, 65535, 2)) == bytes((0x84, 0x02))
        assert await client.call(1, read_pdu(2, 0, 2001)) == bytes((0x82, 0x03))
        assert await client.call(1, read_pdu(3, 0, 1)[:3]) == bytes((0x83, 0x03))  # truncated PDU
        assert await client.call(1, struct.pack(">BHH", 5, 0, 0x1234)) == bytes((0x85, 0x03))
        assert await client.call(1, struct.pack(">BHHBH", 0x10, 20, 2, 2, 1)) == bytes((0x90, 0x03))
        assert registers_of(await client.call(1, read_pdu(3, 1000, 125)))  # 125 is the largest read
        controller = await raw(raw_client, f4.port)
        assert await controller.call(1, read_pdu(1, 0, 1)) == bytes((0x81, 0x01))  # the F4 has no coils


async def test_several_units_and_unknown_units(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, seed=1, units=[1, 2, 7], time_scale=0, setpoint=60.0) as server:
        client = await raw(raw_client, server.port)
        for unit in (1, 2, 7):
            assert registers_of(await client.call(unit, read_pdu(3, 0, 1))) == [5270]
        await client.call(2, struct.pack(">BHH", 6, 300, 900))
        assert registers_of(await client.call(1, read_pdu(3, 300, 1))) == [600]  # units are separate models
        assert registers_of(await client.call(2, read_pdu(3, 300, 1))) == [900]
        assert await client.call(3, read_pdu(3, 0, 1)) == bytes((0x83, 0x0B))
        serials = {tuple(registers_of(await client.call(unit, read_pdu(3, 1, 2)))) for unit in (1, 2, 7)}
        assert len(serials) == 3
        assert server.stats.requests_by_unit[3] == 1

    async with serve("watlow-f4", port=0, units=[1], unknown_unit="silent") as server:
        client = await raw(raw_client, server.port)
        client.send(1, 9, read_pdu(3, 0, 1))
        client.send(2, 1, read_pdu(3, 0, 1))
        assert (await client.receive())[:2] == (2, 1)  # unit 9 stayed silent; the connection lives on
        assert server.stats.unanswered == 1


# ------------------------------------------------------------------------------------------------ faults


async def test_fault_no_answer_for_one_unit(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, units=[1, 2], faults=["no-answer:2"]) as server:
        client = await raw(raw_client, server.port)
        client.send(10, 2, read_pdu(3, 0, 1))
        client.send(11, 1, read_pdu(3, 0, 1))
        transaction, unit, reply = await client.receive()
        assert (transaction, unit, registers_of(reply)) == (11, 1, [5270])
        with pytest.raises(TimeoutError):
            await client.receive(within=0.3)


async def test_fault_no_answer_for_every_unit(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, faults=Faults(silent_all=True)) as server:
        client = await raw(raw_client, server.port)
        client.send(1, 1, read_pdu(3, 0, 1))
        with pytest.raises(TimeoutError):
            await client.receive(within=0.3)
        assert server.stats.unanswered == 1


async def test_fault_exception02_answers_reads_but_serves_writes() -> None:
    async with serve("watlow-f4", port=0, faults=["exception02"]) as server, modbus_client(server.port) as client:
        for read in (client.read_holding_registers, client.read_input_registers):
            reply = await read(0, count=1, device_id=1)
            assert reply.isError()
            assert reply.exception_code == 2
        assert not (await client.write_register(300, 700, device_id=1)).isError()
    assert server.devices[1].setpoint1 == pytest.approx(70.0)  # type: ignore[attr-defined]


async def test_fault_slow_delays_every_reply(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, faults=["slow:0.3"], latency=0.05) as server:
        client = await raw(raw_client, server.port)
        started = time.monotonic()
        assert registers_of(await client.call(1, read_pdu(3, 0, 1))) == [5270]
        assert time.monotonic() - started >= 0.35


async def test_fault_drop_after_closes_each_connection_after_n_replies(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0, faults=["drop-after:2"]) as server:
        client = await raw(raw_client, server.port)
        for transaction in (1, 2, 3):
            client.send(transaction, 1, read_pdu(3, 0, 1))
        assert [(await client.receive())[0] for _ in range(2)] == [1, 2]
        assert await client.reader.read() == b""  # closed without answering the third request
        again = await raw(raw_client, server.port)  # a reconnecting client is served again
        assert registers_of(await again.call(1, read_pdu(3, 0, 1))) == [5270]
        assert server.stats.dropped_connections == 1
        assert server.stats.connections == 2


def test_fault_specs_parse_and_reject() -> None:
    faults = Faults.parse(["no-answer:3", "slow:250ms", "drop-after:5", "exception02"])
    assert faults == Faults(frozenset({3}), False, True, 0.25, 5)
    assert faults.describe() == ["no-answer:3", "exception02", "slow:0.25", "drop-after:5"]
    for bad in ("no-answer:300", "slow", "slow:fast", "drop-after:0", "exception03", "exception02:1"):
        with pytest.raises(ValueError, match=r"fault|unit id|seconds"):
            Faults.parse([bad])


async def test_counters_track_requests_and_replies(raw_client: list[RawModbus]) -> None:
    async with serve("watlow-f4", port=0) as server:
        client = await raw(raw_client, server.port)
        await client.call(1, read_pdu(3, 0, 1))
        await client.call(1, read_pdu(3, 5000, 1))
        await client.call(4, read_pdu(3, 0, 1))
        stats = server.stats
        assert (stats.connections, stats.requests, stats.replies, stats.exceptions) == (1, 3, 3, 2)


# ------------------------------------------------------------------------------------------------ burn-in board


async def test_burnin_board_socket_layout_and_bias_switch(raw_client: list[RawModbus]) -> None:
    async with serve("burnin-board", port=0, seed=5, time_scale=0) as server:
        board = await raw(raw_client, server.port)
        assert registers_of(await board.call(1, read_pdu(3, 0, 3))) == [1, 0x0103, 32]
        assert abs(registers_of(await board.call(1, read_pdu(3, 10, 1)))[0] - 1250) < 10
        for socket in (1, 2, 17, 32):
            voltage, current, status = registers_of(await board.call(1, read_pdu(3, socket_register(socket, 0), 3)))
            assert 150 <= current <= 900  # 0.1 mA units around 45 mA
            assert voltage == pytest.approx(3300 - current / 10 * 0.5, abs=3)  # I*R sag plus ADC noise
            assert status == 0b10  # supply on, no over-current
        assert socket_register(32, 2) == 1312
        assert registers_of(await board.call(1, read_pdu(3, 1313, 1))) == [1]  # socket 32's enable
        assert await board.call(1, read_pdu(3, 1314, 1)) == bytes((0x83, 0x02))  # past the last socket
        assert registers_of(await board.call(1, read_pdu(3, 1003, 7))) == [1] + [0] * 6  # enable, stride gap

        # A disabled socket's supply is off (0 V, 0 mA); its neighbours are untouched; 2 is no enable value.
        assert await board.call(1, struct.pack(">BHH", 6, 1013, 0)) == struct.pack(">BHH", 6, 1013, 0)
        assert registers_of(await board.call(1, read_pdu(3, 1010, 4))) == [0, 0, 0, 0]
        assert registers_of(await board.call(1, read_pdu(3, 1001, 1)))[0] > 0
        assert await board.call(1, struct.pack(">BHH", 6, 1013, 2)) == bytes((0x86, 0x03))
        assert await board.call(1, struct.pack(">BHH", 6, 1013, 1)) == struct.pack(">BHH", 6, 1013, 1)

        await board.call(1, struct.pack(">BHH", 6, 20, 0))  # bias off
        assert registers_of(await board.call(1, read_pdu(3, 1000, 125)))[::10] == [0] * 13
        assert registers_of(await board.call(1, read_pdu(3, 1001, 3))) == [0, 0, 1]  # no current, enabled
        assert await board.call(1, read_pdu(1, 0, 1)) == bytes((1, 1, 0))  # coil 0 mirrors bias
        assert await board.call(1, struct.pack(">BHH", 6, 20, 2)) == bytes((0x86, 0x03))

        assert await board.call(1, struct.pack(">BHH", 5, 0, 0xFF00)) == struct.pack(">BHH", 5, 0, 0xFF00)
        assert registers_of(await board.call(1, read_pdu(4, 20, 1))) == [1]
        assert registers_of(await board.call(1, read_pdu(3, 1001, 1)))[0] > 0


async def test_burnin_board_over_current_latches_until_the_status_is_written(raw_client: list[RawModbus]) -> None:
    async with serve("burnin-board", port=0, seed=5, time_scale=0, sockets=40) as server:
        board = await raw(raw_client, server.port)
        await board.call(1, struct.pack(">BHH", 6, 22, 10))  # limit 1.0 mA: every DUT trips
        await board.call(1, struct.pack(">BHH", 6, 22, 1200))  # limit back to 120 mA: latches hold
        latched = await board.call(1, read_pdu(2, 0, 40))
        assert latched == bytes((2, 5)) + b"\xff" * 5
        assert registers_of(await board.call(1, read_pdu(3, socket_register(7, 0), 3))) == [0, 0, 0b01]

        await board.call(1, struct.pack(">BHH", 6, socket_register(7, 2), 0))
        voltage, current, status = registers_of(await board.call(1, read_pdu(3, socket_register(7, 0), 3)))
        assert (status, voltage > 3000, current > 0) == (0b10, True, True)
        assert await board.call(1, read_pdu(2, 0, 8)) == bytes((2, 1, 0b10111111))
        assert await board.call(1, read_pdu(2, 0, 41)) == bytes((0x82, 0x02))


def test_burnin_board_currents_drift_with_stress_time_only_while_biased() -> None:
    fake = FakeTime()
    board = BurnInBoard(seed=9, clock=ModelClock(1.0, source=fake), sockets=128, drift_per_hour=1e-3, limit_ma=1000.0)
    fresh = [board.socket_current_ma(socket) for socket in range(1, 129)]
    assert 40.0 < sum(fresh) / len(fresh) < 50.0
    assert len(set(fresh)) == 128  # every DUT draws its own baseline
    fake.now += 1000 * 3600
    aged = [board.socket_current_ma(socket) for socket in range(1, 129)]
    ratios = [after / before for before, after in zip(fresh, aged, strict=True)]
    assert min(ratios) > 1.0  # leakage only grows
    assert 1.7 < sum(ratios) / len(ratios) < 2.5  # +100 % at 1e-3/h for 1000 h, log-normal spread
    assert len({round(ratio, 6) for ratio in ratios}) == 128  # and each DUT at its own rate
    assert board.stress_s == pytest.approx(1000 * 3600)

    board.write_registers(20, [0])
    fake.now += 500 * 3600
    assert board.stress_s == pytest.approx(1000 * 3600)  # no stress without bias
    assert board.read_registers("holding", 30, 2) == [(3_600_000 >> 16), 3_600_000 & 0xFFFF]


def test_burnin_board_injected_failures() -> None:
    fake = FakeTime()
    failures = [Failure.parse("3:100:short"), Failure.parse("4:100:open"), Failure.parse("5:100:leak")]
    board = BurnInBoard(seed=9, clock=ModelClock(1.0, source=fake), failures=failures)
    before = [board.socket_current_ma(socket) for socket in (3, 4, 5)]
    fake.now += 101
    assert board.over_current(3)  # the short tripped its supply
    assert board.socket_current_ma(3) == 0.0
    assert board.socket_current_ma(4) == 0.0
    assert not board.over_current(4)
    assert board.socket_current_ma(5) == pytest.approx(1.5 * before[2], rel=0.01)
    board.write_registers(socket_register(3, 2), [1])
    assert board.over_current(3)  # still shorted: trips again at once
    with pytest.raises(ValueError, match="SOCKET:AT_SECONDS:MODE"):
        Failure.parse("3:100:melt")
    with pytest.raises(ValueError, match="has 32 sockets"):
        BurnInBoard(failures=[Failure(33, 0.0, "open")])


# ------------------------------------------------------------------------------------------------ seeds


async def dump(client: RawModbus, reads: list[tuple[int, int]]) -> list[int]:
    registers: list[int] = []
    for address, count in reads:
        registers += registers_of(await client.call(1, read_pdu(3, address, count)))
    return registers


@pytest.mark.parametrize(
    ("kind", "reads"),
    [
        ("watlow-f4", [(0, 3), (100, 5), (300, 1)]),
        ("burnin-board", [(0, 32), (1000, 125), (1125, 125)]),
        ("event-detector", [(0, 21), (1000, 125), (1125, 3)]),
    ],
)
async def test_seeds_are_reproducible(kind: str, reads: list[tuple[int, int]], raw_client: list[RawModbus]) -> None:
    dumps = []
    for seed in (11, 11, 12):
        async with serve(kind, port=0, seed=seed, time_scale=0) as server:
            dumps.append(await dump(await raw(raw_client, server.port), reads))
    assert dumps[0] == dumps[1]
    assert dumps[0] != dumps[2]


# ------------------------------------------------------------------------------------------------ registry and CLI


def test_registry_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(SIMULATORS) == {"watlow-f4", "burnin-board", "event-detector"}
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(SIMULATORS)
    with pytest.raises(SystemExit) as bad_fault:
        main(["watlow-f4", "--fault", "explode"])
    assert bad_fault.value.code == 2
    assert main([]) == 2


async def test_serve_rejects_unknown_kinds_and_options() -> None:
    with pytest.raises(KeyError, match="known: burnin-board, event-detector, watlow-f4"):
        async with serve("espec-p300"):
            pass
    with pytest.raises(TypeError, match="sockets"):
        async with serve("watlow-f4", sockets=3):  # an option of another model
            pass
    with pytest.raises(ValueError, match="set point"):
        async with serve("watlow-f4", setpoint=400.0):
            pass


async def run_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(20):
        line = (await process.stdout.readline()).decode().strip()
    return process, line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serves_until_a_signal(signum: signal.Signals, raw_client: list[RawModbus]) -> None:
    process, line = await run_cli(
        "burnin-board", "--tcp", "127.0.0.1:0", "--seed", "3", "--sockets", "64", "--units", "1,2",
        "--fault", "slow:0.01",
    )  # fmt: skip
    try:
        match = re.fullmatch(r"burnin-board listening on 127\.0\.0\.1:(\d+) \(units 1,2\) faults: slow:0.01", line)
        assert match, line
        board = await raw(raw_client, int(match[1]))
        assert registers_of(await board.call(2, read_pdu(3, 2, 1))) == [64]
        assert registers_of(await board.call(2, read_pdu(3, socket_register(64, 2), 1))) == [0b10]
        process.send_signal(signum)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_reports_a_port_in_use() -> None:
    async with serve("watlow-f4", port=0) as server:
        process, _ = await run_cli("watlow-f4", "--tcp", f"127.0.0.1:{server.port}")
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
    assert process.returncode == 1
    assert "cannot listen" in stderr.decode()


# ------------------------------------------------------------------------------------------------ profiles


def load_profile(name: str) -> dict[str, Any]:
    text = (PROFILES / f"{name}.yaml").read_text()
    assert text.startswith("# "), "a profile starts with a comment header describing the device"
    profile: dict[str, Any] = yaml.safe_load(text)
    assert profile["profile"] == name
    assert set(profile) <= PROFILE_KEYS
    if "channels" in profile:  # repeated channels, expanded as the loader does: v01, i01, oc01, v02, ...
        channels = profile.pop("channels")
        for channel in range(1, channels["count"] + 1):
            for point in channels["points"]:
                address = point["address"] + channels["stride"] * (channel - 1)
                profile["points"].append({**point, "name": f"{point['name']}{channel:02d}", "address": address})
    return profile


@pytest.mark.parametrize("kind", ["watlow-f4", "burnin-board"])
async def test_profiles_validate_and_every_point_reads_from_the_simulator(
    kind: str, raw_client: list[RawModbus]
) -> None:
    profile = load_profile(kind)
    points = [ModbusPoint.model_validate(point) for point in profile["points"]]
    ModbusTcpConfig.model_validate({**profile, "name": "instrument", "host": "127.0.0.1"})
    async with serve(kind, port=0, seed=1, time_scale=0) as server:
        client = await raw(raw_client, server.port)
        for point in points:
            function = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}[point.table]
            reply = await client.call(1, read_pdu(function, point.address, point.register_count))
            assert reply[0] == function, f"{kind} point {point.name} at {point.address}: {reply!r}"


def test_burnin_profile_lists_every_socket() -> None:
    names = [point["name"] for point in load_profile("burnin-board")["points"]]
    for socket in range(1, 33):
        assert {f"v{socket:02d}", f"i{socket:02d}", f"oc{socket:02d}"} <= set(names)
    by_name = {point["name"]: point for point in load_profile("burnin-board")["points"]}
    assert (by_name["i32"]["address"], by_name["oc32"]["bit"]) == (socket_register(32, 1), 0)


async def test_watlow_profile_points_decode_to_the_model_values(raw_client: list[RawModbus]) -> None:
    points = {point["name"]: point for point in load_profile("watlow-f4")["points"]}
    async with serve("watlow-f4", port=0, seed=1, time_scale=0, setpoint=85.0) as server:
        client = await raw(raw_client, server.port)

        async def value(name: str) -> float:
            point = points[name]
            raw_value = registers_of(await client.call(1, read_pdu(3, point["address"], 1)))[0]
            signed = i16(raw_value) if point["type"] == "int16" else raw_value
            return float(signed * point.get("scale", 1))

        assert await value("model_code") == 5270
        assert await value("temp_sp") == pytest.approx(85.0)
        assert await value("temp_pv") == pytest.approx(23.0, abs=0.11)
        assert await value("decimals") == 1
        assert await value("mode") == 0
        assert 0 < await value("power_pct") <= 100
