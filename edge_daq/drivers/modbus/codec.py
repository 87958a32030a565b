"""Turn the registers and bits of one Modbus read into field values.

Byte orders follow Telegraf's Modbus input. For a 32-bit value whose big-endian bytes are A B C D:

=====  ==========  ===============================
order  registers   meaning
=====  ==========  ===============================
ABCD   [AB, CD]    big endian
CDAB   [CD, AB]    word swap ("low word first")
BADC   [BA, DC]    byte swap within each register
DCBA   [DC, BA]    little endian
=====  ==========  ===============================

64-bit values (big-endian bytes A..H) extend the rule exactly as Telegraf does: ABCD reads ABCDEFGH
([AB, CD, EF, GH]), CDAB reads GHEFCDAB ([GH, EF, CD, AB]: all four words reversed), BADC reads BADCFEHG
([BA, DC, FE, HG]) and DCBA reads HGFEDCBA ([HG, FE, DC, BA]). 16-bit quantities (int16, uint16, the bit of a
register, the two characters of each string register) are big endian for ABCD and CDAB and byte-swapped for
BADC and DCBA.

Speed matters (pipeline and driver-overhead benchmarks), so the work is compiled once per planned read: a poll
takes the reply's register bytes as they came off the wire (and swaps each register's bytes once, only if a
point needs it), then each run of
consecutive points of the same type, layout and scale is one ``unpack_from`` of a precompiled ``struct``
format at a precomputed offset, with the scale applied per value. The trick that makes every order a plain
``struct`` format: with the registers packed big endian, ABCD is ``>`` and DCBA is ``<``; with each register's
bytes swapped, BADC becomes ``>`` and CDAB becomes ``<``.
"""

from __future__ import annotations

import array
import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_daq.drivers.modbus.config import ByteOrder, ModbusPoint
from edge_daq.record import FieldValue

# A compiled point: reads its value from the big-endian and the byte-swapped packing of the request's
# registers; None means the value cannot be stored (NaN or infinity) and the point counts as failed.
RegisterDecoder = Callable[[bytes, bytes], FieldValue | None]

INT64_MAX = (1 << 63) - 1

_STRUCT_CODES: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


_FLOAT32 = struct.Struct("<f")
_PACK_FLOAT32, _UNPACK_FLOAT32 = _FLOAT32.pack, _FLOAT32.unpack
_FLOAT32_MAX = 3.4028234663852886e38


def shortest_float32(value: float) -> float:
    """The double nearest to the shortest decimal that reads back as the same float32 as ``value``.

    A float32 reading holds 6 to 9 significant digits, but as a double it prints with up to 17: the outputs
    write ``repr()`` (line protocol, JSON), so 459.30942 went out as 459.3094177246094, digits the instrument
    never measured and bytes on every wire. A scaled float32 point is rounded to float32 first: its scale and
    offset add no precision. NaN and infinities come back as they are (the callers refuse them).

    The first of 6, 7, 8 and 9 significant digits that reads back is the shortest: a float32 is within 6e-8
    of the shortest decimal, so rounding it to 6 digits gives that decimal when it has 6 or fewer (``%g``
    drops the trailing zeros). Subnormals (below 1.2e-38) may keep up to 6 digits where fewer would do.
    """
    return shortest_float32s((value,))[0]


@functools.cache
def _float32_batch(count: int) -> tuple[struct.Struct, str, str]:
    return struct.Struct(f"<{count}f"), "%.7g," * count, "%.8g," * count


def shortest_float32s(values: Sequence[float]) -> list[float]:
    """:func:`shortest_float32` of each value, a run's values formatted, parsed and checked in C at once.

    Fast path (bench/pipeline.py): the candidates of a whole run with 7 and with 8 digits are a %-format, a
    split, a parse and a pack each; then each value takes its 8-digit candidate unless the 7-digit one reads
    back (about a quarter of readings: those also try fewer digits) or neither does (9 digits, about 1 in 70).
    """
    packer, seven_digits, eight_digits = _float32_batch(len(values))
    pack, unpack = packer.pack, packer.unpack
    try:
        targets = unpack(pack(*values))
        eights = list(map(float, (eight_digits % targets).split(",")[:-1]))
        eight_back = unpack(pack(*eights))
        sevens = list(map(float, (seven_digits % targets).split(",")[:-1]))
        seven_back = unpack(pack(*sevens))
    except OverflowError:  # a scaled value beyond float32's range: kept as computed, the others one by one
        return [value if abs(value) > _FLOAT32_MAX else shortest_float32(value) for value in values]
    return [
        _shorter(seven, target) if seven_read == target else eight if eight_read == target
        else float(f"{target:.9g}")  # 9 digits always read back
        for seven, seven_read, eight, eight_read, target in zip(
            sevens, seven_back, eights, eight_back, targets, strict=True
        )
    ]  # fmt: skip


def _shorter(seven: float, target: float) -> float:
    """The shortest candidate of a float32 whose 7-digit one reads back: that one, or one of fewer digits."""
    pack, unpack = _PACK_FLOAT32, _UNPACK_FLOAT32
    candidate = seven
    for digits in range(6, 0, -1):
        shorter = float(f"{target:.{digits}g}")
        if unpack(pack(shorter))[0] != target:
            return candidate
        candidate = shorter
    return candidate


_CONTROL_CHARACTERS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])
"""C0 (NUL, CR, ESC...), DEL and C1: removed from string points (padding aside, they are noise or an attack on
whatever displays the value)."""


def _layout(point_type: str, byte_order: ByteOrder) -> tuple[bool, str]:
    """Which packing to read from (True: byte-swapped registers) and the struct endianness prefix."""
    if point_type in ("int16", "uint16", "bool", "string"):
        # One register at a time: only the byte swap matters, the word order does not.
        return (byte_order in ("BADC", "DCBA"), ">")
    return {
        "ABCD": (False, ">"),
        "DCBA": (False, "<"),
        "BADC": (True, ">"),
        "CDAB": (True, "<"),
    }[byte_order]


def compile_register_point(point: ModbusPoint, *, register_offset: int, byte_order: ByteOrder) -> RegisterDecoder:
    """A decoder for one holding/input point that starts ``register_offset`` registers into its read.

    ``byte_order`` is the instrument's default; the point's own ``byte_order`` wins when it is set.
    """
    swapped, endian = _layout(point.type, point.byte_order or byte_order)
    byte_offset = 2 * register_offset

    if point.type == "bool":
        # Without ``bit``, a bool register is true when it is non-zero.
        mask = 0xFFFF if point.bit is None else 1 << point.bit
        unpack_word = struct.Struct(">H").unpack_from

        def decode_bit(big: bytes, little: bytes) -> FieldValue | None:
            return bool(unpack_word(little if swapped else big, byte_offset)[0] & mask)

        return decode_bit

    if point.type == "string":
        assert point.length is not None
        end = byte_offset + point.length

        def decode_string(big: bytes, little: bytes) -> FieldValue | None:
            raw = (little if swapped else big)[byte_offset:end]
            return raw.decode("latin-1").rstrip("\x00 ").translate(_CONTROL_CHARACTERS)

        return decode_string

    unpack = struct.Struct(endian + _STRUCT_CODES[point.type]).unpack_from
    is_float = point.type in ("float32", "float64")
    if point.scale is None and point.offset is None:
        if point.type == "uint64":
            # Line protocol integers are int64: a larger uint64 cannot be stored as an integer field, and a
            # float would change the field's type, so it counts as a failed point (scale: 1 makes it a float).
            def decode_uint64(big: bytes, little: bytes) -> FieldValue | None:
                value: int = unpack(little if swapped else big, byte_offset)[0]
                return value if value <= INT64_MAX else None

            return decode_uint64
        if not is_float:

            def decode_int(big: bytes, little: bytes) -> FieldValue | None:
                value: int = unpack(little if swapped else big, byte_offset)[0]
                return value

            return decode_int

        def decode_float(big: bytes, little: bytes) -> FieldValue | None:
            value: float = unpack(little if swapped else big, byte_offset)[0]
            return value if math.isfinite(value) else None

        return _shortest(decode_float) if point.type == "float32" else decode_float

    scale = 1.0 if point.scale is None else point.scale
    offset = 0.0 if point.offset is None else point.offset
    divisor = round(1.0 / scale) if scale else 0
    if divisor > 1 and math.isclose(1.0 / divisor, scale, rel_tol=1e-12):
        # scale: 0.1 or 0.001 as a division gives 330.0 / 1000 == 0.33, where 330 * 0.001 gives 0.33000000000000002.

        def decode_divided(big: bytes, little: bytes) -> FieldValue | None:
            value = unpack(little if swapped else big, byte_offset)[0] / divisor + offset
            return value if math.isfinite(value) else None

        return _shortest(decode_divided) if point.type == "float32" else decode_divided

    def decode_scaled(big: bytes, little: bytes) -> FieldValue | None:
        value = unpack(little if swapped else big, byte_offset)[0] * scale + offset
        return value if math.isfinite(value) else None

    return _shortest(decode_scaled) if point.type == "float32" else decode_scaled


def _shortest(decode: RegisterDecoder) -> RegisterDecoder:
    """A float32 point's decoder whose values carry only the float32's digits (see shortest_float32)."""

    def decode_shortest(big: bytes, little: bytes) -> FieldValue | None:
        value = decode(big, little)
        return None if value is None else shortest_float32(value)  # type: ignore[arg-type]

    return decode_shortest


def needs_byte_swap(point: ModbusPoint, byte_order: ByteOrder) -> bool:
    """Whether decoding this point reads the byte-swapped packing of the registers."""
    return _layout(point.type, point.byte_order or byte_order)[0]


# A compiled step of a block: adds its points' values to ``fields`` (or their names to ``failed``), reading the
# big-endian and the byte-swapped packing of the block's registers.
BlockStep = Callable[[bytes, bytes, dict[str, FieldValue], list[str]], None]


@dataclass(slots=True)
class _Run:
    """Consecutive numeric points that share a layout, a type and a scale/offset: one ``unpack_from`` reads them all.

    Fast path (bench/pipeline.py, bench/driver_overhead.py: decoding was a fifth of the pipeline's CPU): a block of
    scaled int16 readings decodes in one struct call and one comprehension, not one closure call per point.
    """

    point_type: str
    swapped: bool
    endian: str
    scale: float | None
    offset: float | None
    start: int  # byte offset of the first point
    end: int  # byte offset past the last point
    codes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def key(self) -> tuple[object, ...]:
        return (self.point_type, self.swapped, self.endian, self.scale, self.offset)

    def add(self, name: str, byte_offset: int) -> None:
        if byte_offset > self.end:
            self.codes.append(f"{byte_offset - self.end}x")  # a hole, or a point of another run
        self.codes.append(_STRUCT_CODES[self.point_type])
        self.names.append(name)
        self.end = byte_offset + struct.calcsize(_STRUCT_CODES[self.point_type])

    def compile(self) -> BlockStep:
        unpack_from = struct.Struct(self.endian + "".join(self.codes)).unpack_from
        names, swapped, start = tuple(self.names), self.swapped, self.start
        is_float = self.point_type in ("float32", "float64")

        if self.scale is None and self.offset is None:
            if self.point_type == "uint64":

                def decode_uint64s(big: bytes, little: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
                    for name, value in zip(names, unpack_from(little if swapped else big, start), strict=True):
                        if value <= INT64_MAX:
                            fields[name] = value
                        else:
                            failed.append(name)

                return decode_uint64s
            if not is_float:

                def decode_ints(big: bytes, little: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
                    fields.update(zip(names, unpack_from(little if swapped else big, start), strict=True))

                return decode_ints
            raw: Callable[[bytes, bytes], Sequence[float]] = lambda big, little: unpack_from(  # noqa: E731
                little if swapped else big, start
            )
            return _finite_step(names, _shortest_run(raw) if self.point_type == "float32" else raw)

        scale = 1.0 if self.scale is None else self.scale
        offset = 0.0 if self.offset is None else self.offset
        divisor = round(1.0 / scale) if scale else 0
        if divisor > 1 and math.isclose(1.0 / divisor, scale, rel_tol=1e-12):
            # As in compile_register_point: scale 0.1 as a division by 10, for the exact decimal.
            def divided(big: bytes, little: bytes) -> list[float]:
                return [raw / divisor + offset for raw in unpack_from(little if swapped else big, start)]

            values = divided
        else:

            def scaled(big: bytes, little: bytes) -> list[float]:
                return [raw * scale + offset for raw in unpack_from(little if swapped else big, start)]

            values = scaled
        # An integer register scaled by a finite factor stays finite unless the factor is astronomically large.
        if not is_float and math.isfinite(abs(scale) * 2.0**64 + abs(offset)):

            def decode_all(big: bytes, little: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
                fields.update(zip(names, values(big, little), strict=True))

            return decode_all
        return _finite_step(names, _shortest_run(values) if self.point_type == "float32" else values)


def _shortest_run(values: Callable[[bytes, bytes], Sequence[float]]) -> Callable[[bytes, bytes], list[float]]:
    """A float32 run's values with only the float32's digits (NaN and infinities pass, for _finite_step)."""

    def shortest(big: bytes, little: bytes) -> list[float]:
        return shortest_float32s(values(big, little))

    return shortest


def _finite_step(names: tuple[str, ...], values: Callable[[bytes, bytes], Sequence[float]]) -> BlockStep:
    """A step whose values may be NaN or infinite: those points fail instead."""

    def decode_finite(big: bytes, little: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
        decoded = values(big, little)
        # Usually all are finite: one sum tells (NaN and infinity propagate; an overflow of finite values only
        # sends them through the loop), and the values go in with one update (bench/pipeline.py).
        if math.isfinite(sum(decoded)):
            fields.update(zip(names, decoded, strict=True))
            return
        for name, value in zip(names, decoded, strict=True):
            if math.isfinite(value):
                fields[name] = value
            else:
                failed.append(name)

    return decode_finite


def _single_step(name: str, decode: RegisterDecoder) -> BlockStep:
    def decode_one(big: bytes, little: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
        value = decode(big, little)
        if value is None:
            failed.append(name)
        else:
            fields[name] = value

    return decode_one


def compile_block_steps(
    points: Sequence[tuple[int, ModbusPoint]], *, start: int, byte_order: ByteOrder
) -> list[BlockStep]:
    """The steps that decode ``points`` in their order: numeric points grouped into runs, the others one by one.

    A run grows while the next point has the run's type, layout, scale and offset and starts at or after the
    run's end; anything else closes it. Decoding the steps in order adds the fields in the points' order.
    """
    steps: list[BlockStep] = []
    run: _Run | None = None
    for address, point in points:
        byte_offset = 2 * (address - start)
        if point.type in _STRUCT_CODES:
            swapped, endian = _layout(point.type, point.byte_order or byte_order)
            candidate = (point.type, swapped, endian, point.scale, point.offset)
            if run is not None and run.key() == candidate and byte_offset >= run.end:
                run.add(point.name, byte_offset)
                continue
            if run is not None:
                steps.append(run.compile())
            run = _Run(point.type, swapped, endian, point.scale, point.offset, byte_offset, byte_offset)
            run.add(point.name, byte_offset)
            continue
        if run is not None:
            steps.append(run.compile())
            run = None
        decoder = compile_register_point(point, register_offset=address - start, byte_order=byte_order)
        steps.append(_single_step(point.name, decoder))
    if run is not None:
        steps.append(run.compile())
    return steps


@dataclass(frozen=True, slots=True)
class RegisterBlockDecoder:
    """Decodes every point of one holding/input read, compiled once per instrument."""

    steps: tuple[BlockStep, ...]
    needs_swap: bool

    @classmethod
    def compile(
        cls, points: Sequence[tuple[int, ModbusPoint]], *, start: int, byte_order: ByteOrder
    ) -> RegisterBlockDecoder:
        """``points`` are (protocol address, point) pairs, all inside the read that starts at ``start``."""
        return cls(
            steps=tuple(compile_block_steps(points, start=start, byte_order=byte_order)),
            needs_swap=any(needs_byte_swap(point, byte_order) for _, point in points),
        )

    def decode_into(self, data: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
        """Add each point's value to ``fields``; points whose value cannot be stored go to ``failed``.

        ``data`` is the reply's register bytes as they came off the wire (big endian), two per register asked
        for (the link checks the reply's byte count).
        """
        little = swap_bytes(data) if self.needs_swap else data
        for step in self.steps:
            step(data, little, fields, failed)


def swap_bytes(data: bytes) -> bytes:
    """The registers of ``data`` with the two bytes of each swapped."""
    words = array.array("H", data)
    words.byteswap()
    return words.tobytes()


def unpack_registers(data: bytes) -> tuple[int, ...]:
    """Register values from a reply's big-endian register bytes."""
    return struct.unpack(f">{len(data) // 2}H", data)


@dataclass(frozen=True, slots=True)
class BitBlockDecoder:
    """Decodes every point of one coil/discrete read: each point is one bit."""

    offsets: tuple[tuple[str, int, int], ...]  # name, byte, bit mask

    @classmethod
    def compile(cls, points: Sequence[tuple[int, ModbusPoint]], *, start: int) -> BitBlockDecoder:
        offsets = []
        for address, point in points:
            bit = address - start
            offsets.append((point.name, bit >> 3, 1 << (bit & 7)))
        return cls(offsets=tuple(offsets))

    def decode_into(self, data: bytes, fields: dict[str, FieldValue], failed: list[str]) -> None:
        """``data`` is the reply's packed bits (whole bytes, padded with zeros); never fails a point."""
        for name, byte, mask in self.offsets:
            fields[name] = bool(data[byte] & mask)
