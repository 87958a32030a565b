"""Modbus RTU drivers: ``modbus-rtu`` (a serial port, RS-485 multi-drop) and ``modbus-rtu-over-tcp`` (RTU frames
through a serial device server such as a Moxa NPort).

Sample (rig file)::

    - name: chamber
      profile: watlow-f4
      driver: modbus-rtu
      port: /dev/serial/by-id/usb-FTDI_USB-RS485-if00-port0
      baudrate: 19200
      parity: E
      unit: 1
    - name: vfd                 # same port: same bus, same scheduler, one request at a time
      profile: endurance-vfd
      driver: modbus-rtu
      port: /dev/serial/by-id/usb-FTDI_USB-RS485-if00-port0
      baudrate: 19200
      parity: E
      unit: 3

Every instrument with the same ``port`` (or ``host:port``) shares one :class:`RtuLink` and therefore one bus
scheduler, which polls strictly one request at a time. Decoding (codec) and read planning (planner) are the
Modbus TCP driver's.

Why our own RTU framing rather than pymodbus 3.16's serial client (read in its ``framer/rtu.py`` and
``transaction/transaction.py``): pymodbus hunts through its receive buffer for anything that looks like a
frame and checks only the device id, not the function code or the byte count, so a late reply of another
read of the same unit is accepted; it clears its own buffer but never the kernel's input queue; it keeps no
inter-frame silence; and it closes the port after consecutive silent requests, which on a multi-drop bus
punishes every neighbour of one dead slave (pymodbus#1654). The RTU protocol part is small. Here each
transaction:

1. waits out the inter-frame silence since the last bytes on the line (3.5 character times, at least
   1.75 ms above 19200 baud, as the Modbus serial line spec fixes);
2. flushes the receive buffer and the kernel's input queue (stale bytes, a previous slave's late reply);
3. sends the request and accepts only a frame with the request's unit id, its function code (or the
   exception bit of it), the expected byte count for the count asked and a good CRC. Anything else before
   it is dropped as stale. A frame whose header matches but whose CRC fails is a CRC error once the line
   has been quiet for the inter-frame silence. Nothing at all within the timeout is a timeout.

The response timeout is the instrument's ``timeout`` plus the time the request and the expected reply take
on the line at the configured baud rate (a 125-register read at 9600 baud is 0.27 s of wire time).

Late replies: RTU frames carry no transaction id. A late reply of one slave is told apart from the next
request's reply by its unit id (and function code and byte count), and flushed before the next request. The
one case no check can catch is the *same* unit answering a timed-out read while the same read is asked again;
so after a timeout the link asks that unit nothing more until twice the time it was given has passed (the
next poll of that unit is usually later anyway, and its neighbours are not held up), and keeps the whole line
quiet for :data:`QUIET_AFTER_TIMEOUT` so that a late reply does not collide with the next request. A slave
slower than twice its timeout remains indistinguishable: give it a longer ``timeout``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Generic, TypeVar

from edge_daq.drivers.base import DriverPlugin
from edge_daq.drivers.channel import ByteChannel, SerialChannel, TcpChannel
from edge_daq.drivers.modbus.config import ModbusAsciiConfig, ModbusRtuConfig, ModbusRtuOverTcpConfig
from edge_daq.drivers.modbus.planner import ReadRequest, is_bit_table
from edge_daq.drivers.modbus.reads import EXCEPTION_NAMES, ModbusInstrument, ModbusLink
from edge_daq.errors import (
    DeviceError,
    DriverProtocolError,
    DriverTimeoutError,
)
from edge_daq.loop import sleep_precisely
from edge_daq.stats import LinkStats

MIN_SILENCE_S = 0.00175
"""Above 19200 baud the Modbus serial line spec fixes the inter-frame silence at 1.75 ms."""
QUIET_AFTER_TIMEOUT = 0.05
"""After a timeout, the line must stay silent this long (seconds) before the next request."""
MAX_BUFFERED = 4096
"""Bytes the receive buffer holds: many RTU frames (256 bytes at most). More is a flood: the link reconnects."""
_BITS_UNKNOWN_LINE = 11  # 8E1 / 8N2: what a character costs when the line's framing is unknown


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """The Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC low byte then high byte."""
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16(body))


def inter_frame_silence(baudrate: int | None, bits_per_character: int = _BITS_UNKNOWN_LINE) -> float:
    """3.5 character times, fixed at 1.75 ms above 19200 baud (and when the baud rate is unknown)."""
    if baudrate is None or baudrate > 19200:
        return MIN_SILENCE_S
    return 3.5 * bits_per_character / baudrate


def expected_reply_length(request: ReadRequest) -> int:
    """Bytes of a normal reply to a read: unit, function, byte count, data, CRC."""
    data = (request.count + 7) // 8 if is_bit_table(request.table) else 2 * request.count
    return 3 + data + 2


class RtuLink(ModbusLink):
    """One RTU bus (a serial port, or a device server's socket) shared by every slave on it."""

    def __init__(self, channel: ByteChannel, *, baudrate: int | None, bits_per_character: int) -> None:
        self.channel = channel
        self.baudrate = baudrate
        self.character_time = bits_per_character / baudrate if baudrate else 0.0
        self.silence = inter_frame_silence(baudrate, bits_per_character)
        self._lock = asyncio.Lock()
        self._line_free_at = 0.0
        self._unit_free_at: dict[int, float] = {}
        channel.limit = MAX_BUFFERED
        self.stats = LinkStats(link=channel.describe)
        """``stale_bytes``: dropped before a request or ahead of a matching reply (late replies, noise);
        ``crc_errors``; ``garbled_frames``: floods that filled the receive buffer, each closing the link."""

    @property
    def describe(self) -> str:
        return self.channel.describe

    @property
    def is_open(self) -> bool:
        return self.channel.is_open

    async def open(self) -> None:
        await self.channel.open()
        self._line_free_at = 0.0
        self._unit_free_at.clear()

    async def close(self) -> None:
        await self.channel.close()

    check_name = "CRC"
    """The frame check, in errors: the ASCII framing's is an LRC."""

    def encode(self, unit: int, pdu: bytes) -> bytes:
        """A request on the wire."""
        return frame(unit, pdu)

    def reply_characters(self, reply_length: int) -> int:
        """Characters on the line of a reply of ``reply_length`` RTU bytes (unit, PDU, CRC)."""
        return reply_length

    async def read(self, request: ReadRequest, *, unit: int, response_timeout: float) -> bytes:
        """Execute one planned read and return the reply's data bytes (registers big endian, or packed bits)."""
        pdu = struct.pack(">BHH", request.function_code, request.address, request.count)
        reply = await self.transact(unit, pdu, expected_reply_length(request), response_timeout)
        return _data(reply, request, unit=unit, where=self.describe)

    async def exchange(self, pdu: bytes, *, unit: int, reply_length: int, response_timeout: float) -> bytes:
        # A write's reply echoes address and value where a read's has a byte count: none to check.
        return await self.transact(unit, pdu, reply_length, response_timeout, byte_count=False)

    async def transact(
        self, unit: int, pdu: bytes, reply_length: int, response_timeout: float, *, byte_count: bool = True
    ) -> bytes:
        """Send one request and return the reply's PDU (function code first, CRC stripped).

        ``reply_length`` is the whole normal reply frame in bytes; an exception reply (5 bytes) is also
        accepted; ``byte_count``: the reply's third byte is its byte count (a read's), checked. Raises
        DriverTimeoutError, DriverProtocolError (CRC error) or DriverConnectionError.
        """
        async with self._lock:
            channel = self.channel
            channel.check()
            if channel.overflowed:
                raise await self._resynchronise(unit)
            loop = asyncio.get_running_loop()
            request = self.encode(unit, pdu)
            quiet_until = max(
                self._line_free_at, channel.last_received + self.silence, self._unit_free_at.get(unit, 0.0)
            )
            if (wait := quiet_until - loop.time()) > 0:
                await sleep_precisely(wait)
            self.stats.stale_bytes += channel.discard_input()
            await channel.write(request)
            sent = loop.time()
            wire_time = (len(request) + self.reply_characters(reply_length)) * self.character_time
            try:
                reply = await self._receive(unit, pdu[0], reply_length, response_timeout + wire_time, byte_count)
            except DriverTimeoutError:
                # The slave may still answer: no collision with the next request, no late reply taken for
                # this unit's next one (see the module's docstring).
                self._line_free_at = loop.time() + QUIET_AFTER_TIMEOUT
                self._unit_free_at[unit] = sent + 2 * (response_timeout + wire_time)
                raise
            self._line_free_at = loop.time() + self.silence
            return reply

    async def _receive(self, unit: int, function: int, length: int, within: float, byte_count: bool) -> bytes:
        channel = self.channel
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        crc_failed = False
        while True:
            found, crc_bad = self._scan(unit, function, length, byte_count)
            if found is not None:
                return found
            crc_failed = crc_failed or crc_bad
            if channel.overflowed:
                raise await self._resynchronise(unit)
            remaining = deadline - loop.time()
            if crc_failed:
                # The slave's answer arrived damaged; unless more bytes follow, that is the answer.
                if not await channel.wait_data(min(remaining, max(self.silence, 0.005))):
                    self.stats.crc_errors += 1
                    raise DriverProtocolError(
                        f"{self.describe} unit {unit}: {self.check_name} error in the reply to FC{function:02d} "
                        "(noise, a wrong parity or two slaves with the same unit id)"
                    )
            elif not await channel.wait_data(remaining):
                garbage = len(channel.buffer)
                if garbage:
                    self.stats.stale_bytes += garbage
                    raise DriverTimeoutError(
                        f"{self.describe} unit {unit}: no valid reply within {within:g} s "
                        f"({garbage} unexpected bytes: wrong baud rate or parity?)"
                    )
                raise DriverTimeoutError(f"{self.describe} unit {unit}: no response within {within:g} s")

    async def _resynchronise(self, unit: int) -> DriverProtocolError:
        """A flood filled the receive buffer (a device server streaming noise): close, to start afresh."""
        self.stats.garbled_frames += 1
        self.stats.reconnects += 1
        self.stats.stale_bytes += len(self.channel.buffer)
        await self.channel.close()
        return DriverProtocolError(
            f"{self.describe} unit {unit}: over {MAX_BUFFERED} bytes without a valid reply "
            "(a flood of noise, or the wrong baud rate); reconnecting"
        )

    def _scan(self, unit: int, function: int, length: int, byte_count: bool = True) -> tuple[bytes | None, bool]:
        """Find our reply in the buffer: (its PDU or None, whether a matching header failed its CRC)."""
        buffer = self.channel.buffer
        crc_bad = False
        for start in range(len(buffer) - 1):
            if buffer[start] != unit:
                continue
            answered = buffer[start + 1]
            if answered == function:
                size = length
                if byte_count and length > 5 and start + 2 < len(buffer) and buffer[start + 2] != length - 5:
                    continue  # another read's byte count: not ours
            elif answered == function | 0x80:
                size = 5
            else:
                continue
            end = start + size
            if end > len(buffer):
                break  # ours, most likely, still arriving
            body = bytes(buffer[start : end - 2])
            if struct.unpack_from("<H", buffer, end - 2)[0] != crc16(body):
                crc_bad = True
                continue
            self.stats.stale_bytes += start
            del buffer[:end]
            return body[1:], False
        return None, crc_bad


def _data(reply: bytes, request: ReadRequest, *, unit: int, where: str) -> bytes:
    if reply[0] & 0x80:
        code = reply[1]
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        hint = " (check address_base and the register map)" if code == 2 else ""
        raise DeviceError(
            f"{where} unit {unit}: exception {code:02d} ({name}) "
            f"for FC{request.function_code:02d} at {request.address} count {request.count}{hint}"
        )
    return reply[2:]  # the scan checked the byte count


RtuConfigT = TypeVar("RtuConfigT", bound=ModbusRtuConfig | ModbusRtuOverTcpConfig | ModbusAsciiConfig)


class ModbusRtuInstrument(ModbusInstrument[RtuConfigT, RtuLink], Generic[RtuConfigT]):
    """A slave on an RTU line: the shared plan and poll (as the TCP driver: an exception fails only its read's
    points; a timeout, a CRC error on the last try or a lost port stops the poll)."""


class ModbusRtuPlugin(DriverPlugin[ModbusRtuConfig, RtuLink]):
    def link_key(self, config: ModbusRtuConfig) -> str:
        return config.port

    def open_link(self, configs: Sequence[ModbusRtuConfig]) -> RtuLink:
        first = configs[0]  # `edge-daq check` makes every instrument on a port agree on its settings
        channel = SerialChannel.for_port(first)
        return RtuLink(channel, baudrate=first.baudrate, bits_per_character=channel.bits_per_character)

    def make_instrument(self, config: ModbusRtuConfig) -> ModbusRtuInstrument[ModbusRtuConfig]:
        return ModbusRtuInstrument(config)


class ModbusRtuOverTcpPlugin(DriverPlugin[ModbusRtuOverTcpConfig, RtuLink]):
    def link_key(self, config: ModbusRtuOverTcpConfig) -> str:
        return f"rtu+tcp://{config.host}:{config.port}"

    def open_link(self, configs: Sequence[ModbusRtuOverTcpConfig]) -> RtuLink:
        first = configs[0]
        baudrate = next((config.baudrate for config in configs if config.baudrate), None)
        channel = TcpChannel(
            host=first.host, port=first.port, connect_timeout=max(config.timeout for config in configs),
            scheme="rtu+tcp",
        )  # fmt: skip
        return RtuLink(channel, baudrate=baudrate, bits_per_character=_BITS_UNKNOWN_LINE)

    def make_instrument(self, config: ModbusRtuOverTcpConfig) -> ModbusRtuInstrument[ModbusRtuOverTcpConfig]:
        return ModbusRtuInstrument(config)


PLUGIN = ModbusRtuPlugin()
OVER_TCP_PLUGIN = ModbusRtuOverTcpPlugin()
