"""Which writable point a (rig, instrument, point) names, whatever the instrument's driver."""

from __future__ import annotations

from edge_daq.drivers.base import InstrumentConfig
from edge_daq.drivers.modbus.config import ModbusInstrumentConfig
from edge_daq.writes.points import ModbusWritablePoint, WritablePoint
from edge_daq.writes.scpi import scpi_point


def find_point(config: InstrumentConfig, name: str) -> WritablePoint | str:
    """The writable point ``name`` of an instrument, or why there is none (a message for the caller)."""
    if isinstance(config, ModbusInstrumentConfig):
        for point in config.points:
            if point.name == name:
                if point.write is None:
                    return (
                        f"point {name!r} of {config.name!r} is not writable: "
                        "the rig file must give it write: {min: ..., max: ...}"
                    )
                return ModbusWritablePoint(config, point, point.write)
        return f"instrument {config.name!r} has no point {name!r}"
    return scpi_point(config, name)
