"""Modbus TCP driver (``driver: modbus-tcp``), on pymodbus 3.16.

Sample (rig file)::

    - name: chamber
      driver: modbus-tcp
      host: 10.0.4.17
      port: 502
      unit: 1
      interval: 2s
      timeout: 500ms
      points:
        - {name: temp_pv, table: holding, address: 100, type: int16, scale: 0.1}

Every instrument (unit id) behind one ``host:port`` shares one :class:`ModbusTcpLink`, that is one TCP
connection and one pymodbus client, with one request in flight at a time.

How pymodbus 3.16 is driven, and why (checked against its source, ``transaction/transaction.py``):

- ``retries=0``: pymodbus would resend on timeout with the same transaction id; the scheduler owns retries.
- ``reconnect_delay=0``: no background reconnect task; the scheduler closes and reopens the link with its
  own backoff. A fresh client is made at each :meth:`ModbusTcpLink.open`, so no state (receive buffer,
  transaction ids, no-response counter) survives a reopen.
- pymodbus closes the connection itself after ``retries + 3`` consecutive unanswered requests, so one dead
  unit behind a gateway would cut off its neighbours; that counter is set out of reach, the scheduler decides.
- The response timeout is pymodbus's own (``comm_params.timeout_connect`` of its transaction manager, read
  at every connect and every response wait, there is no per-call argument), set to the polling instrument's
  ``timeout`` before each request, under the link's lock. No outer cancellation is needed; a wider
  ``asyncio.timeout`` is only a safety net.
- A reply that arrives after its request timed out cannot be taken for the next request's reply: the socket
  framer skips any frame whose MBAP transaction id differs from the pending request's (devices that answer
  with transaction id 0 are the exception pymodbus makes), and a reply with no pending request is dropped.
- When the server closes the connection mid-request pymodbus does not fail the pending request, it times out;
  the link then reports the lost connection rather than a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from edge_daq.drivers.base import DriverPlugin, InstrumentConfig
from edge_daq.drivers.modbus.config import ModbusTcpConfig, Table
from edge_daq.drivers.modbus.planner import ReadRequest, is_bit_table
from edge_daq.drivers.modbus.reads import EXCEPTION_NAMES, ModbusInstrument, ModbusLink
from edge_daq.errors import (
    DeviceError,
    DriverConnectionError,
    DriverProtocolError,
    DriverTimeoutError,
)

# pymodbus 3.16 reports an unanswered request as a ModbusIOException with this text (no subclass, no code).
_NO_RESPONSE_TEXT = "No response received"
# Effectively never: pymodbus must not close a shared connection on its own after unanswered requests.
_NEVER = 2**31
# Margin of the safety-net timeout over pymodbus's own response timeout.
_SAFETY_MARGIN_S = 1.0


class ModbusTcpLink(ModbusLink):
    """One TCP connection to a Modbus server or gateway, shared by every unit id behind it."""

    def __init__(self, *, host: str, port: int, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._client: AsyncModbusTcpClient | None = None
        # One request in flight per connection: the timeout is set per request, and Modbus TCP servers
        # (gateways especially) often cannot pipeline.
        self._lock = asyncio.Lock()

    @property
    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.connected

    async def open(self) -> None:
        await self.close()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.describe,
            timeout=self.connect_timeout,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )
        client.set_max_no_responses(_NEVER)
        if not await client.connect():
            client.close()
            raise DriverConnectionError(
                f"cannot connect to {self.describe} (refused, unreachable or no answer in {self.connect_timeout:g} s)"
            )
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(self, request: ReadRequest, *, unit: int, response_timeout: float) -> Sequence[int]:
        """Execute one planned read and return its registers, or its bits as bools; else a DriverError.

        ``response_timeout`` is handed to pymodbus rather than enforced by cancelling it from outside.
        """
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                raise DriverConnectionError(f"{self.describe} is not connected")
            client.ctx.comm_params.timeout_connect = response_timeout
            try:
                async with asyncio.timeout(response_timeout + _SAFETY_MARGIN_S):
                    response = await _execute(client, request, unit)
            except ConnectionException as exc:
                raise DriverConnectionError(f"{self.describe}: connection lost") from exc
            except ModbusIOException as exc:
                if _NO_RESPONSE_TEXT not in exc.string:
                    raise DriverProtocolError(f"{self.describe} unit {unit}: {exc.string}") from exc
                if not client.connected:
                    raise DriverConnectionError(f"{self.describe}: connection lost") from exc
                raise DriverTimeoutError(
                    f"{self.describe} unit {unit}: no response within {response_timeout:g} s "
                    f"(FC{request.function_code:02d} at {request.address})"
                ) from exc
            except TimeoutError as exc:
                raise DriverTimeoutError(
                    f"{self.describe} unit {unit}: no response within {response_timeout:g} s"
                ) from exc
            except ModbusException as exc:
                raise DriverProtocolError(f"{self.describe} unit {unit}: {exc.string}") from exc
        return _values(response, request, unit=unit, where=self.describe)


async def _execute(client: AsyncModbusTcpClient, request: ReadRequest, unit: int) -> ModbusPDU:
    table: Table = request.table
    if table == "holding":
        return await client.read_holding_registers(request.address, count=request.count, device_id=unit)
    if table == "input":
        return await client.read_input_registers(request.address, count=request.count, device_id=unit)
    if table == "coil":
        return await client.read_coils(request.address, count=request.count, device_id=unit)
    return await client.read_discrete_inputs(request.address, count=request.count, device_id=unit)


def _values(response: ModbusPDU, request: ReadRequest, *, unit: int, where: str) -> Sequence[int]:
    if isinstance(response, ExceptionResponse) or response.isError():
        code = getattr(response, "exception_code", 0)
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise DeviceError(
            f"{where} unit {unit}: exception {code:02d} ({name}) "
            f"for FC{request.function_code:02d} at {request.address} count {request.count}"
        )
    values: Sequence[int]
    if is_bit_table(request.table):
        values = response.bits  # padded to whole bytes: longer than asked is normal
        short = len(values) < request.count
    else:
        values = response.registers
        short = len(values) != request.count
    if short:
        raise DriverProtocolError(
            f"{where} unit {unit}: reply holds {len(values)} values, asked for {request.count}, "
            f"for FC{request.function_code:02d} at {request.address}"
        )
    return values


class ModbusTcpInstrument(ModbusInstrument[ModbusTcpConfig, ModbusTcpLink]):
    """A Modbus TCP unit: the shared plan and poll over a pymodbus connection."""


class ModbusTcpPlugin(DriverPlugin[ModbusTcpConfig, ModbusTcpLink]):
    name: ClassVar[str] = "modbus-tcp"
    config_model: ClassVar[type[InstrumentConfig]] = ModbusTcpConfig

    def link_key(self, config: ModbusTcpConfig) -> str:
        return f"tcp://{config.host}:{config.port}"

    def open_link(self, configs: Sequence[ModbusTcpConfig]) -> ModbusTcpLink:
        first = configs[0]
        # The slowest instrument on the endpoint bounds how long a connect may take.
        return ModbusTcpLink(
            host=first.host, port=first.port, connect_timeout=max(config.timeout for config in configs)
        )

    def make_instrument(self, config: ModbusTcpConfig) -> ModbusTcpInstrument:
        return ModbusTcpInstrument(config)


PLUGIN = ModbusTcpPlugin()
