"""Every TCP transport under uvloop, the loop the daemon runs on when uvloop is installed (``edge_daq.loop``).

uvloop's transports are not subclasses of asyncio's, and its timers have their own resolution: the drivers
must not depend on either. Each driver polls a simulator over real loopback TCP inside a uvloop event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from edge_daq.drivers.base import PollResult
from edge_daq.drivers.modbus.config import ModbusRtuOverTcpConfig, ModbusTcpConfig
from edge_daq.drivers.modbus.rtu import OVER_TCP_PLUGIN
from edge_daq.drivers.modbus.tcp import PLUGIN as MODBUS_TCP
from edge_daq.drivers.opcua.config import OpcUaConfig
from edge_daq.drivers.opcua.driver import PLUGIN as OPCUA
from edge_daq.drivers.scpi.config import ScpiTcpConfig
from edge_daq.drivers.scpi.driver import TCP_PLUGIN as SCPI_TCP
from edge_daq.loop import sleep_precisely
from simulators import create_line_server, create_rtu_server, serve, serve_opcua

F4_POINTS = [{"name": "pv", "address": 100, "type": "int16", "scale": 0.1}]


def run_on_uvloop(test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(test())  # type: ignore[arg-type]


async def poll_twice(plugin: Any, config: Any) -> list[PollResult]:
    link = plugin.open_link([config])
    instrument = plugin.make_instrument(config)
    await link.open()
    try:
        return [await instrument.poll(link), await instrument.poll(link)]
    finally:
        await link.close()


def test_modbus_tcp_under_uvloop() -> None:
    async def scenario() -> None:
        async with serve("watlow-f4", port=0, seed=1) as server:
            config = ModbusTcpConfig.model_validate(
                {"name": "f4", "driver": "modbus-tcp", "host": "127.0.0.1", "port": server.port, "points": F4_POINTS}
            )
            for result in await poll_twice(MODBUS_TCP, config):
                assert isinstance(result.fields["pv"], float)
                assert not result.errors

    run_on_uvloop(scenario)


def test_modbus_rtu_over_tcp_under_uvloop() -> None:
    async def scenario() -> None:
        async with create_rtu_server("watlow-f4", tcp=("127.0.0.1", 0), baudrate=115200) as server:
            config = ModbusRtuOverTcpConfig.model_validate({
                "name": "f4", "driver": "modbus-rtu-over-tcp", "host": "127.0.0.1", "port": server.port,
                "baudrate": 115200, "points": F4_POINTS,
            })  # fmt: skip
            for result in await poll_twice(OVER_TCP_PLUGIN, config):
                assert isinstance(result.fields["pv"], float)

    run_on_uvloop(scenario)


def test_scpi_tcp_under_uvloop() -> None:
    async def scenario() -> None:
        async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0)) as server:
            config = ScpiTcpConfig.model_validate({
                "name": "smu", "driver": "scpi-tcp", "host": "127.0.0.1", "port": server.port,
                "points": [{"query": ":READ?", "fields": ["v", "i", "r", "t", "s"]}],
            })  # fmt: skip
            for result in await poll_twice(SCPI_TCP, config):
                assert set(result.fields) >= {"v", "i"}

    run_on_uvloop(scenario)


def test_precise_sleep_under_uvloop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for delay in (0.0005, 0.00175, 0.0042):
            started = loop.time()
            await sleep_precisely(delay)
            assert loop.time() - started >= delay

    run_on_uvloop(scenario)


def test_opcua_polled_and_subscribed_under_uvloop() -> None:
    async def test() -> None:
        async with serve_opcua(seed=1, time_scale=60, update_interval=0.05) as server:
            points = [{"name": "pv", "node": "ns=2;s=Chamber.Temperature"}]
            base = {"name": "chamber", "driver": "opcua", "endpoint": server.endpoint, "points": points}
            polled = OpcUaConfig.model_validate(base)
            subscribed = OpcUaConfig.model_validate(base | {"mode": "subscribe", "publishing_interval": 0.05})
            results = await poll_twice(OPCUA, polled)
            assert all(isinstance(result.fields["pv"], float) for result in results)
            link = OPCUA.open_link([subscribed])
            instrument = OPCUA.make_instrument(subscribed)
            await link.open()
            try:
                samples: list[Any] = []
                async with asyncio.timeout(10):
                    while len(samples) < 3:
                        samples += (await instrument.poll(link)).samples or []
                        await asyncio.sleep(0.05)
            finally:
                await link.close()
            history = dict(server.served("Temperature"))
            assert all(history[at] == fields["pv"] for at, fields in samples)

    run_on_uvloop(test)
