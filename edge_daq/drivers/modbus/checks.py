"""The Modbus drivers' checks across a whole gateway, called by the loader through the driver registry.

Two points that read the same register of one device (a TCP endpoint or a serial port, and a unit) must
read it the same way: a disagreement means one of the two rig files has the wrong type or byte order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_daq.config.yaml_loader import LocatedDict, LocatedList, Mark
from edge_daq.drivers.base import InstrumentConfig, PlacedInstrument
from edge_daq.drivers.modbus.config import ModbusInstrumentConfig
from edge_daq.errors import ConfigIssue


def check_gateway(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    """Every issue among the Modbus instruments of a gateway (the registry's hook)."""
    return check_serial_framing(instruments) + check_register_overlaps(instruments)


_SERIAL_FRAMINGS = {"modbus-rtu": "RTU", "modbus-ascii": "ASCII"}


def check_serial_framing(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    """A serial line speaks RTU or ASCII: both on one port would be two links fighting for it."""
    first_on_port: dict[str, PlacedInstrument] = {}
    issues = []
    for placed in instruments:
        framing = _SERIAL_FRAMINGS.get(placed.config.driver)
        port = getattr(placed.config, "port", None)
        if framing is None or not isinstance(port, str):
            continue
        first = first_on_port.setdefault(port, placed)
        theirs = _SERIAL_FRAMINGS[first.config.driver]
        if theirs != framing:
            issues.append(
                placed.source.value_mark("driver" if "driver" in placed.source else "port").issue(
                    f"instrument {placed.config.name!r} speaks Modbus {framing} on {port}, where instrument "
                    f"{first.config.name!r} ({first.source.mark}) speaks Modbus {theirs}: one serial line has "
                    "one framing"
                )
            )
    return issues


@dataclass(slots=True, eq=False)  # not frozen: a frozen dataclass's __init__ is slower
class _RegisterRead:
    table: str
    start: int  # protocol address (address_base removed)
    end: int  # exclusive
    meaning: tuple[object, ...]  # what the registers are read as; two reads agree if this is equal
    placed: PlacedInstrument
    index: int  # of the point in the instrument's points

    # Only a disagreement needs the words and the position (bench/startup.py: building them for every point
    # of a 1000-instrument gateway was a tenth of `edge-daq check`).
    @property
    def point(self) -> str:
        config = self.placed.config
        assert isinstance(config, ModbusInstrumentConfig)
        return f"point {config.points[self.index].name!r} of instrument {config.name!r}"

    @property
    def reading(self) -> str:
        config = self.placed.config
        assert isinstance(config, ModbusInstrumentConfig)
        point = config.points[self.index]
        last = point.address + point.register_count - 1
        span = f"{point.address}" if last == point.address else f"{point.address}-{last}"
        return f"{point.table} {span} as {point.type} {point.byte_order or config.byte_order}"

    @property
    def mark(self) -> Mark:
        point_sources = self.placed.source.get("points")
        source = point_sources[self.index] if isinstance(point_sources, LocatedList) else None
        return source.value_mark("address") if isinstance(source, LocatedDict) else self.placed.source.mark


def _register_reads(placed: PlacedInstrument) -> list[_RegisterRead]:
    config = placed.config
    if not isinstance(config, ModbusInstrumentConfig):
        return []
    reads = []
    for index, point in enumerate(config.points):
        # Bits of a register (and coils) are read as a bit field: any number of them agree.
        if point.table in ("coil", "discrete") or point.bit is not None:
            continue
        start = point.address - config.address_base
        meaning = (start, point.type, point.length, point.byte_order or config.byte_order)
        reads.append(_RegisterRead(point.table, start, start + point.register_count, meaning, placed, index))
    return reads


def _device(config: InstrumentConfig) -> tuple[str, int] | None:
    """Link and unit: a TCP endpoint or a serial port, and the Modbus unit behind it."""
    host, port, unit = getattr(config, "host", None), getattr(config, "port", None), getattr(config, "unit", None)
    if not isinstance(unit, int):
        return None
    return (f"{host}:{port}" if host is not None else str(port)), unit


def check_register_overlaps(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    """Two points reading the same register of one device must read it the same way (type, byte order)."""
    reads_by_device: dict[tuple[str, int], list[_RegisterRead]] = {}
    for placed in instruments:
        device = _device(placed.config)
        if device is not None:
            reads_by_device.setdefault(device, []).extend(_register_reads(placed))
    issues = []
    for reads in reads_by_device.values():
        reads.sort(key=lambda read: (read.table, read.start))
        # A sweep in address order: only the earlier reads still open at this one's start can overlap it
        # (bench/startup.py: comparing every pair of a device's reads was quadratic, a third of `edge-daq check`
        # on fifty rigs that reuse the same units).
        open_reads: list[_RegisterRead] = []
        for read in reads:
            open_reads = [e for e in open_reads if e.table == read.table and e.end > read.start]
            for earlier in open_reads:
                if earlier.meaning != read.meaning:
                    issues.append(
                        read.mark.issue(
                            f"{read.point} reads {read.reading}, but {earlier.point} ({earlier.mark}) reads "
                            f"{earlier.reading}: reads of the same registers must agree"
                        )
                    )
            open_reads.append(read)
    return issues
