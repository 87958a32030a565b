"""Modbus ASCII on a serial line: ``driver: modbus-ascii`` (older chamber controllers, PLCs on RS-485).

Sample (rig file)::

    - name: chamber2
      driver: modbus-ascii
      port: /dev/serial/by-id/usb-FTDI_USB-RS485-if00-port0
      baudrate: 9600
      bytesize: 7                # Modbus ASCII's default framing is 7E1
      parity: E
      unit: 1
      points:
        - {name: temp_pv, address: 100, type: int16, scale: 0.1}

A frame is ``:``, the unit, the PDU and an LRC (two's complement of the sum of those bytes), each byte as two
upper-case hex characters, then CR LF (Modbus over Serial Line, section 2.5.2). Every rule of the RTU bus is
kept (:class:`~edge_daq.drivers.modbus.rtu.RtuLink`: one request at a time on a port, stale input flushed
before each request, only a reply of the request's unit, function and byte count accepted, a timed-out unit
left alone for twice its timeout, the line quiet after a timeout), and the framing is the only difference:
an instrument on a port with ``modbus-rtu`` instruments is an error that ``edge-daq check`` reports.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from edge_daq.drivers.base import DriverPlugin
from edge_daq.drivers.channel import SerialChannel
from edge_daq.drivers.modbus.config import ModbusAsciiConfig
from edge_daq.drivers.modbus.rtu import ModbusRtuInstrument, RtuLink

START = 0x3A  # ':'
END = b"\r\n"
MAX_FRAME_CHARACTERS = 1 + 2 * 256 + 2
"""The longest ASCII frame: a 253-byte PDU, the unit and the LRC as hex, between ':' and CR LF."""


def lrc(data: bytes | bytearray) -> int:
    """The Modbus ASCII LRC: the two's complement of the 8-bit sum of the unit and PDU bytes."""
    return -sum(data) & 0xFF


def ascii_frame(unit: int, pdu: bytes) -> bytes:
    """``:`` + hex(unit, PDU, LRC) + CR LF."""
    body = bytes((unit,)) + pdu
    return b":" + (body + bytes((lrc(body),))).hex().upper().encode("ascii") + END


class AsciiLink(RtuLink):
    """One Modbus ASCII line (a serial port) shared by every slave on it."""

    check_name = "LRC"

    def encode(self, unit: int, pdu: bytes) -> bytes:
        return ascii_frame(unit, pdu)

    def reply_characters(self, reply_length: int) -> int:
        # RTU bytes (unit, PDU, 2 CRC) become ':' + 2 * (unit, PDU, 1 LRC) + CR LF.
        return 1 + 2 * (reply_length - 1) + 2

    def _scan(self, unit: int, function: int, length: int, byte_count: bool = True) -> tuple[bytes | None, bool]:
        """Find our reply among the frames in the buffer: (its PDU or None, whether ours failed its LRC);
        ``byte_count``: the reply's third byte is its byte count (a read's; a write's echo has none)."""
        buffer = self.channel.buffer
        lrc_bad = False
        start = buffer.find(b":")
        while start >= 0:
            end = buffer.find(END, start + 1, start + MAX_FRAME_CHARACTERS)
            if end < 0:
                if len(buffer) - start >= MAX_FRAME_CHARACTERS:  # no CR LF where it must be: not a frame
                    start = buffer.find(b":", start + 1)
                    continue
                break  # ours, most likely, still arriving
            following = buffer.find(b":", start + 1, end)
            if following >= 0:  # a ':' inside: a truncated frame before another one
                start = following
                continue
            try:
                body = binascii.unhexlify(bytes(buffer[start + 1 : end]))
            except (binascii.Error, ValueError):
                body = b""
            if self._ours(body, unit, function, length, byte_count):
                if lrc(body[:-1]) == body[-1]:
                    self.stats.stale_bytes += start
                    del buffer[: end + len(END)]
                    return body[1:-1], False
                lrc_bad = True
            start = buffer.find(b":", end)
        return None, lrc_bad

    @staticmethod
    def _ours(body: bytes, unit: int, function: int, length: int, byte_count: bool = True) -> bool:
        """The request's unit and function (or its exception), and the byte count of the count asked."""
        if len(body) < 4 or body[0] != unit:
            return False
        if body[1] == function | 0x80:
            return len(body) == 4
        if body[1] != function:
            return False
        size = length - 1  # RTU length less the CRC's two bytes, plus the LRC's one
        return len(body) == size and (not byte_count or length <= 5 or body[2] == length - 5)


class ModbusAsciiPlugin(DriverPlugin[ModbusAsciiConfig, RtuLink]):
    def link_key(self, config: ModbusAsciiConfig) -> str:
        return config.port

    def open_link(self, configs: Sequence[ModbusAsciiConfig]) -> AsciiLink:
        first = configs[0]  # `edge-daq check` makes every instrument on a port agree on its settings
        channel = SerialChannel.for_port(first)
        return AsciiLink(channel, baudrate=first.baudrate, bits_per_character=channel.bits_per_character)

    def make_instrument(self, config: ModbusAsciiConfig) -> ModbusRtuInstrument[ModbusAsciiConfig]:
        return ModbusRtuInstrument(config)


PLUGIN = ModbusAsciiPlugin()
