"""Modbus RTU for the simulated devices: on a pseudo-terminal (a simulated RS-485 line) and on raw TCP
(a simulated serial device server, for ``modbus-rtu-over-tcp``).

The pseudo-terminal is a pair made with :func:`os.openpty`; the server serves the master side and puts a
symlink at ``link`` to the slave side, which a client opens like any ``/dev/ttyUSB0``. The server keeps its own
descriptor on the slave open so that a client may close and reopen the port without the master seeing a hang
up; :meth:`ModbusRtuServer.close` closes the master, which is what a client sees when a USB adapter is pulled.

Line timing: a pseudo-terminal moves bytes instantly whatever the baud rate, so the server reproduces the
line: a reply is written only when the request, the slave's 3.5-character silence that ends it and the reply
itself would have gone over the wire at ``baudrate`` (``bits_per_character`` = start + 8 data + parity +
stop bits, 11 for 8E1), plus ``latency``. One request is served at a time, as on a half-duplex bus, so a
client measures the real line limit.

Framing: a request's length follows from its function code (8 bytes for FC01-06, 9 + byte count for FC15/16);
other function codes end at the line's silence. A frame with a wrong CRC is dropped without a reply, as a
real slave does, and counted in ``stats.bad_frames``. Units the server does not host stay silent (there is
no gateway on a bus to answer 0x0B); unit 0 is a broadcast: writes are applied and nobody answers.

``framing="ascii"`` serves Modbus ASCII instead (``:``, hex, LRC, CR LF; 7 data bits by default): a request
ends at its CR LF, a wrong LRC or a frame that is not hex is dropped without a reply, and the ``crc`` fault
corrupts the reply's LRC.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal

import structlog

from simulators.modbus_server import Faults, ModbusDevice, ServerStats, UnknownUnitPolicy, respond
from simulators.serial_endpoint import SerialEndpoint, wait_line_time

log = structlog.get_logger(__name__)

Parity = Literal["N", "E", "O"]
Framing = Literal["rtu", "ascii"]
BROADCAST = 0
MAX_ASCII_FRAME = 1 + 2 * 256 + 2


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """Modbus CRC-16 (reflected 0xA001, initial 0xFFFF); on the wire low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16(body))


def lrc(data: bytes | bytearray) -> int:
    """The Modbus ASCII LRC: two's complement of the 8-bit sum."""
    return -sum(data) & 0xFF


def ascii_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return b":" + (body + bytes((lrc(body),))).hex().upper().encode("ascii") + b"\r\n"


def request_length(buffer: bytes | bytearray) -> int | None:
    """The length of the request frame at the start of ``buffer``, None if unknown (yet)."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if 1 <= function <= 6:
        return 8
    if function in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return None


Receive = Callable[[float | None], Awaitable[bytes | None]]
"""Wait up to the timeout (None: forever) for bytes; None on timeout, b"" when the line is gone."""
Send = Callable[[bytes], Awaitable[None]]


class ModbusRtuServer(SerialEndpoint):
    """Serves one RTU bus (a set of unit ids) on a pseudo-terminal and/or a TCP port."""

    def __init__(
        self,
        devices: Mapping[int, ModbusDevice],
        *,
        link: str | Path | None = None,
        tcp: tuple[str, int] | None = None,
        baudrate: int = 19200,
        parity: Parity = "E",
        stopbits: int = 1,
        faults: Faults | None = None,
        latency: float = 0.0,
        unknown_unit: UnknownUnitPolicy = "silent",
        seed: int = 0,
        framing: Framing = "rtu",
        bytesize: int | None = None,
    ) -> None:
        if not devices:
            raise ValueError("a bus needs at least one unit")
        if baudrate <= 0 or latency < 0:
            raise ValueError("baudrate must be positive and latency not negative")
        super().__init__(link=link, tcp=tcp)
        self.devices: dict[int, ModbusDevice] = dict(devices)
        self.baudrate = baudrate
        self.parity: Parity = parity
        self.stopbits = stopbits
        self.faults = faults or Faults()
        self.latency = latency
        self.unknown_unit: UnknownUnitPolicy = unknown_unit
        self.stats = ServerStats()
        self._noise = random.Random(seed)
        self.framing: Framing = framing
        self.bytesize = bytesize if bytesize is not None else (7 if framing == "ascii" else 8)

    @property
    def units(self) -> list[int]:
        return sorted(self.devices)

    @property
    def bits_per_character(self) -> int:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def character_time(self) -> float:
        return self.bits_per_character / self.baudrate

    @property
    def silence(self) -> float:
        """The 3.5-character silence that ends a frame (1.75 ms above 19200 baud)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.character_time

    # -- life cycle

    async def start(self) -> None:
        await super().start()
        log.info("modbus_rtu_server_started", link=str(self.link), units=self.units, baudrate=self.baudrate)

    # -- transports

    async def _serve_pty(self) -> None:
        await self._serve(self._receive_pty, self._send_pty)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1

        async def receive(within: float | None) -> bytes | None:
            try:
                async with asyncio.timeout(within):
                    return await reader.read(4096)
            except TimeoutError:
                return None
            except ConnectionError:
                return b""

        async def send(data: bytes) -> None:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        with self._connection():
            await self._serve(receive, send)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    # -- the bus

    async def _serve(self, receive: Receive, send: Send) -> None:
        if self.framing == "ascii":
            await self._serve_ascii(receive, send)
            return
        buffer = bytearray()
        replies = 0
        while True:
            chunk = await receive(self.silence if buffer else None)
            if chunk == b"":
                return
            if chunk is None:
                # The line fell silent: whatever is buffered is one frame (function codes of unknown length).
                frame, buffer = bytes(buffer), bytearray()
            else:
                buffer += chunk
                length = request_length(buffer)
                if length is None or len(buffer) < length:
                    continue
                frame, buffer = bytes(buffer[:length]), buffer[length:]
            reply = await self._handle(frame)
            if reply is None:
                continue
            await send(reply)
            replies += 1
            self.stats.replies += 1
            if self.faults.drop_after is not None and replies >= self.faults.drop_after and self.link is None:
                self.stats.dropped_connections += 1
                return

    async def _serve_ascii(self, receive: Receive, send: Send) -> None:
        buffer = bytearray()
        while True:
            chunk = await receive(None)
            if chunk == b"":
                return
            assert chunk is not None
            buffer += chunk
            while (end := buffer.find(b"\r\n")) >= 0:
                line, buffer = bytes(buffer[:end]), buffer[end + 2 :]
                start = line.rfind(b":")  # a ':' restarts a frame, as on a real slave
                reply = await self._handle_ascii(line[start + 1 :]) if start >= 0 else None
                if reply is not None:
                    await send(reply)
                    self.stats.replies += 1
            if len(buffer) > MAX_ASCII_FRAME:
                buffer.clear()

    def _answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The reply PDU to one request, or None: a broadcast is applied to every device and never answered."""
        if unit == BROADCAST:
            for device in self.devices.values():
                respond({0: device}, 0, pdu, faults=Faults(), unknown_unit="silent", stats=ServerStats())
            return None
        return respond(self.devices, unit, pdu, faults=self.faults, unknown_unit=self.unknown_unit, stats=self.stats)

    def _noisy(self, reply: bytes) -> bytes:
        """``reply`` after three bytes of line noise when the faults ask for garbage."""
        if self.faults.garbage:
            return bytes(self._noise.randrange(256) for _ in range(3)) + reply
        return reply

    async def _handle_ascii(self, text: bytes) -> bytes | None:
        try:
            body = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            body = b""
        if len(body) < 3 or lrc(body[:-1]) != body[-1]:
            self.stats.bad_frames += 1
            return None
        unit, pdu = body[0], body[1:-1]
        answer = self._answer(unit, pdu)
        if answer is None:
            return None
        reply = ascii_frame(unit, answer)
        if self.faults.corrupts_crc(unit):
            wrong = (int(reply[-4:-2], 16) ^ 0x5A).to_bytes(1, "big").hex().upper().encode("ascii")
            reply = reply[:-4] + wrong + b"\r\n"
        reply = self._noisy(reply)
        wire = (len(text) + 3 + len(reply)) * self.character_time
        await wait_line_time(wire + self.latency + self.faults.reply_delay)
        return reply

    async def _handle(self, frame: bytes) -> bytes | None:
        if len(frame) < 4 or struct.unpack_from("<H", frame, len(frame) - 2)[0] != crc16(frame[:-2]):
            self.stats.bad_frames += 1
            return None
        unit, pdu = frame[0], frame[1:-2]
        answer = self._answer(unit, pdu)
        if answer is None:
            return None
        reply = rtu_frame(unit, answer)
        if self.faults.corrupts_crc(unit):
            reply = reply[:-1] + bytes((reply[-1] ^ 0x5A,))
        reply = self._noisy(reply)
        # The request, the silence that ends it and the reply, all at the line's pace.
        wire = (len(frame) + len(reply)) * self.character_time + self.silence
        await wait_line_time(wire + self.latency + self.faults.reply_delay)
        return reply
