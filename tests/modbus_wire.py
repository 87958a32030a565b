"""Registers as a device would send them, built from the spec independently of the codec under test."""

from __future__ import annotations

import struct

from edge_daq.drivers.modbus.config import ByteOrder

ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

# Telegraf's layouts, spelled out letter by letter: which big-endian byte goes where on the wire.
WIRE_LAYOUT: dict[int, dict[ByteOrder, str]] = {
    2: {"ABCD": "AB", "CDAB": "AB", "BADC": "BA", "DCBA": "BA"},
    4: {"ABCD": "ABCD", "CDAB": "CDAB", "BADC": "BADC", "DCBA": "DCBA"},
    8: {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"},
}
FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}


def encode(point_type: str, value: float, order: ByteOrder) -> list[int]:
    """The registers a device using ``order`` would send for ``value``."""
    big_endian = struct.pack(FORMATS[point_type], value)
    layout = WIRE_LAYOUT[len(big_endian)][order]
    wire = bytes(big_endian[ord(letter) - ord("A")] for letter in layout)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def string_registers(text: bytes, *, swap: bool = False) -> list[int]:
    """Two characters per register, first in the high byte (or the low byte when ``swap``)."""
    padded = text + b"\x00" * (len(text) % 2)
    pairs = [padded[i : i + 2] for i in range(0, len(padded), 2)]
    return [int.from_bytes(pair[::-1] if swap else pair, "big") for pair in pairs]
