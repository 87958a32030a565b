"""The Modbus codec: every type and byte order, against registers built independently from the spec."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from edge_daq.drivers.modbus.codec import (
    BitBlockDecoder,
    RegisterBlockDecoder,
    swap_bytes,
    unpack_registers,
)
from edge_daq.drivers.modbus.config import ByteOrder, ModbusPoint
from edge_daq.record import FieldValue
from tests.modbus_wire import ORDERS, encode, string_registers


def point(**keys: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": "p", "address": 0, **keys})


def wire(registers: list[int]) -> bytes:
    """The registers as a reply carries them: big endian, two bytes each."""
    return struct.pack(f">{len(registers)}H", *registers)


def decode(
    p: ModbusPoint, registers: list[int], order: ByteOrder = "ABCD", at: int = 0
) -> tuple[dict[str, FieldValue], list[str]]:
    """Decode ``p`` placed ``at`` registers into a read of ``registers``."""
    decoder = RegisterBlockDecoder.compile([(at, p)], start=0, byte_order=order)
    fields: dict[str, FieldValue] = {}
    failed: list[str] = []
    decoder.decode_into(wire(registers), fields, failed)
    return fields, failed


def test_known_vectors_float32() -> None:
    # 1.5 is 0x3FC00000 as a big-endian float32.
    assert encode("float32", 1.5, "ABCD") == [0x3FC0, 0x0000]
    assert encode("float32", 1.5, "CDAB") == [0x0000, 0x3FC0]
    assert encode("float32", 1.5, "BADC") == [0xC03F, 0x0000]
    assert encode("float32", 1.5, "DCBA") == [0x0000, 0xC03F]
    for order in ORDERS:
        assert decode(point(type="float32"), encode("float32", 1.5, order), order) == ({"p": 1.5}, [])


def test_known_vectors_int64() -> None:
    value = 0x0102030405060708
    assert encode("int64", value, "ABCD") == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode("int64", value, "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode("int64", value, "BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert encode("int64", value, "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]


CASES: list[tuple[str, float]] = [
    ("int16", -1),
    ("int16", -32768),
    ("int16", 32767),
    ("uint16", 0xBEEF),
    ("int32", -123456789),
    ("int32", -(2**31)),
    ("uint32", 2**32 - 1),
    ("uint32", 0x12345678),
    ("int64", -(2**63)),
    ("int64", 2**63 - 1),
    ("int64", -2),
    ("uint64", 2**63 - 1),
    ("uint64", 0x0102030405060708),
    ("float32", -123.25),
    ("float32", 1.5),
    ("float64", math.pi),
    ("float64", -1e300),
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("point_type", "value"), CASES)
def test_every_type_and_order(point_type: str, value: float, order: ByteOrder) -> None:
    registers = encode(point_type, value, order)
    fields, failed = decode(point(type=point_type), registers, order)
    assert failed == []
    assert fields == {"p": value}
    expected_type = float if point_type.startswith("float") else int
    assert type(fields["p"]) is expected_type


@pytest.mark.parametrize("order", ORDERS)
def test_point_byte_order_overrides_instrument(order: ByteOrder) -> None:
    registers = encode("int32", -7, order)
    fields, _ = decode(point(type="int32", byte_order=order), registers, order="ABCD" if order != "ABCD" else "DCBA")
    assert fields == {"p": -7}


def test_offset_inside_the_read() -> None:
    registers = [0xDEAD, 0xBEEF, *encode("float32", -123.25, "CDAB"), 0xFFFF]
    assert decode(point(type="float32"), registers, "CDAB", at=2) == ({"p": -123.25}, [])


def test_scale_and_offset_give_floats() -> None:
    fields, _ = decode(point(type="int16", scale=0.1), encode("int16", -215, "ABCD"))
    assert fields["p"] == pytest.approx(-21.5)
    assert type(fields["p"]) is float
    fields, _ = decode(point(type="uint16", offset=-40), [100])
    assert fields == {"p": 60.0}
    assert type(fields["p"]) is float
    fields, _ = decode(point(type="uint32", scale=2, offset=1), encode("uint32", 10, "DCBA"), "DCBA")
    assert fields == {"p": 21.0}
    fields, _ = decode(point(type="float32", scale=10, offset=0.5), encode("float32", 1.5, "ABCD"))
    assert fields == {"p": 15.5}


@pytest.mark.parametrize(
    "bits",
    [
        0x7FC0_0000,  # NaN
        0xFFC0_0001,  # negative NaN with payload
        0x7F80_0000,  # +inf
        0xFF80_0000,  # -inf
    ],
)
def test_non_finite_float32_is_a_failed_point(bits: int) -> None:
    registers = [bits >> 16, bits & 0xFFFF]
    assert decode(point(type="float32"), registers) == ({}, ["p"])
    assert decode(point(type="float32", scale=2.0), registers) == ({}, ["p"])


def test_non_finite_float64_is_a_failed_point() -> None:
    assert decode(point(type="float64"), encode("float64", math.inf, "DCBA"), "DCBA") == ({}, ["p"])


def test_overflow_to_infinity_after_scaling_is_a_failed_point() -> None:
    assert decode(point(type="float64", scale=1e300), encode("float64", 1e300, "ABCD")) == ({}, ["p"])


@pytest.mark.parametrize(("bit", "expected"), [(0, True), (1, False), (3, True), (8, False), (15, True)])
def test_bit_of_register(bit: int, expected: bool) -> None:
    register = 0b1000_0000_0000_1001
    assert decode(point(type="bool", bit=bit), [register]) == ({"p": expected}, [])
    # A byte-swapping device sends the same 16-bit value with its bytes exchanged.
    swapped = ((register & 0xFF) << 8) | (register >> 8)
    assert decode(point(type="bool", bit=bit), [swapped], "BADC") == ({"p": expected}, [])
    assert decode(point(type="bool", bit=bit), [swapped], "DCBA") == ({"p": expected}, [])
    assert decode(point(type="bool", bit=bit), [register], "CDAB") == ({"p": expected}, [])


def test_bool_register_without_bit_is_non_zero() -> None:
    assert decode(point(type="bool"), [0]) == ({"p": False}, [])
    assert decode(point(type="bool"), [0x8000]) == ({"p": True}, [])


@pytest.mark.parametrize(
    ("raw", "length", "expected"),
    [
        (b"F4-SIM\x00\x00\x00\x00", 10, "F4-SIM"),
        (b"F4-SIM    ", 10, "F4-SIM"),
        (b"F4-SIM \x00 \x00", 10, "F4-SIM"),
        (b"F4-SIM", 6, "F4-SIM"),
        (b"WATLOW", 5, "WATLO"),  # odd length: the low byte of the last register is not part of it
        (b"  lead", 6, "  lead"),  # leading spaces are kept
        (b"\x00\x00\x00\x00", 4, ""),
    ],
)
def test_string(raw: bytes, length: int, expected: str) -> None:
    p = point(type="string", length=length)
    assert decode(p, string_registers(raw)) == ({"p": expected}, [])
    assert decode(p, string_registers(raw), "CDAB") == ({"p": expected}, [])
    assert decode(p, string_registers(raw, swap=True), "BADC") == ({"p": expected}, [])
    assert decode(p, string_registers(raw, swap=True), "DCBA") == ({"p": expected}, [])


def test_many_points_in_one_read() -> None:
    points = [
        (10, point(name="t", type="int16", scale=0.1)),
        (11, point(name="f", type="float32", byte_order="CDAB")),
        (13, point(name="door", type="bool", bit=3)),
        (14, point(name="model", type="string", length=6)),
        (20, point(name="hours", type="uint64")),
    ]
    registers = [0] * 14
    registers[0] = 250
    registers[1:3] = encode("float32", -123.25, "CDAB")
    registers[3] = 0b1000
    registers[4:7] = string_registers(b"F4-SIM")
    registers[10:14] = encode("uint64", 2**63 + 5, "ABCD")
    decoder = RegisterBlockDecoder.compile(points, start=10, byte_order="ABCD")
    fields: dict[str, FieldValue] = {}
    failed: list[str] = []
    decoder.decode_into(wire(registers), fields, failed)
    assert fields == {"t": 25.0, "f": -123.25, "door": True, "model": "F4-SIM"}
    # Above int64 a uint64 cannot be an integer field of line protocol: a failed point, not a wrong value.
    assert failed == ["hours"]
    assert decoder.needs_swap  # the CDAB float reads the byte-swapped packing


def test_needs_swap_only_when_an_order_requires_it() -> None:
    decoder = RegisterBlockDecoder.compile(
        [(0, point(type="int32")), (2, point(name="q", type="float32", byte_order="DCBA"))],
        start=0,
        byte_order="ABCD",
    )
    assert not decoder.needs_swap


def test_bits() -> None:
    decoder = BitBlockDecoder.compile(
        [(100, point(name="a", table="coil", type="bool")), (107, point(name="b", table="coil", type="bool"))],
        start=100,
    )
    fields: dict[str, FieldValue] = {}
    decoder.decode_into(bytes([0b1000_0001]), fields, [])
    assert fields == {"a": True, "b": True}
    assert all(type(value) is bool for value in fields.values())


def test_bits_across_bytes() -> None:
    names = {101: "a", 108: "b", 115: "c", 116: "d"}
    decoder = BitBlockDecoder.compile(
        [(address, point(name=name, table="discrete", type="bool")) for address, name in names.items()], start=100
    )
    fields: dict[str, FieldValue] = {}
    # Bit k of the reply is bit k % 8 of byte k // 8, least significant first (padding bits are zero).
    decoder.decode_into(bytes([0b0000_0010, 0b0000_0001, 0b0000_0000]), fields, [])
    assert fields == {"a": True, "b": True, "c": False, "d": False}
    every_bit = BitBlockDecoder.compile(
        [(bit, point(name=f"b{bit}", table="coil", type="bool")) for bit in range(10)], start=0
    )
    bits: dict[str, FieldValue] = {}
    every_bit.decode_into(bytes([0b0000_0010, 0b0000_0001]), bits, [])
    assert list(bits.values()) == [False, True] + [False] * 6 + [True, False]


def test_wire_helpers() -> None:
    assert unpack_registers(bytes([0x12, 0x34, 0xAB, 0xCD])) == (0x1234, 0xABCD)
    assert swap_bytes(bytes([0x12, 0x34, 0xAB, 0xCD])) == bytes([0x34, 0x12, 0xCD, 0xAB])


def float32_registers(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def test_float32_points_carry_only_the_float32_digits_into_every_encoding() -> None:
    """459.30942 as a float32 is 459.3094177246094 as a double: the outputs wrote those 16 digits."""
    from edge_daq.record import Record, Series, to_line
    from edge_daq.sinks.mqtt import MqttOutput, MqttOutputConfig

    registers = float32_registers(459.30942)
    alone, _ = decode(point(type="float32"), registers)
    # Three float32 points in a row decode as one run; a scaled one is rounded to float32 after its scale.
    points = [(2 * n, point(name=f"f{n}", address=2 * n, type="float32")) for n in range(3)]
    points.append((6, point(name="scaled", address=6, type="float32", scale=0.1)))
    run_decoder = RegisterBlockDecoder.compile(points, start=0, byte_order="ABCD")
    fields: dict[str, FieldValue] = {}
    run_decoder.decode_into(wire(registers * 3 + float32_registers(4593.0942)), fields, [])
    assert repr(alone["p"]) == "459.30942"
    assert {name: repr(value) for name, value in fields.items()} == {
        "f0": "459.30942",
        "f1": "459.30942",
        "f2": "459.30942",
        "scaled": "459.30942",
    }
    record = Record(Series("chamber", {"rig": "r"}), {"temp": alone["p"], "n": 3}, 1)
    assert to_line(record) == "chamber,rig=r temp=459.30942,n=3i 1"
    mqtt = MqttOutput(MqttOutputConfig.model_validate({"host": "127.0.0.1"}), gateway="gw")
    _, payload = mqtt.encode_record(record)
    assert b'"temp":459.30942,' in payload
    # Every order and a value of each magnitude reads back as the same float32, in fewer characters.
    for order in ORDERS:
        for value in (0.1, 25.0, -1.5e-7, 3.4028234663852886e38, 16777217.0, 1.17549435e-38):
            exact: float = struct.unpack(">f", struct.pack(">f", value))[0]
            fields, failed = decode(point(type="float32"), encode("float32", exact, order), order)
            assert not failed
            assert struct.unpack(">f", struct.pack(">f", fields["p"]))[0] == exact
            assert len(repr(fields["p"])) <= len(repr(exact))


def test_shortest_float32_is_the_shortest_decimal_that_reads_back() -> None:
    """Against numpy's float32 repr (the shortest round-trip, as in Steele & White / Ryu) on random bits."""
    import random

    import numpy as np

    from edge_daq.drivers.modbus.codec import shortest_float32, shortest_float32s

    generator = random.Random(16)
    values = [struct.unpack("<f", struct.pack("<I", generator.getrandbits(32)))[0] for _ in range(30_000)]
    normal = [value for value in values if math.isfinite(value) and abs(value) >= 1.1754944e-38]
    shortest = [
        result for start in range(0, len(normal), 15) for result in shortest_float32s(normal[start : start + 15])
    ]
    assert shortest == [float(str(np.float32(value))) for value in normal]
    assert [shortest_float32(value) for value in normal[:2000]] == shortest[:2000]
    assert shortest_float32(1e39) == 1e39  # a scaled value beyond float32's range is kept as computed
    assert math.isnan(shortest_float32s([math.nan, 1.5])[0])
