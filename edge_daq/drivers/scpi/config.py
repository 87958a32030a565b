"""Config models of the SCPI/ASCII drivers.

Sample (rig file)::

    - name: smu1
      driver: scpi-serial          # scpi-tcp takes host and port (5025 is the usual raw-socket port)
      port: /dev/ttyUSB0
      baudrate: 9600
      write_termination: "\\n"
      read_termination: "\\n"
      identity: KEITHLEY           # *IDN? must contain this, checked at every (re)connect
      init: [":FORM:ELEM VOLT,CURR"]   # sent at every (re)connect
      drain_errors: true           # :SYST:ERR? after each poll until "0,...": errors counted in scpi_errors
      max_reply_bytes: 64KiB       # the default: a longer reply is a protocol error and the link reconnects
      interval: 5s
      points:
        - {name: vcc, query: ":MEAS:VOLT?", type: float, unit: V}
        - {query: ":READ?", fields: [v, i]}                   # one reply, comma-separated, several fields
        - {query: ":FETC?", fields: [v2, "-"], extra: ignore}  # more elements than fields are dropped
        - {name: model, query: ":SYST:MOD?", type: str, max_length: 64}
        - {query: "TEMP?", regex: "^(?P<temp_pv>[-+.\\\\d]+),(?P<temp_sp>[-+.\\\\d]+)"}   # named groups

The ``visa`` driver takes the same keys and points, addressed by a VISA resource string instead
(see :class:`VisaConfig`).

A reply of 9.91E37 (SCPI's "no reading") leaves the field out of the record and counts it as failed.
In ``fields``, a ``-`` skips that element of the reply; the reply must have exactly as many elements as
``fields`` lists, unless ``extra: ignore`` lets it have more. Numbers are SCPI numbers (IEEE 488.2 NR1, NR2,
NR3: ``-12``, ``1.5``, ``+1.05E+3``), nothing else that Python's ``float`` would take. A reply is at most
``max_reply_bytes`` (64 KiB) long; a ``str`` value at most ``max_length`` characters, control characters
removed.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from edge_daq.config.types import NAME_PATTERN, StrictModel
from edge_daq.config.units import Size
from edge_daq.config.values import DevicePath, HostName
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.drivers.scpi.patterns import ReplyPattern
from edge_daq.writes.limits import WriteLimits

ValueType = Literal["float", "int", "str"]
SKIP = "-"
ERROR_COUNT_FIELD = "scpi_errors"
DEFAULT_MAX_REPLY_BYTES = 64 * 1024
MAX_REPLY_BYTES_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_LENGTH = 256


class ScpiWrite(WriteLimits):
    """``write:`` of a SCPI point: the limits, the command that sets it (``{value}`` is replaced) and the
    check after it: ``error_queue`` asks ``:SYST:ERR?`` (an entry other than 0 fails the write), ``opc``
    asks ``*OPC?`` and waits for its ``1`` (the instrument finished the command)."""

    command: str = Field(min_length=1, pattern=r"\{value\}")
    check: Literal["error_queue", "opc"] = "error_queue"


class ScpiPoint(StrictModel):
    """One query; its reply gives one field (``name``), several (``fields``) or named groups (``regex``)."""

    query: str = Field(min_length=1)
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    fields: list[str] | None = Field(default=None, min_length=1)
    regex: str | None = None
    type: ValueType = "float"
    extra: Literal["error", "ignore"] = Field(
        default="error", description="with fields: a reply with more elements than fields is an error, or ignored"
    )
    max_length: int = Field(
        default=DEFAULT_MAX_LENGTH, ge=1, le=MAX_REPLY_BYTES_LIMIT, description="characters of a str value"
    )
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    write: ScpiWrite | None = None  # writable only with it (edge_daq.writes)

    @model_validator(mode="after")
    def _check_shape(self) -> ScpiPoint:
        given = [key for key in ("name", "fields", "regex") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("a point gives exactly one of name, fields (a comma-separated reply) or regex")
        if "extra" in self.model_fields_set and self.fields is None:
            raise ValueError("extra applies to a point with fields (a comma-separated reply)")
        for field in self.fields or []:
            if field != SKIP and not re.fullmatch(NAME_PATTERN, field):
                raise ValueError(f"field name {field!r}: letters, digits, _ . - (or {SKIP} to skip an element)")
        if self.regex is not None:
            try:
                pattern = ReplyPattern.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
            if not pattern.group_names:
                raise ValueError("regex needs named groups, such as (?P<temp_pv>[-\\d.]+): each names a field")
            for group in pattern.group_names:
                if not re.fullmatch(NAME_PATTERN, group):
                    raise ValueError(f"regex group {group!r} is not a valid field name")
        if self.write is not None and (self.name is None or self.type == "str"):
            raise ValueError("write: only a point with one numeric field (name, type float or int) is writable")
        return self

    @property
    def field_names(self) -> list[str]:
        if self.name is not None:
            return [self.name]
        if self.fields is not None:
            return [field for field in self.fields if field != SKIP]
        assert self.regex is not None
        return list(re.compile(self.regex).groupindex)  # the cache of re keeps this cheap


class ScpiInstrumentConfig(InstrumentConfig):
    write_termination: str = "\n"
    read_termination: str = "\n"
    identity: str | None = Field(default=None, description="a text *IDN? must contain (case-insensitive)")
    init: list[str] = Field(default_factory=list, description="commands sent at every (re)connect")
    drain_errors: bool = False
    max_reply_bytes: Size = Field(
        default=DEFAULT_MAX_REPLY_BYTES,
        ge=16,
        le=MAX_REPLY_BYTES_LIMIT,
        description="longest reply line accepted; a longer one is a protocol error and the link reconnects",
    )
    points: list[ScpiPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_points(self) -> ScpiInstrumentConfig:
        if not self.read_termination:
            raise ValueError("read_termination cannot be empty: replies are read line by line")
        seen: set[str] = set()
        for point in self.points:
            for name in point.field_names:
                if name in seen:
                    raise ValueError(f"two points give the field {name!r}")
                seen.add(name)
        if self.drain_errors and ERROR_COUNT_FIELD in seen:
            raise ValueError(f"with drain_errors the field {ERROR_COUNT_FIELD!r} counts instrument errors")
        return self

    def field_tags(self) -> dict[str, dict[str, str]]:
        return {name: point.tags for point in self.points if point.tags for name in point.field_names}


class ScpiSerialConfig(ScpiInstrumentConfig):
    port: DevicePath = Field(min_length=1)
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ScpiTcpConfig(ScpiInstrumentConfig):
    host: HostName
    port: int = Field(default=5025, ge=1, le=65535)


VISA_RESOURCE_PATTERN = r"^[A-Za-z]+[0-9]*::[\x21-\x7e]+$"
"""``TCPIP0::10.0.4.30::inst0::INSTR``, ``USB0::0x05E6::0x2450::04123456::INSTR``, ``GPIB0::24::INSTR``..."""
_GPIB = re.compile(r"GPIB([0-9]*)::", re.IGNORECASE | re.ASCII)


class VisaConfig(ScpiInstrumentConfig):
    """SCPI points (as ``scpi-tcp``) through pyvisa, addressed by a VISA resource string.

    Sample (rig file)::

        - name: smu2
          driver: visa
          resource: USB0::0x05E6::0x2450::04123456::INSTR   # or TCPIP0::10.0.4.30::inst0::INSTR, GPIB0::24::INSTR
          visa_library: "@py"      # the default (pyvisa-py); "@ivi" or a path for NI-VISA / Keysight IO Libraries
          identity: "MODEL 2450"
          points:
            - {query: ":READ?", fields: [v, i]}

    Instruments on one GPIB board (``GPIB0::...``) share the bus: one transaction at a time, like RS-485.
    """

    resource: str = Field(min_length=3, max_length=256, pattern=VISA_RESOURCE_PATTERN)
    visa_library: str = Field(
        default="@py",
        min_length=1,
        max_length=1024,
        pattern=r"^[^\x00-\x1f]+$",
        description="pyvisa's library: @py (pyvisa-py), @ivi (NI-VISA, Keysight IO), a path, or def.yaml@sim",
    )

    @property
    def gpib_board(self) -> int | None:
        """The GPIB board (interface) number of a GPIB resource, None for any other kind."""
        match = _GPIB.match(self.resource)
        if match is None:
            return None
        return int(match[1] or 0)
