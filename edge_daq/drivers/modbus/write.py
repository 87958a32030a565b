"""Writes to a Modbus point (FC05, FC06, FC15, FC16), encoded exactly as the point is read, and its read-back.

A point is written with the type, byte order, scale and offset it is read with: a ``float32`` ``CDAB``
set point goes out as the two registers a read of it decodes back to the same value. The function code
follows the point: a coil is FC05 (FC15 with ``write.multiple``), one register FC06, several registers
FC16 (and one register with ``write.multiple``). A ``bool`` that is one ``bit`` of a register is a
read-modify-write of that register (FC03, then FC06/FC16): the other bits are written back as read.

The transports' :meth:`ModbusLink.transact` send one request PDU and return the reply PDU; exception replies
(illegal address, illegal value, device busy...) become :class:`DeviceError` naming the point.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from edge_daq.drivers.modbus.codec import _STRUCT_CODES, INT64_MAX, _layout, needs_byte_swap, swap_bytes
from edge_daq.drivers.modbus.config import RAW_RANGES, ByteOrder, ModbusInstrumentConfig, ModbusPoint
from edge_daq.drivers.modbus.planner import place_points, plan_reads
from edge_daq.drivers.modbus.reads import EXCEPTION_NAMES, CompiledRead, ModbusLink
from edge_daq.errors import DeviceError, DriverError, DriverProtocolError
from edge_daq.record import FieldValue

FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_COILS, FC_WRITE_REGISTERS = 5, 6, 15, 16
WRITE_REPLY_LENGTH = 8
"""An RTU reply to FC05/06/15/16: unit, function, address, value or count, CRC."""


class WriteValueError(ValueError):
    """The value cannot be represented by the point's type (out of its range, not a number)."""


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write on the wire: its request PDU and the reply PDU a device echoes to it."""

    function: int
    address: int
    pdu: bytes
    expected_reply: bytes

    @property
    def describe(self) -> str:
        return f"FC{self.function:02d} at {self.address}"


def point_address(point: ModbusPoint, config: ModbusInstrumentConfig) -> int:
    return point.address - config.address_base


def encode_registers(point: ModbusPoint, value: float, *, byte_order: ByteOrder) -> bytes:
    """The register bytes (big endian on the wire) that a read of ``point`` decodes to ``value``."""
    code = _STRUCT_CODES[point.type]
    scale = 1.0 if point.scale is None else point.scale
    raw: float = (value - (point.offset or 0.0)) / scale
    if point.type in ("float32", "float64"):
        packed_value: float | int = raw
    else:
        packed_value = round(raw)
    low, high = RAW_RANGES[point.type]
    if not math.isfinite(raw) or not low <= packed_value <= high:
        raise WriteValueError(f"{value:g} does not fit {point.type} (raw {raw:g})")
    if point.type == "uint64" and packed_value > INT64_MAX and point.scale is None and point.offset is None:
        raise WriteValueError(f"{value:g} cannot be read back as an integer field")
    swapped, endian = _layout(point.type, point.byte_order or byte_order)
    packed = struct.pack(endian + code, packed_value)
    return swap_bytes(packed) if swapped else packed


def coil_request(address: int, values: list[bool], *, multiple: bool) -> WriteRequest:
    if len(values) == 1 and not multiple:
        word = 0xFF00 if values[0] else 0x0000
        pdu = struct.pack(">BHH", FC_WRITE_COIL, address, word)
        return WriteRequest(FC_WRITE_COIL, address, pdu, pdu)
    packed = bytearray((len(values) + 7) // 8)
    for index, bit in enumerate(values):
        if bit:
            packed[index >> 3] |= 1 << (index & 7)
    pdu = struct.pack(">BHHB", FC_WRITE_COILS, address, len(values), len(packed)) + bytes(packed)
    return WriteRequest(FC_WRITE_COILS, address, pdu, struct.pack(">BHH", FC_WRITE_COILS, address, len(values)))


def register_request(address: int, data: bytes, *, multiple: bool) -> WriteRequest:
    count = len(data) // 2
    if count == 1 and not multiple:
        pdu = bytes((FC_WRITE_REGISTER,)) + struct.pack(">H", address) + data
        return WriteRequest(FC_WRITE_REGISTER, address, pdu, pdu)
    pdu = struct.pack(">BHHB", FC_WRITE_REGISTERS, address, count, len(data)) + data
    return WriteRequest(FC_WRITE_REGISTERS, address, pdu, struct.pack(">BHH", FC_WRITE_REGISTERS, address, count))


def _read_plan(point: ModbusPoint, config: ModbusInstrumentConfig) -> CompiledRead:
    (request,) = plan_reads(place_points([point], address_base=config.address_base), max_hole=0)
    return CompiledRead.compile(request, byte_order=config.byte_order)


async def read_point(link: ModbusLink, config: ModbusInstrumentConfig, point: ModbusPoint) -> FieldValue:
    """Read one point now (one request), decoded as a poll decodes it."""
    read = _read_plan(point, config)
    data = await link.read(read.request, unit=config.unit, response_timeout=config.timeout)
    fields: dict[str, FieldValue] = {}
    failed: list[str] = []
    read.decoder.decode_into(data, fields, failed)
    if point.name not in fields:
        raise DriverProtocolError(f"point {point.name!r}: the read-back value cannot be stored (NaN or infinity)")
    return fields[point.name]


async def write_point(link: ModbusLink, config: ModbusInstrumentConfig, point: ModbusPoint, value: float) -> str:
    """Write ``value`` to ``point`` (one request; two for a bit of a register); return what was sent."""
    address = point_address(point, config)
    multiple = point.write is not None and point.write.multiple
    if point.table == "coil":
        request = coil_request(address, [bool(value)], multiple=multiple)
    elif point.type == "bool" and point.bit is not None:
        read = _read_plan(point, config)
        current = await link.read(read.request, unit=config.unit, response_timeout=config.timeout)
        swapped = needs_byte_swap(point, config.byte_order)
        word = struct.unpack(">H", swap_bytes(current) if swapped else current)[0]
        mask = 1 << point.bit
        word = word | mask if value else word & ~mask
        data = struct.pack(">H", word)
        request = register_request(address, swap_bytes(data) if swapped else data, multiple=multiple)
    elif point.type == "bool":
        request = register_request(address, struct.pack(">H", 1 if value else 0), multiple=multiple)
    else:
        data = encode_registers(point, value, byte_order=config.byte_order)
        request = register_request(address, data, multiple=multiple)
    await transact_write(link, config, point, request)
    return f"{request.describe} = {request.pdu[5 if request.function in (15, 16) else 3 :].hex()}"


async def transact_write(
    link: ModbusLink, config: ModbusInstrumentConfig, point: ModbusPoint, request: WriteRequest
) -> None:
    where = f"{link.describe} unit {config.unit} point {point.name!r}"
    try:
        reply = await link.exchange(
            request.pdu, unit=config.unit, reply_length=WRITE_REPLY_LENGTH, response_timeout=config.timeout
        )
    except DriverError as error:
        raise type(error)(f"point {point.name!r}: {error}") from error
    if len(reply) >= 2 and reply[0] == request.function | 0x80:
        code = reply[1]
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise DeviceError(f"{where}: exception {code:02d} ({name}) for {request.describe}")
    if reply != request.expected_reply:
        raise DriverProtocolError(f"{where}: the reply {reply.hex()} to {request.describe} does not echo it")
