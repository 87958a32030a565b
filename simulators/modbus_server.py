"""A small Modbus TCP server for simulated instruments, with fault injection.

Why hand-written rather than pymodbus's server: pymodbus 3.16 builds a server from ``SimDevice`` register
blocks, where every served address must be declared up front and live values come from an ``action`` hook
that patches a stored register list. Our models compute a consistent snapshot from the model clock on each
read, read 0 in the gaps of a sparse map yet answer exception 02 past its end, and reject writes per
register (exception 02 or 03). The faults the daemon's tests need (a unit that never answers, every read
answered with exception 02, slow replies, connections dropped after N replies, silence or 0x0B for an
unknown unit) sit in the transport, below anything pymodbus's server exposes. The protocol part is small
(MBAP framing plus eight function codes) and keeps the simulators free of a dependency
whose server API changes between minor versions.

The server speaks Modbus Application Protocol over TCP:

- MBAP framing: transaction id echoed, protocol id 0, several requests pipelined on one connection are
  answered one by one in order;
- FC01/02 read coils/discrete inputs, FC03/04 read holding/input registers, FC05/06 write a single
  coil/register, FC15/16 write multiple coils/registers;
- exceptions 01 (illegal function), 02 (illegal data address), 03 (illegal data value), 04 (device
  failure: a model raised something unexpected) and 0x0B (gateway target failed to respond) for a unit id
  the server does not host, or silence for it (``unknown_unit="silent"``).

Each unit id is one :class:`ModbusDevice`; models subclass :class:`RegisterMapDevice` (a sparse map shown
identically by the holding and input tables) and compute their values lazily from a :class:`ModelClock`.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

RegisterTable = Literal["holding", "input"]
BitTable = Literal["coil", "discrete"]
UnknownUnitPolicy = Literal["exception", "silent"]

MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123
MAX_READ_BITS = 2000
MAX_WRITE_BITS = 1968
ADDRESS_SPACE = 0x10000

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length (unit id + PDU), unit id
_COIL_ON = 0xFF00
_COIL_OFF = 0x0000


# ---------------------------------------------------------------------------------------------- exceptions


class ModbusExceptionResponse(Exception):
    """Raised by a device or the server to answer a request with a Modbus exception code."""

    code: int = 0x04

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or type(self).__name__)


class IllegalFunction(ModbusExceptionResponse):
    code = 0x01


class IllegalDataAddress(ModbusExceptionResponse):
    code = 0x02


class IllegalDataValue(ModbusExceptionResponse):
    code = 0x03


class ServerDeviceFailure(ModbusExceptionResponse):
    code = 0x04


GATEWAY_TARGET_FAILED = 0x0B


# ------------------------------------------------------------------------------------------ device interface


class ModelClock:
    """Model seconds since start: real monotonic time multiplied by ``time_scale``.

    ``time_scale`` speeds a model up (3600: one real second is one model hour); 0 freezes every model,
    which makes seeded values exactly reproducible. ``source`` is injectable for unit tests.
    """

    def __init__(self, time_scale: float = 1.0, *, source: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(time_scale) or time_scale < 0:
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale}")
        self.time_scale = time_scale
        self._source = source
        self._start = source()

    def now(self) -> float:
        return (self._source() - self._start) * self.time_scale


class ModbusDevice:
    """One unit id on the server. Every table is absent (exception 01) unless a model overrides it.

    Addresses are 0-based protocol addresses; the server has already checked counts and that the range
    stays inside the 65536-address space. Raise a :class:`ModbusExceptionResponse` to refuse a request.
    Writes must be all-or-nothing: validate every value before storing any.
    """

    def read_registers(self, table: RegisterTable, address: int, count: int) -> list[int]:
        raise IllegalFunction(f"no {table} registers")

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        raise IllegalFunction("holding registers are read-only")

    def read_bits(self, table: BitTable, address: int, count: int) -> list[bool]:
        raise IllegalFunction(f"no {table} table")

    def write_bits(self, address: int, values: Sequence[bool]) -> None:
        raise IllegalFunction("no coils")


class RegisterMapDevice(ModbusDevice):
    """A sparse register map shown identically by the holding (FC03) and input (FC04) tables.

    Addresses inside the map but not assigned read 0 (as instruments return 0x0000 for inactive
    parameters); a read reaching past ``highest_address`` is exception 02. Writes go to registers listed
    in ``writable_registers`` (anything else is exception 02); subclasses validate and apply them.
    """

    highest_address: int = 0
    writable_registers: frozenset[int] = frozenset()

    def register_values(self) -> Mapping[int, int]:
        """A consistent snapshot of every assigned register (unsigned 16-bit values), taken now."""
        raise NotImplementedError

    def check_write(self, address: int, value: int) -> None:
        """Raise :class:`IllegalDataValue` if ``value`` may not be written to ``address``."""

    def apply_write(self, address: int, value: int) -> None:
        raise NotImplementedError

    def read_registers(self, table: RegisterTable, address: int, count: int) -> list[int]:
        if address + count - 1 > self.highest_address:
            raise IllegalDataAddress(f"registers {address}..{address + count - 1} run past the map")
        values = self.register_values()
        return [values.get(a, 0) for a in range(address, address + count)]

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        targets = range(address, address + len(values))
        for target, value in zip(targets, values, strict=True):
            if target not in self.writable_registers:
                raise IllegalDataAddress(f"register {target} is not writable")
            self.check_write(target, value)
        for target, value in zip(targets, values, strict=True):
            self.apply_write(target, value)


def to_u16(value: float) -> int:
    """A signed reading as the unsigned register a device sends: rounded, clamped to int16, two's complement."""
    clamped = max(-32768, min(32767, round(value)))
    return clamped & 0xFFFF


def from_i16(register: int) -> int:
    """The signed value of a 16-bit register."""
    return register - 0x10000 if register & 0x8000 else register


# ------------------------------------------------------------------------------------------------- faults


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


def _parse_seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"expected seconds such as 0.5, 2s or 250ms, got {text!r}")
    return float(match[1]) * (0.001 if match[2] == "ms" else 1.0)


@dataclass(frozen=True, slots=True)
class Faults:
    """Misbehaviour to inject, in the syntax of ``--fault`` (see :meth:`parse`)."""

    silent_units: frozenset[int] = frozenset()
    """Unit ids that never answer (a dead instrument behind a gateway)."""
    silent_all: bool = False
    """No unit answers at all (the TCP connection is accepted, requests vanish)."""
    exception02: bool = False
    """Every read (FC01-04) is answered with exception 02; writes are served."""
    reply_delay: float = 0.0
    """Seconds added before every reply (an overloaded gateway)."""
    drop_after: int | None = None
    """Close each connection after this many replies."""
    crc_units: frozenset[int] = frozenset()
    """RTU only: replies of these units carry a wrong CRC."""
    crc_all: bool = False
    """RTU only: every reply carries a wrong CRC."""
    garbage: bool = False
    """Noise on the line: RTU replies are preceded by stray bytes; line (SCPI/ASCII) replies are garbled."""

    def corrupts_crc(self, unit: int) -> bool:
        return self.crc_all or unit in self.crc_units

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Faults:
        """Faults from ``--fault`` values: ``no-answer[:UNIT]``, ``exception02``, ``slow:SECONDS``,
        ``drop-after:N``, ``crc-error[:UNIT]``, ``garbage``. Raise :class:`ValueError` on anything else."""
        silent_units: set[int] = set()
        crc_units: set[int] = set()
        silent_all = exception02 = crc_all = garbage = False
        reply_delay = 0.0
        drop_after: int | None = None
        for spec in specs:
            name, _, argument = spec.strip().partition(":")
            if name == "no-answer":
                if argument:
                    silent_units.add(_parse_unit(argument))
                else:
                    silent_all = True
            elif name == "exception02" and not argument:
                exception02 = True
            elif name == "slow" and argument:
                reply_delay = _parse_seconds(argument)
            elif name == "drop-after" and argument.isdigit() and int(argument) >= 1:
                drop_after = int(argument)
            elif name == "crc-error":
                if argument:
                    crc_units.add(_parse_unit(argument))
                else:
                    crc_all = True
            elif name == "garbage" and not argument:
                garbage = True
            else:
                raise ValueError(
                    f"unknown fault {spec!r}: expected no-answer[:UNIT], exception02, slow:SECONDS, "
                    "drop-after:N (N >= 1), crc-error[:UNIT] or garbage"
                )
        return cls(
            frozenset(silent_units), silent_all, exception02, reply_delay, drop_after,
            frozenset(crc_units), crc_all, garbage,
        )  # fmt: skip

    def describe(self) -> list[str]:
        """The faults in ``--fault`` syntax, for the start-up line and logs."""
        described = ["no-answer"] if self.silent_all else []
        described += [f"no-answer:{unit}" for unit in sorted(self.silent_units)]
        described += ["exception02"] if self.exception02 else []
        described += [f"slow:{self.reply_delay:g}"] if self.reply_delay else []
        described += [f"drop-after:{self.drop_after}"] if self.drop_after is not None else []
        described += ["crc-error"] if self.crc_all else []
        described += [f"crc-error:{unit}" for unit in sorted(self.crc_units)]
        described += ["garbage"] if self.garbage else []
        return described


def _parse_unit(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise ValueError(f"a unit id is 0..255, got {text!r}")
    return int(text)


# ------------------------------------------------------------------------------------------------- server


@dataclass(slots=True)
class ServerStats:
    """Counters for tests and for the operator; never reset while the server runs."""

    connections: int = 0
    requests: int = 0
    replies: int = 0
    exceptions: int = 0
    """Replies that were exception responses (included in ``replies``)."""
    unanswered: int = 0
    """Requests deliberately left without a reply (silent units, unknown units in silent mode)."""
    dropped_connections: int = 0
    """Connections closed by the ``drop-after`` fault."""
    requests_by_unit: Counter[int] = field(default_factory=Counter)
    bad_frames: int = 0
    """RTU: request frames dropped for a wrong CRC or a broken frame (a real slave ignores them)."""


class _DropConnection(Exception):
    """The request stream cannot be parsed any more (bad MBAP header): close the connection."""


class ModbusTcpServer:
    """An asyncio Modbus TCP server hosting one :class:`ModbusDevice` per unit id.

    Use as ``async with ModbusTcpServer(...) as server:``; ``port=0`` picks a free port, read it back from
    :attr:`port` once started.
    """

    def __init__(
        self,
        devices: Mapping[int, ModbusDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults = Faults(),
        latency: float = 0.0,
        unknown_unit: UnknownUnitPolicy = "exception",
    ) -> None:
        if not devices:
            raise ValueError("a server needs at least one unit")
        for unit in devices:
            if not 0 <= unit <= 255:
                raise ValueError(f"unit ids are 0..255, got {unit}")
        if latency < 0:
            raise ValueError("latency cannot be negative")
        self.devices: dict[int, ModbusDevice] = dict(devices)
        self.host = host
        self._requested_port = port
        self.faults = faults
        self.latency = latency
        self.unknown_unit: UnknownUnitPolicy = unknown_unit
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked if 0 was requested)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def units(self) -> list[int]:
        return sorted(self.devices)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._server = await asyncio.start_server(self._serve_connection, self.host, self._requested_port)
        log.info("modbus_server_started", host=self.host, port=self.port, units=self.units)

    async def close(self) -> None:
        """Stop listening, close every open connection and wait for their handlers to finish."""
        if self._server is None:
            return
        self._server.close()
        self._closing = True
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._closing = False

    async def __aenter__(self) -> ModbusTcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- one connection

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        peer = writer.get_extra_info("peername")
        log.debug("modbus_connection_opened", peer=peer)
        replies = 0
        try:
            while True:
                try:
                    header = await reader.readexactly(_MBAP.size)
                    transaction, protocol, length, unit = _MBAP.unpack(header)
                    if length < 2 or length > 254:
                        raise _DropConnection(f"MBAP length {length}")
                    pdu = await reader.readexactly(length - 1)
                except (asyncio.IncompleteReadError, ConnectionError, _DropConnection):
                    return
                if protocol != 0:
                    continue  # not Modbus: discard the frame, as the spec asks
                reply = self._respond(unit, pdu)
                if reply is None:
                    continue
                delay = self.latency + self.faults.reply_delay
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(_MBAP.pack(transaction, 0, len(reply) + 1, unit) + reply)
                try:
                    await writer.drain()
                except ConnectionError:
                    return
                replies += 1
                self.stats.replies += 1
                if self.faults.drop_after is not None and replies >= self.faults.drop_after:
                    self.stats.dropped_connections += 1
                    return
        except asyncio.CancelledError:
            # Our own close() cancelled this handler: end it normally, since asyncio's stream callback
            # reports a cancelled connection task as an unhandled error on Python 3.11.
            if not self._closing:
                raise
        finally:
            self._connections.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            log.debug("modbus_connection_closed", peer=peer, replies=replies)

    def _respond(self, unit: int, pdu: bytes) -> bytes | None:
        """The response PDU for one request, or None to stay silent."""
        return respond(self.devices, unit, pdu, faults=self.faults, unknown_unit=self.unknown_unit, stats=self.stats)


def respond(
    devices: Mapping[int, ModbusDevice],
    unit: int,
    pdu: bytes,
    *,
    faults: Faults,
    unknown_unit: UnknownUnitPolicy,
    stats: ServerStats,
) -> bytes | None:
    """The response PDU of ``unit`` to one request PDU, or None to stay silent; shared by every transport."""
    stats.requests += 1
    stats.requests_by_unit[unit] += 1
    device = devices.get(unit)
    if faults.silent_all or unit in faults.silent_units or (device is None and unknown_unit == "silent"):
        stats.unanswered += 1
        return None
    function = pdu[0]
    if device is None:
        stats.exceptions += 1
        return bytes((function | 0x80, GATEWAY_TARGET_FAILED))
    try:
        if faults.exception02 and function in _READ_FUNCTIONS:
            raise IllegalDataAddress("exception02 fault")
        handler = _HANDLERS.get(function)
        if handler is None:
            raise IllegalFunction(f"function code {function}")
        return bytes((function,)) + handler(device, pdu[1:])
    except ModbusExceptionResponse as exc:
        stats.exceptions += 1
        return bytes((function | 0x80, exc.code))
    except Exception:
        # A model bug must not kill the connection: answer "device failure" and keep the traceback.
        log.exception("modbus_device_error", unit=unit, function=function)
        stats.exceptions += 1
        return bytes((function | 0x80, ServerDeviceFailure.code))


# ---------------------------------------------------------------------------------------- function codes


def _address_count(body: bytes, limit: int) -> tuple[int, int]:
    if len(body) != 4:
        raise IllegalDataValue("expected address and count")
    address, count = struct.unpack(">HH", body)
    if not 1 <= count <= limit:
        raise IllegalDataValue(f"count {count} outside 1..{limit}")
    if address + count > ADDRESS_SPACE:
        raise IllegalDataAddress("range runs past address 65535")
    return address, count


def _pack_bits(bits: Sequence[bool]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for index, bit in enumerate(bits):
        if bit:
            packed[index // 8] |= 1 << (index % 8)
    return bytes(packed)


def _read_bits(table: BitTable) -> Callable[[ModbusDevice, bytes], bytes]:
    def handle(device: ModbusDevice, body: bytes) -> bytes:
        address, count = _address_count(body, MAX_READ_BITS)
        bits = device.read_bits(table, address, count)
        packed = _pack_bits(bits)
        return bytes((len(packed),)) + packed

    return handle


def _read_registers(table: RegisterTable) -> Callable[[ModbusDevice, bytes], bytes]:
    def handle(device: ModbusDevice, body: bytes) -> bytes:
        address, count = _address_count(body, MAX_READ_REGISTERS)
        values = device.read_registers(table, address, count)
        return struct.pack(f">B{count}H", 2 * count, *values)

    return handle


def _write_single_coil(device: ModbusDevice, body: bytes) -> bytes:
    if len(body) != 4:
        raise IllegalDataValue("expected address and value")
    address, value = struct.unpack(">HH", body)
    if value not in (_COIL_ON, _COIL_OFF):
        raise IllegalDataValue("a coil is written with 0xFF00 or 0x0000")
    device.write_bits(address, [value == _COIL_ON])
    return body


def _write_single_register(device: ModbusDevice, body: bytes) -> bytes:
    if len(body) != 4:
        raise IllegalDataValue("expected address and value")
    address, value = struct.unpack(">HH", body)
    device.write_registers(address, [value])
    return body


def _write_multiple_coils(device: ModbusDevice, body: bytes) -> bytes:
    address, count = _address_count(body[:4], MAX_WRITE_BITS)
    if len(body) < 5 or body[4] != (count + 7) // 8 or len(body) != 5 + body[4]:
        raise IllegalDataValue("byte count does not match the coil count")
    data = body[5:]
    device.write_bits(address, [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)])
    return body[:4]


def _write_multiple_registers(device: ModbusDevice, body: bytes) -> bytes:
    address, count = _address_count(body[:4], MAX_WRITE_REGISTERS)
    if len(body) < 5 or body[4] != 2 * count or len(body) != 5 + body[4]:
        raise IllegalDataValue("byte count does not match the register count")
    device.write_registers(address, list(struct.unpack(f">{count}H", body[5:])))
    return body[:4]


_HANDLERS: dict[int, Callable[[ModbusDevice, bytes], bytes]] = {
    0x01: _read_bits("coil"),
    0x02: _read_bits("discrete"),
    0x03: _read_registers("holding"),
    0x04: _read_registers("input"),
    0x05: _write_single_coil,
    0x06: _write_single_register,
    0x0F: _write_multiple_coils,
    0x10: _write_multiple_registers,
}
_READ_FUNCTIONS = frozenset({0x01, 0x02, 0x03, 0x04})
