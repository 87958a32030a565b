"""Config models shared by the Modbus drivers (TCP now; RTU and RTU over TCP reuse the point model).

Sample (rig file)::

    - name: chamber
      driver: modbus-tcp
      host: 10.0.4.17
      port: 502
      unit: 1
      interval: 2s
      timeout: 500ms
      byte_order: ABCD
      address_base: 0
      points:
        - {name: temp_pv, table: holding, address: 100, type: int16, scale: 0.1, unit: degC}
        - {name: door_open, table: holding, address: 210, type: bool, bit: 3}
        - {name: model, table: holding, address: 40, type: string, length: 10}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_daq.config.types import NAME_PATTERN, StrictModel
from edge_daq.config.values import DevicePath, HostName
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.writes.limits import WriteLimits, engineering_range, range_issue

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "string"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

REGISTER_COUNT: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
RAW_RANGES: dict[str, tuple[float, float]] = {
    "int16": (-(2.0**15), 2.0**15 - 1),
    "uint16": (0.0, 2.0**16 - 1),
    "int32": (-(2.0**31), 2.0**31 - 1),
    "uint32": (0.0, 2.0**32 - 1),
    "int64": (-(2.0**63), 2.0**63 - 1),
    "uint64": (0.0, 2.0**64 - 1),
    "float32": (-3.4028234663852886e38, 3.4028234663852886e38),
    "float64": (-1.7976931348623157e308, 1.7976931348623157e308),
    "bool": (0.0, 1.0),
}
"""What each type can hold on the wire: a write limit outside it (after scale/offset) is a config error."""


class ModbusPoint(StrictModel):
    """One value read from a Modbus instrument; becomes one field of the instrument's record."""

    name: str = Field(pattern=NAME_PATTERN)
    table: Table = "holding"
    address: int = Field(ge=0, le=65536)
    type: PointType = "uint16"
    scale: float | None = None
    offset: float | None = None
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=250)
    byte_order: ByteOrder | None = None
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    write: WriteLimits | None = None  # writable only with it (edge_daq.writes)

    @model_validator(mode="after")
    def _check_shape(self) -> ModbusPoint:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"a {self.table} point is a single bit: its type must be bool")
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise ValueError("bit selects one bit of a register: it needs type bool on a holding or input table")
        if self.type == "string":
            if self.length is None:
                raise ValueError("a string point needs length (characters, two per register)")
        elif self.length is not None:
            raise ValueError("length applies only to string points")
        if (self.scale is not None or self.offset is not None) and self.type in ("bool", "string"):
            raise ValueError(f"scale and offset do not apply to {self.type} points")
        if self.write is not None:
            self._check_write(self.write)
        return self

    def _check_write(self, limits: WriteLimits) -> None:
        if self.table in ("input", "discrete"):
            raise ValueError(f"write: the {self.table} table is read-only in Modbus (use holding or coil)")
        if self.type == "string":
            raise ValueError("write: string points cannot be written")
        if self.scale == 0:
            raise ValueError("write: a point with scale 0 cannot be written (every value reads the same)")
        low, high = engineering_range(RAW_RANGES[self.type], self.scale, self.offset)
        issue = range_issue(
            limits, low, high, f"{self.type}" + (" after scale/offset" if self.scale or self.offset else "")
        )
        if issue is not None:
            raise ValueError(issue)

    @property
    def register_count(self) -> int:
        """Registers (or bits, for coil/discrete tables) this point occupies."""
        if self.table in ("coil", "discrete") or self.type == "bool":
            return 1
        if self.type == "string":
            assert self.length is not None
            return (self.length + 1) // 2
        return REGISTER_COUNT[self.type]

    @property
    def is_float_field(self) -> bool:
        """Scaled or floating points give float fields; unscaled integers give integer fields (stable types)."""
        return self.type in ("float32", "float64") or (
            self.type in INTEGER_TYPES and (self.scale is not None or self.offset is not None)
        )


class ModbusInstrumentConfig(InstrumentConfig):
    """Keys shared by every Modbus transport."""

    unit: int = Field(default=1, ge=0, le=255)
    byte_order: ByteOrder = "ABCD"
    address_base: Literal[0, 1] = 0
    max_hole: int = Field(
        default=8,
        ge=0,
        le=100,
        description="unused registers a merged read may span to save a request (bits: 16 times this)",
    )
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_points(self) -> ModbusInstrumentConfig:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"two points are named {point.name!r}")
            seen.add(point.name)
            if point.address < self.address_base:
                raise ValueError(
                    f"point {point.name!r}: address {point.address} is below address_base {self.address_base}"
                )
            if point.address - self.address_base + point.register_count > 65536:
                raise ValueError(f"point {point.name!r} extends past the last Modbus address")
        return self

    def field_tags(self) -> dict[str, dict[str, str]]:
        return {point.name: point.tags for point in self.points if point.tags}


class ModbusTcpConfig(ModbusInstrumentConfig):
    host: HostName
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuConfig(ModbusInstrumentConfig):
    """Modbus RTU on a serial port; every instrument with the same ``port`` shares one RS-485 bus.

    Sample (rig file)::

        - name: vfd
          driver: modbus-rtu
          port: /dev/ttyUSB1     # or a stable /dev/serial/by-id/... link
          baudrate: 19200
          parity: E              # N | E | O (Modbus's default is E)
          stopbits: 1
          unit: 3
          points:
            - {name: freq_hz, table: holding, address: 4096, type: uint16, scale: 0.01}
    """

    port: DevicePath = Field(min_length=1, description="serial device path")
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[8] = Field(default=8, description="Modbus RTU frames use 8 data bits")


class ModbusRtuOverTcpConfig(ModbusInstrumentConfig):
    """Modbus RTU frames (with CRC, no MBAP header) over a raw TCP socket: a serial device server such as a
    Moxa NPort in "TCP server" mode. Every instrument with the same ``host:port`` shares one bus.

    ``baudrate`` is the serial line behind the device server, if known: it spaces requests by the
    inter-frame silence and widens the response timeout by the frames' time on the line.
    """

    host: HostName
    port: int = Field(default=4001, ge=1, le=65535)
    baudrate: int | None = Field(default=None, ge=300, le=4_000_000)


class ModbusAsciiConfig(ModbusInstrumentConfig):
    """Modbus ASCII on a serial port (``:`` framing, LRC, CR LF); every instrument with the same ``port``
    shares one bus, as on RTU. Modbus ASCII's default framing is 7 data bits, even parity (7E1)."""

    port: DevicePath = Field(min_length=1, description="serial device path")
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = Field(default=7, description="Modbus ASCII uses 7 data bits (8 on some devices)")
