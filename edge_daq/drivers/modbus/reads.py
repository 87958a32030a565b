"""What every Modbus transport shares: the compiled read plan of an instrument and the poll that runs it.

The transports (``tcp.py`` with MBAP framing, ``rtu.py`` with RTU framing) differ only in how one read
reaches the device, which is their link's :meth:`ModbusLink.read`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_daq.drivers.base import Instrument, Link, PollResult
from edge_daq.drivers.modbus.codec import BitBlockDecoder, RegisterBlockDecoder
from edge_daq.drivers.modbus.config import ByteOrder, ModbusInstrumentConfig
from edge_daq.drivers.modbus.planner import ReadRequest, is_bit_table, place_points, plan_reads
from edge_daq.errors import DriverConnectionError, DriverError, DriverTimeoutError
from edge_daq.record import FieldValue

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusLink(Link):
    @abstractmethod
    async def read(self, request: ReadRequest, *, unit: int, response_timeout: float) -> bytes:
        """Execute one planned read and return the reply's data: the registers as they came off the wire (big
        endian, ``2 * count`` bytes) or the packed bits (whole bytes); else raise a DriverError."""

    @abstractmethod
    async def exchange(self, pdu: bytes, *, unit: int, reply_length: int, response_timeout: float) -> bytes:
        """Send one request PDU (a write) and return the reply PDU, function code first, an exception reply
        included; ``reply_length`` is the whole normal RTU reply frame (framings with a length ignore it)."""


@dataclass(frozen=True, slots=True)
class CompiledRead:
    """A planned read with its decoder, built once per instrument."""

    request: ReadRequest
    decoder: RegisterBlockDecoder | BitBlockDecoder
    point_names: tuple[str, ...]

    @classmethod
    def compile(cls, request: ReadRequest, *, byte_order: ByteOrder) -> CompiledRead:
        members = [(placed.address, placed.point) for placed in request.points]
        decoder: RegisterBlockDecoder | BitBlockDecoder
        if is_bit_table(request.table):
            decoder = BitBlockDecoder.compile(members, start=request.address)
        else:
            decoder = RegisterBlockDecoder.compile(members, start=request.address, byte_order=byte_order)
        return cls(request, decoder, tuple(request.point_names))


ConfigT = TypeVar("ConfigT", bound=ModbusInstrumentConfig)
LinkT = TypeVar("LinkT", bound=ModbusLink)


class ModbusInstrument(Instrument[ConfigT, LinkT], Generic[ConfigT, LinkT]):
    """Reads one unit id's points with the fewest requests, planned and compiled once."""

    def __init__(self, config: ConfigT) -> None:
        super().__init__(config)
        placed = place_points(config.points, address_base=config.address_base)
        self.reads = [
            CompiledRead.compile(request, byte_order=config.byte_order)
            for request in plan_reads(placed, max_hole=config.max_hole)
        ]

    @property
    def requests(self) -> list[ReadRequest]:
        return [read.request for read in self.reads]

    async def poll(self, link: LinkT) -> PollResult:
        """Execute the plan's reads one after another.

        A Modbus exception fails only that read's points and the others go on. A timeout or a lost
        connection stops the poll, since every further read would wait as long, and fails the remaining
        points. When no read succeeded the first error is raised so that the scheduler sees the instrument
        (or the link) as down. Points that decode to NaN or infinity are listed in ``failed`` without error.
        """
        fields: dict[str, FieldValue] = {}
        result = PollResult(fields)
        succeeded = 0
        unit, timeout = self.config.unit, self.config.timeout
        for index, read in enumerate(self.reads):
            try:
                data = await link.read(read.request, unit=unit, response_timeout=timeout)
            except (DriverTimeoutError, DriverConnectionError) as exc:
                result.errors.append(exc)
                for remaining in self.reads[index:]:
                    result.failed.extend(remaining.point_names)
                break
            except DriverError as exc:
                result.errors.append(exc)
                result.failed.extend(read.point_names)
                continue
            read.decoder.decode_into(data, fields, result.failed)
            succeeded += 1
        if not succeeded and result.errors:
            raise result.errors[0]
        return result
