"""Group an instrument's points into as few Modbus reads as the protocol allows.

Rules: one read covers one table; at most 125 registers (FC03/FC04) or 2000 bits (FC01/FC02); a read may span
a hole of at most ``max_hole`` unused registers (``16 * max_hole`` bits) to save a round trip; a point is
always read whole by one request, never split across two. The plan is deterministic: requests are sorted by
table, then address, whatever the order of the points in the file.

The plan is a greedy sweep: points sorted by address, the current read grows while the next point fits,
otherwise a new read starts at that point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_daq.drivers.modbus.config import ModbusPoint, Table

MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000
BITS_PER_HOLE_UNIT = 16

# Planning order and function codes of the four tables.
TABLE_ORDER: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
FUNCTION_CODES: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def is_bit_table(table: Table) -> bool:
    return table in ("coil", "discrete")


def read_limit(table: Table) -> int:
    """The most registers (or bits) one read of this table may ask for."""
    return MAX_BITS_PER_READ if is_bit_table(table) else MAX_REGISTERS_PER_READ


@dataclass(frozen=True, slots=True)
class PlacedPoint:
    """A point at its protocol address (config address minus ``address_base``)."""

    address: int
    point: ModbusPoint

    @property
    def end(self) -> int:
        """One past the last register (or bit) of the point."""
        return self.address + self.point.register_count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (or bits) of ``table`` from protocol ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[PlacedPoint, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]

    @property
    def point_names(self) -> list[str]:
        return [placed.point.name for placed in self.points]


def place_points(points: Iterable[ModbusPoint], *, address_base: int) -> list[PlacedPoint]:
    """Protocol addresses: with ``address_base: 1``, register number N as printed in a manual is address N-1."""
    return [PlacedPoint(point.address - address_base, point) for point in points]


def plan_reads(points: Iterable[PlacedPoint], *, max_hole: int) -> list[ReadRequest]:
    """The reads that cover every point, sorted by table (coil, discrete, holding, input) then address."""
    by_table: dict[Table, list[PlacedPoint]] = {}
    for placed in points:
        by_table.setdefault(placed.point.table, []).append(placed)
    requests: list[ReadRequest] = []
    for table in TABLE_ORDER:
        if table in by_table:
            requests.extend(_plan_table(table, by_table[table], max_hole=max_hole))
    return requests


def _plan_table(table: Table, points: Sequence[PlacedPoint], *, max_hole: int) -> list[ReadRequest]:
    limit = read_limit(table)
    hole = max_hole * BITS_PER_HOLE_UNIT if is_bit_table(table) else max_hole
    ordered = sorted(points, key=lambda placed: (placed.address, placed.point.register_count, placed.point.name))
    requests: list[ReadRequest] = []
    start = end = 0
    members: list[PlacedPoint] = []
    for placed in ordered:
        if placed.point.register_count > limit:
            raise ValueError(
                f"point {placed.point.name!r} spans {placed.point.register_count} registers; "
                f"one read is limited to {limit}"
            )
        # Overlapping points give a negative gap: they merge as long as the read stays within the limit.
        if members and placed.address - end <= hole and max(end, placed.end) - start <= limit:
            members.append(placed)
            end = max(end, placed.end)
            continue
        if members:
            requests.append(ReadRequest(table, start, end - start, tuple(members)))
        start, end, members = placed.address, placed.end, [placed]
    if members:
        requests.append(ReadRequest(table, start, end - start, tuple(members)))
    return requests
