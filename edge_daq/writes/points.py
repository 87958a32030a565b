"""A writable point of any driver: its limits, how to write it and how to read it back on a link.

One class per driver family (Modbus here, SCPI in ``edge_daq.writes.scpi``); ``edge_daq.writes.targets``
picks it from the instrument's config, so the write service never knows a protocol.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from edge_daq.drivers.modbus.config import ModbusInstrumentConfig, ModbusPoint
from edge_daq.errors import DriverError
from edge_daq.record import FieldValue
from edge_daq.writes.limits import WriteLimits


class WritablePoint(ABC):
    name: str
    limits: WriteLimits

    @abstractmethod
    async def read(self, link: Any) -> FieldValue:
        """The point's value now (one request on ``link``)."""

    @abstractmethod
    async def write(self, link: Any, value: float) -> str:
        """Send the write; return what went on the wire, for the event. Raise DriverError."""

    @property
    @abstractmethod
    def tolerance(self) -> float:
        """How far a read-back may differ from the written value and still confirm it."""

    def matches(self, written: float, readback: FieldValue) -> bool:
        if isinstance(readback, str):
            return False
        return math.isclose(float(readback), written, rel_tol=1e-6, abs_tol=self.tolerance)


class ModbusWritablePoint(WritablePoint):
    def __init__(self, config: ModbusInstrumentConfig, point: ModbusPoint, limits: WriteLimits) -> None:
        self.config, self.point, self.limits, self.name = config, point, limits, point.name

    async def read(self, link: Any) -> FieldValue:
        from edge_daq.drivers.modbus.write import read_point

        return await read_point(link, self.config, self.point)

    async def write(self, link: Any, value: float) -> str:
        from edge_daq.drivers.modbus.write import WriteValueError, write_point

        try:
            return await write_point(link, self.config, self.point, value)
        except WriteValueError as error:
            raise DriverError(f"point {self.name!r}: {error}") from error

    @property
    def tolerance(self) -> float:
        if self.limits.tolerance is not None:
            return self.limits.tolerance
        if self.point.scale is not None:
            return abs(self.point.scale) / 2
        return 0.0 if self.point.type not in ("float32", "float64") else 1e-6 * max(1.0, abs(self.limits.max))
