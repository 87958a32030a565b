"""The read planner: fewest reads within the protocol's limits, holes, overlaps, bits, determinism."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from edge_daq.drivers.modbus.config import ModbusPoint
from edge_daq.drivers.modbus.planner import PlacedPoint, ReadRequest, place_points, plan_reads


def p(name: str, address: int, point_type: str = "uint16", table: str = "holding", **keys: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": name, "table": table, "address": address, "type": point_type, **keys})


def plan(*points: ModbusPoint, max_hole: int = 8, address_base: int = 0) -> list[ReadRequest]:
    return plan_reads(place_points(points, address_base=address_base), max_hole=max_hole)


def shape(requests: list[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in requests]


def check_invariants(requests: list[ReadRequest]) -> None:
    for request in requests:
        limit = 2000 if request.table in ("coil", "discrete") else 125
        assert 1 <= request.count <= limit
        for placed in request.points:
            assert placed.point.table == request.table
            # Never straddles: every point lies whole inside its read.
            assert request.address <= placed.address
            assert placed.end <= request.address + request.count


def test_contiguous_registers_make_one_read() -> None:
    requests = plan(p("a", 0), p("b", 1, "int32"), p("c", 3, "float64"))
    assert shape(requests) == [("holding", 0, 7)]
    assert requests[0].point_names == ["a", "b", "c"]


def registers(count: int, start: int = 0) -> list[ModbusPoint]:
    return [p(f"r{address}", address) for address in range(start, start + count)]


def test_exactly_125_registers_is_one_read() -> None:
    assert shape(plan(*registers(125))) == [("holding", 0, 125)]
    assert shape(plan(p("first", 0), p("last", 124), max_hole=100)) == [("holding", 0, 1), ("holding", 124, 1)]
    assert shape(plan(p("first", 0), p("mid", 62), p("last", 124), max_hole=61)) == [("holding", 0, 125)]


def test_126_registers_is_two_reads() -> None:
    assert shape(plan(*registers(126))) == [("holding", 0, 125), ("holding", 125, 1)]


def test_a_point_never_straddles_the_limit() -> None:
    # 0..122 used, then a float32 at 123..124 fits exactly; a uint64 at 123 would end at 127 and must move.
    fits = plan(*registers(123), p("f", 123, "float32"))
    assert shape(fits) == [("holding", 0, 125)]
    moved = plan(*registers(123), p("q", 123, "uint64"))
    assert shape(moved) == [("holding", 0, 123), ("holding", 123, 4)]
    check_invariants(moved)


def test_largest_string_fills_a_read_alone() -> None:
    requests = plan(p("s", 10, "string", length=250), p("after", 135), p("before", 9))
    assert shape(requests) == [("holding", 9, 1), ("holding", 10, 125), ("holding", 135, 1)]


@pytest.mark.parametrize(("gap", "reads"), [(0, 1), (7, 1), (8, 1), (9, 2)])
def test_holes_up_to_max_hole_are_read_through(gap: int, reads: int) -> None:
    requests = plan(p("a", 100, "int32"), p("b", 102 + gap), max_hole=8)
    assert len(requests) == reads
    if reads == 1:
        assert shape(requests) == [("holding", 100, 3 + gap)]


def test_max_hole_zero_merges_only_adjacent_points() -> None:
    assert len(plan(p("a", 0), p("b", 1), max_hole=0)) == 1
    assert len(plan(p("a", 0), p("b", 2), max_hole=0)) == 2


def test_overlapping_points_share_a_read() -> None:
    # A uint32 and the uint16s that are its halves, plus a bit of the first register.
    requests = plan(p("whole", 50, "uint32"), p("hi", 50), p("lo", 51), p("flag", 50, "bool", bit=2))
    assert shape(requests) == [("holding", 50, 2)]
    assert sorted(requests[0].point_names) == ["flag", "hi", "lo", "whole"]


def test_overlap_with_a_long_point_extends_to_the_furthest_end() -> None:
    requests = plan(p("s", 0, "string", length=20), p("x", 3), p("y", 12))
    assert shape(requests) == [("holding", 0, 13)]


def test_tables_are_planned_separately_and_in_a_fixed_order() -> None:
    requests = plan(
        p("i", 0, table="input"),
        p("h", 0),
        p("d", 0, "bool", table="discrete"),
        p("c", 0, "bool", table="coil"),
    )
    assert shape(requests) == [("coil", 0, 1), ("discrete", 0, 1), ("holding", 0, 1), ("input", 0, 1)]
    assert [r.function_code for r in requests] == [1, 2, 3, 4]


def test_bits_exactly_2000_is_one_read() -> None:
    # max_hole 100 lets a bit read span 1600 unused bits.
    points = [p(name, address, "bool", table="coil") for name, address in [("a", 0), ("m", 1000), ("b", 1999)]]
    assert shape(plan(*points, max_hole=100)) == [("coil", 0, 2000)]


def test_bits_2001_is_two_reads() -> None:
    points = [p(name, address, "bool", table="discrete") for name, address in [("a", 0), ("m", 1000), ("b", 2000)]]
    assert shape(plan(*points, max_hole=100)) == [("discrete", 0, 1001), ("discrete", 2000, 1)]


@pytest.mark.parametrize(("gap", "reads"), [(127, 1), (128, 1), (129, 2)])
def test_bit_holes_are_16_times_max_hole(gap: int, reads: int) -> None:
    requests = plan(p("a", 0, "bool", table="coil"), p("b", 1 + gap, "bool", table="coil"), max_hole=8)
    assert len(requests) == reads


def test_address_base_one_shifts_to_protocol_addresses() -> None:
    requests = plan(p("a", 40001 - 40000), p("b", 3), address_base=1)
    assert shape(requests) == [("holding", 0, 3)]
    assert [placed.address for placed in requests[0].points] == [0, 2]


def test_address_65535_is_the_last_register() -> None:
    assert shape(plan(p("last", 65535))) == [("holding", 65535, 1)]
    assert shape(plan(p("last", 65536), address_base=1)) == [("holding", 65535, 1)]


def test_plan_does_not_depend_on_point_order() -> None:
    rng = random.Random(20260611)
    points = [p(f"p{i}", rng.randrange(0, 1000), rng.choice(["uint16", "int32", "float64"])) for i in range(80)]
    points += [p(f"c{i}", rng.randrange(0, 5000), "bool", table="coil") for i in range(40)]
    reference = plan(*points)
    check_invariants(reference)
    assert {name for r in reference for name in r.point_names} == {x.name for x in points}
    for _ in range(5):
        rng.shuffle(points)
        assert plan(*points) == reference
    # Sorted by table, then address, and reads of one table do not start out of order.
    keys = [(("coil", "discrete", "holding", "input").index(r.table), r.address) for r in reference]
    assert keys == sorted(keys)


@pytest.mark.parametrize("seed", range(20))
def test_random_layouts_respect_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    max_hole = rng.choice([0, 1, 8, 30])
    points = []
    for i in range(rng.randrange(1, 120)):
        table = rng.choice(["holding", "input", "coil", "discrete"])
        if table in ("coil", "discrete"):
            points.append(p(f"p{i}", rng.randrange(0, 6000), "bool", table=table))
        else:
            kind = rng.choice(["uint16", "int32", "uint64", "string"])
            extra = {"length": rng.randrange(1, 250)} if kind == "string" else {}
            points.append(p(f"p{i}", rng.randrange(0, 600), kind, table=table, **extra))
    requests = plan(*points, max_hole=max_hole)
    check_invariants(requests)
    assert sorted(name for r in requests for name in r.point_names) == sorted(x.name for x in points)
    # Consecutive reads of a table could not have been merged: the next point did not fit or the hole was too big.
    for before, after in itertools.pairwise(requests):
        if before.table != after.table:
            continue
        hole = max_hole * (16 if before.table in ("coil", "discrete") else 1)
        limit = 2000 if before.table in ("coil", "discrete") else 125
        first = min(after.points, key=lambda placed: (placed.address, placed.point.register_count))
        end = before.address + before.count
        assert first.address - end > hole or max(end, first.end) - before.address > limit


def test_placed_point_end() -> None:
    assert PlacedPoint(10, p("s", 10, "string", length=5)).end == 13
